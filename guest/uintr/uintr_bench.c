// SPDX-License-Identifier: MIT
/*
 * uintr_bench: notification cost between two threads of one process on two
 * CPUs.  For each mechanism, thread A (CPU a) notifies thread B (CPU b), B
 * notifies A back, N times:
 *
 *   senduipi       SENDUIPI; both threads spin in user space with UIF = 1
 *   senduipi_wait  SENDUIPI; both threads block in uintr_wait()
 *   signal         tgkill() + signal handler; both threads spin
 *   eventfd        write() to an eventfd; both threads block in read()
 *
 * One-way latency: TSC at A just before notifying to TSC in B's handler (or
 * after B's read() returns).  Round trips/s: N / elapsed time at A; since a
 * TCG host that preempts a vCPU thread inflates that mean, the median round
 * trip (and its inverse) is printed too.
 * Prints one JSON object.
 *
 *   uintr_bench [--iters N] [--cpus A,B]
 */
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

#include "uintr.h"

enum { SUI, SUI_WAIT, SIG, EFD, NMODES };
static const char *mode_name[NMODES] = { "senduipi", "senduipi_wait", "signal", "eventfd" };

static uint64_t iters = 5000;
static int cpu_a, cpu_b;
static double tsc_per_ns;

/* shared between A and B for the run in progress */
static volatile uint64_t t_send;	/* TSC when A notified */
static uint64_t *oneway;		/* cycles, one per iteration */
static uint64_t *roundtrip;		/* cycles, one per iteration */
static volatile uint64_t b_got, a_got;
static volatile int b_ready, stop;
static pid_t pid, tid_a, tid_b;
static int idx_to_a, idx_to_b;		/* UITT indices (B's and A's own tables) */
static int efd_a, efd_b;

struct result {
	int ok;
	char err[96];
	double p50_ns, p99_ns, rtps, rt_p50_ns;
};

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static void calibrate(void)
{
	uint64_t n0 = now_ns(), c0 = __rdtsc(), n1, c1;

	do {
		n1 = now_ns();
	} while (n1 - n0 < 200000000ull);
	c1 = __rdtsc();
	tsc_per_ns = (double)(c1 - c0) / (double)(n1 - n0);
}

/* B's side of every mechanism: record the one-way time, notify A back. */
static inline void b_received(void)
{
	uint64_t i = b_got;

	if (i < iters)
		oneway[i] = __rdtsc() - t_send;
	b_got = i + 1;
}

/* ---- SENDUIPI: one handler, the vector says which side we are ---- */

#define VEC_TO_B 1
#define VEC_TO_A 2

static void on_uintr(struct uintr_frame *frame, uint64_t vector)
{
	(void)frame;
	if (vector == VEC_TO_B) {
		b_received();
		uintr_senduipi(idx_to_a);
	} else {
		a_got = a_got + 1;
	}
}

static int fd_a, fd_b;

static void *b_uintr(void *p)
{
	int blocking = *(int *)p;

	pin_self(cpu_b);
	tid_b = gettid_();
	if (uintr_register_handler(on_uintr, 0) < 0)
		goto fail;
	fd_b = uintr_create_receiver(VEC_TO_B);
	if (fd_b < 0)
		goto fail;
	idx_to_a = uintr_register_sender(fd_a);
	if (idx_to_a < 0)
		goto fail;
	uintr_stui();
	b_ready = 1;
	while (!stop) {
		if (blocking)
			uintr_wait(100000000ull);
		else
			cpu_relax();
	}
	uintr_unregister_sender(idx_to_a);
	close(fd_b);
	uintr_unregister_handler();
	return NULL;
fail:
	b_ready = -1;
	return NULL;
}

/* ---- signals ---- */

static void on_sigusr1(int sig)
{
	(void)sig;
	b_received();
	syscall(SYS_tgkill, pid, tid_a, SIGUSR2);
}

static void on_sigusr2(int sig)
{
	(void)sig;
	a_got = a_got + 1;
}

static void *b_signal(void *p)
{
	(void)p;
	pin_self(cpu_b);
	tid_b = gettid_();
	b_ready = 1;
	while (!stop)
		cpu_relax();
	return NULL;
}

/* ---- eventfd ---- */

