/* SPDX-License-Identifier: MIT */
/*
 * libuintr: user interrupts (Intel UINTR) from user space, on top of the
 * guest module's /dev/uintr (guest/kmod/uintr).  See README.md next to this
 * file for one manual entry per call.
 *
 * Every function returns 0 (or a non-negative result) on success and
 * -errno on failure; errno is set as well.  All state is per thread: the
 * handler, the receivers' vectors and the UITT indices belong to the thread
 * that created them.
 */
#ifndef UINTR_H
#define UINTR_H

#include <stdint.h>

#include "uintr_uapi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the CPU pushed below the interrupted stack (the vector is separate). */
struct uintr_frame {
	uint64_t rip;		/* where the thread was interrupted */
	uint64_t rflags;	/* its RFLAGS; UIRET takes only some bits back */
	uint64_t rsp;		/* its RSP */
};

/*
 * A C handler, called by the library's entry stub with all registers and
 * the extended (XSAVE) state saved; it may change *frame (UIRET reloads it).
 * It runs with UIF = 0, on the interrupted thread's stack below the red zone.
 */
typedef void (*uintr_handler_fn)(struct uintr_frame *frame, uint64_t vector);

/* Flags of uintr_register_handler_raw(). */
#define UINTR_STACK_LOAD	UINTR_HANDLER_STACK_LOAD

int uintr_available(void);
int uintr_register_handler(uintr_handler_fn fn, unsigned int flags);
int uintr_register_handler_raw(void *entry, uint64_t stack, unsigned int flags);
int uintr_unregister_handler(void);
int uintr_create_receiver(unsigned int vector);
int uintr_register_sender(int receiver_fd);
int uintr_unregister_sender(int index);
int uintr_wait(uint64_t timeout_ns);
int uintr_device_fd(void);

/* The instructions (byte encodings: no -muintr needed). */

static inline void uintr_senduipi(uint64_t index)
{
	/* SENDUIPI rax: F3 0F C7 /6 with ModRM 0xF0 */
	__asm__ volatile(".byte 0xf3, 0x0f, 0xc7, 0xf0" : : "a" (index) : "memory");
}

static inline void uintr_stui(void)
{
	__asm__ volatile(".byte 0xf3, 0x0f, 0x01, 0xef" : : : "memory");
}

static inline void uintr_clui(void)
{
	__asm__ volatile(".byte 0xf3, 0x0f, 0x01, 0xee" : : : "memory");
}

/* Returns UIF (1: user interrupts may be delivered). */
static inline int uintr_testui(void)
{
	unsigned char cf;

	__asm__ volatile(".byte 0xf3, 0x0f, 0x01, 0xed\n\tsetc %0" : "=r" (cf) : : "cc", "memory");
	return cf;
}

#ifdef __cplusplus
}
#endif

#endif /* UINTR_H */
