/*
 * defs.h: small definitions every libOS file may use: branch hints, barriers
 * between the driver and the device, logging. Nothing here allocates or keeps
 * state.
 */
#ifndef LIBOS_BASE_DEFS_H
#define LIBOS_BASE_DEFS_H

#include <stdio.h>

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define CACHE_LINE 64
#define __cache_aligned __attribute__((aligned(CACHE_LINE)))
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/*
 * The device is QEMU on another host thread of an x86 machine (TSO): stores are
 * seen in order and loads are not reordered with older loads, so ordering stores
 * against stores (or loads against loads) needs only the compiler's cooperation.
 * A store followed by a load of another location (publish avail->idx, then read
 * the device's "notify me" field) can be reordered by the CPU and needs a fence.
 */
#define barrier() __asm__ volatile("" ::: "memory")
#define dma_wmb() barrier()
#define dma_rmb() barrier()
#define dma_mb() __asm__ volatile("mfence" ::: "memory")

#define log_err(fmt, ...) fprintf(stderr, "libos: " fmt "\n", ##__VA_ARGS__)
#ifdef LIBOS_DEBUG
#define log_dbg(fmt, ...) fprintf(stderr, "libos: " fmt "\n", ##__VA_ARGS__)
#else
#define log_dbg(fmt, ...) do { } while (0)
#endif

#endif