static void *b_eventfd(void *p)
{
	uint64_t v;

	(void)p;
	pin_self(cpu_b);
	b_ready = 1;
	for (;;) {
		if (read(efd_b, &v, sizeof(v)) != sizeof(v))
			break;
		if (stop)
			break;
		b_received();
		v = 1;
		if (write(efd_a, &v, sizeof(v)) != sizeof(v))
			break;
	}
	return NULL;
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;

	return a < b ? -1 : a > b;
}

static void run(int mode, struct result *r)
{
	uint64_t warm = iters / 10 + 10, total = iters + warm, t0 = 0, t1, v;
	int blocking = mode == SUI_WAIT;
	pthread_t t;
	int ret;

	memset(r, 0, sizeof(*r));
	a_got = b_got = 0;
	b_ready = stop = 0;
	tid_a = gettid_();

	switch (mode) {
	case SUI:
	case SUI_WAIT:
		ret = uintr_available();
		if (ret == 0)
			ret = uintr_register_handler(on_uintr, 0);
		if (ret < 0) {
			snprintf(r->err, sizeof(r->err), "%s", strerror(-ret));
			return;
		}
		fd_a = uintr_create_receiver(VEC_TO_A);
		uintr_stui();
		t = 0;
		pthread_create(&t, NULL, b_uintr, &blocking);
		while (!b_ready)
			cpu_relax();
		idx_to_b = b_ready > 0 ? uintr_register_sender(fd_b) : -1;
		if (idx_to_b < 0) {
			snprintf(r->err, sizeof(r->err), "setup failed");
			stop = 1;
			pthread_join(t, NULL);
			close(fd_a);
			uintr_unregister_handler();
			return;
		}
		break;
	case SIG:
		pthread_create(&t, NULL, b_signal, NULL);
		break;
	default:
		efd_a = eventfd(0, 0);
		efd_b = eventfd(0, 0);
		pthread_create(&t, NULL, b_eventfd, NULL);
		break;
	}
	while (!b_ready)
		cpu_relax();

	for (uint64_t i = 0; i < total; i++) {
		if (i == warm) {
			/* measured part starts: forget the warm-up samples */
			b_got = 0;
			a_got = 0;
			t0 = now_ns();
		}
		uint64_t want = (i < warm ? i : i - warm) + 1;

		if (i == warm)
			want = 1;
		uint64_t c0 = __rdtsc();

		t_send = c0;
		switch (mode) {
		case SUI:
			uintr_senduipi(idx_to_b);
			while (a_got < want)
				cpu_relax();
			break;
		case SUI_WAIT:
			uintr_senduipi(idx_to_b);
			while (a_got < want)
				uintr_wait(100000000ull);
			break;
		case SIG:
			syscall(SYS_tgkill, pid, tid_b, SIGUSR1);
			while (a_got < want)
				cpu_relax();
			break;
		default:
			v = 1;
			if (write(efd_b, &v, sizeof(v)) != sizeof(v) ||
			    read(efd_a, &v, sizeof(v)) != sizeof(v)) {
				snprintf(r->err, sizeof(r->err), "eventfd: %s", strerror(errno));
				goto out;
			}
			break;
		}
		if (i >= warm)
			roundtrip[i - warm] = __rdtsc() - c0;
	}
	t1 = now_ns();
	r->rtps = iters / ((t1 - t0) / 1e9);
	qsort(oneway, iters, sizeof(*oneway), cmp_u64);
	r->p50_ns = oneway[iters / 2] / tsc_per_ns;
	r->p99_ns = oneway[(iters * 99) / 100] / tsc_per_ns;
	qsort(roundtrip, iters, sizeof(*roundtrip), cmp_u64);
	r->rt_p50_ns = roundtrip[iters / 2] / tsc_per_ns;
	r->ok = 1;
out:
	stop = 1;
	if (mode == EFD) {
		v = 1;
		if (write(efd_b, &v, sizeof(v)) != sizeof(v))
			perror("eventfd");
	}
	pthread_join(t, NULL);
	if (mode == SUI || mode == SUI_WAIT) {
		uintr_unregister_sender(idx_to_b);
		close(fd_a);
		uintr_unregister_handler();
	} else if (mode == EFD) {
		close(efd_a);
		close(efd_b);
	}
}

