/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ioctl interface of /dev/uintr (guest/kmod/uintr).  Shared by the module and
 * by libuintr (guest/lib/uintr); user space should use libuintr's uintr.h.
 *
 * All requests act on the calling thread: user interrupts are per-thread
 * architectural state (MSRs, UIF), so the receiver of a vector is the thread
 * that created it, and a UITT index is only valid in the thread that
 * registered it.
 */
#ifndef UINTR_UAPI_H
#define UINTR_UAPI_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <stdint.h>
#include <sys/ioctl.h>
typedef uint64_t __u64;
typedef uint32_t __u32;
typedef int32_t __s32;
#endif

#define UINTR_DEVICE		"/dev/uintr"
#define UINTR_MAX_VECTOR	63	/* user vectors are 0..63 (UIRR bits) */
#define UINTR_UITT_ENTRIES	64	/* UITT size per sending thread */

/* uintr_handler_args.flags */
#define UINTR_HANDLER_STACK_LOAD	0x1	/* load RSP with .stack instead of RSP -= .stack */

struct uintr_handler_args {
	__u64 handler;		/* user address the CPU jumps to (must end in UIRET) */
	__u64 stack;		/* bytes to subtract from RSP, or the new RSP (STACK_LOAD) */
	__u32 flags;
	__u32 reserved;		/* must be 0 */
};

struct uintr_receiver_args {
	__u32 vector;		/* 0..UINTR_MAX_VECTOR */
	__u32 flags;		/* must be 0 */
};

struct uintr_sender_args {
	__s32 receiver_fd;	/* fd returned by UINTR_CREATE_RECEIVER (any process) */
	__u32 flags;		/* must be 0 */
};

struct uintr_wait_args {
	__u64 timeout_ns;	/* 0: no timeout */
	__u32 flags;		/* must be 0 */
	__u32 reserved;		/* must be 0 */
};

#define UINTR_IOC_MAGIC		0xEC	/* arbitrary; only meaningful on /dev/uintr fds */

/* Returns 0. */
#define UINTR_REGISTER_HANDLER	_IOW(UINTR_IOC_MAGIC, 0x00, struct uintr_handler_args)
/* Returns 0. */
#define UINTR_UNREGISTER_HANDLER _IO(UINTR_IOC_MAGIC, 0x01)
/* Returns a new file descriptor (O_CLOEXEC); closing it frees the vector. */
#define UINTR_CREATE_RECEIVER	_IOW(UINTR_IOC_MAGIC, 0x02, struct uintr_receiver_args)
/* Returns the UITT index to pass to SENDUIPI. */
#define UINTR_REGISTER_SENDER	_IOW(UINTR_IOC_MAGIC, 0x03, struct uintr_sender_args)
/* Argument: the UITT index (by value).  Returns 0. */
#define UINTR_UNREGISTER_SENDER	_IO(UINTR_IOC_MAGIC, 0x04)
/* Blocks until a user interrupt is pending for the caller.  Returns 0. */
#define UINTR_WAIT		_IOW(UINTR_IOC_MAGIC, 0x05, struct uintr_wait_args)

#endif /* UINTR_UAPI_H */
