/* SPDX-License-Identifier: MIT */
/* Small helpers shared by uintr_conform and uintr_bench. */
#ifndef UINTR_TEST_COMMON_H
#define UINTR_TEST_COMMON_H

#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
	__builtin_ia32_pause();
}

/*
 * The CPUs the process could use when it started; pinning a thread later
 * must not shrink the set the tests pick CPUs from.
 */
static cpu_set_t initial_cpus;
static int initial_cpus_set;

static inline const cpu_set_t *allowed_cpus(void)
{
	if (!initial_cpus_set) {
		if (sched_getaffinity(0, sizeof(initial_cpus), &initial_cpus)) {
			CPU_ZERO(&initial_cpus);
			CPU_SET(0, &initial_cpus);
		}
		initial_cpus_set = 1;
	}
	return &initial_cpus;
}

static inline int ncpus(void)
{
	return CPU_COUNT(allowed_cpus());
}

/* The n-th CPU this process may run on (wrapping). */
static inline int nth_cpu(int n)
{
	const cpu_set_t *set = allowed_cpus();
	int cpu, seen = 0;

	n %= CPU_COUNT(set);
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, set))
			continue;
		if (seen++ == n)
			return cpu;
	}
	return 0;
}

static inline int pin_self(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

static inline int pin_tid(pid_t tid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(tid, sizeof(set), &set);
}

#endif