static void print_result(const char *name, const struct result *r, int last)
{
	if (r->ok)
		printf("  \"%s\": {\"oneway_p50_ns\": %.0f, \"oneway_p99_ns\": %.0f, "
		       "\"roundtrips_per_s\": %.0f, \"roundtrip_p50_ns\": %.0f, "
		       "\"roundtrips_per_s_at_p50\": %.0f}%s\n",
		       name, r->p50_ns, r->p99_ns, r->rtps, r->rt_p50_ns,
		       r->rt_p50_ns > 0 ? 1e9 / r->rt_p50_ns : 0, last ? "" : ",");
	else
		printf("  \"%s\": {\"error\": \"%s\"}%s\n", name, r->err, last ? "" : ",");
}

/* The ratios reported: num's metric over den's. Medians are steadier than means when
 * the host preempts vCPU threads, hence the round-trip p50 rows. */
enum metric { ONEWAY_P50, ROUNDTRIPS_PER_S, ROUNDTRIP_P50 };
static const struct {
	const char *name;
	int num, den;
	enum metric metric;
} ratios[] = {
	{ "signal_over_senduipi_oneway_p50", SIG, SUI, ONEWAY_P50 },
	{ "eventfd_over_senduipi_oneway_p50", EFD, SUI, ONEWAY_P50 },
	{ "eventfd_over_senduipi_wait_oneway_p50", EFD, SUI_WAIT, ONEWAY_P50 },
	{ "senduipi_over_signal_roundtrips", SUI, SIG, ROUNDTRIPS_PER_S },
	{ "senduipi_over_eventfd_roundtrips", SUI, EFD, ROUNDTRIPS_PER_S },
	{ "senduipi_wait_over_eventfd_roundtrips", SUI_WAIT, EFD, ROUNDTRIPS_PER_S },
	{ "signal_over_senduipi_roundtrip_p50", SIG, SUI, ROUNDTRIP_P50 },
	{ "eventfd_over_senduipi_roundtrip_p50", EFD, SUI, ROUNDTRIP_P50 },
	{ "eventfd_over_senduipi_wait_roundtrip_p50", EFD, SUI_WAIT, ROUNDTRIP_P50 },
};

static double metric_of(const struct result *r, enum metric m)
{
	return m == ONEWAY_P50 ? r->p50_ns : m == ROUNDTRIPS_PER_S ? r->rtps : r->rt_p50_ns;
}

static void print_ratios(const struct result *res)
{
	size_t n = sizeof(ratios) / sizeof(ratios[0]);

	printf("  \"ratios\": {\n");
	for (size_t i = 0; i < n; i++) {
		const struct result *a = &res[ratios[i].num], *b = &res[ratios[i].den];
		double den = metric_of(b, ratios[i].metric);
		const char *sep = i + 1 < n ? "," : "";

		if (a->ok && b->ok && den > 0)
			printf("    \"%s\": %.2f%s\n", ratios[i].name,
			       metric_of(a, ratios[i].metric) / den, sep);
		else
			printf("    \"%s\": null%s\n", ratios[i].name, sep);
	}
	printf("  }\n");
}

int main(int argc, char **argv)
{
	struct result res[NMODES];
	struct sigaction sa;

	allowed_cpus();
	cpu_a = nth_cpu(0);
	cpu_b = nth_cpu(1);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
			iters = strtoull(argv[++i], NULL, 0);
		} else if (!strcmp(argv[i], "--cpus") && i + 1 < argc) {
			if (sscanf(argv[++i], "%d,%d", &cpu_a, &cpu_b) != 2)
				goto usage;
		} else {
usage:
			fprintf(stderr, "usage: uintr_bench [--iters N] [--cpus A,B]\n");
			return 2;
		}
	}
	if (!iters)
		iters = 1;
	oneway = calloc(iters, sizeof(*oneway));
	roundtrip = calloc(iters, sizeof(*roundtrip));
	if (!oneway || !roundtrip)
		return 1;
	pid = getpid();
	pin_self(cpu_a);
	calibrate();

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigusr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_sigusr2;
	sigaction(SIGUSR2, &sa, NULL);

	for (int m = 0; m < NMODES; m++)
		run(m, &res[m]);

	printf("{\n  \"iterations\": %llu,\n  \"cpus\": [%d, %d],\n  \"vcpus\": %d,\n  \"tsc_per_ns\": %.3f,\n",
	       (unsigned long long)iters, cpu_a, cpu_b, ncpus(), tsc_per_ns);
	for (int m = 0; m < NMODES; m++)
		print_result(mode_name[m], &res[m], 0);
	print_ratios(res);
	printf("}\n");
	return res[SUI].ok ? 0 : 1;
}
