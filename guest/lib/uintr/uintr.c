// SPDX-License-Identifier: MIT
/* libuintr: wrappers around /dev/uintr.  Documentation: README.md. */
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "uintr.h"

/* Used by uintr_entry.S. */
__thread uintr_handler_fn uintr_tls_fn __attribute__((tls_model("initial-exec")));
uint64_t uintr_xsave_size = 512;
unsigned char uintr_use_xsave;

extern void uintr_entry(void);

static int uintr_fd = -1;

static int fail(int err)
{
	errno = err;
	return -err;
}

static int cpu_has_uintr(void)
{
	unsigned int a, b, c, d;

	if (__get_cpuid_max(0, NULL) < 7)
		return 0;
	__cpuid_count(7, 0, a, b, c, d);
	return (d >> 5) & 1;
}

/* The process-wide /dev/uintr descriptor, opened on first use. */
int uintr_device_fd(void)
{
	int fd = __atomic_load_n(&uintr_fd, __ATOMIC_ACQUIRE);
	int expected = -1;

	if (fd >= 0)
		return fd;
	if (!cpu_has_uintr())
		return fail(EOPNOTSUPP);
	fd = open(UINTR_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail(errno == ENOENT ? ENODEV : errno);
	if (!__atomic_compare_exchange_n(&uintr_fd, &expected, fd, 0,
					 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		close(fd);		/* another thread won */
		fd = expected;
	}
	return fd;
}

int uintr_available(void)
{
	int fd = uintr_device_fd();

	return fd < 0 ? fd : 0;
}

static int do_ioctl(unsigned long req, unsigned long arg)
{
	int fd = uintr_device_fd();
	int ret;

	if (fd < 0)
		return fd;
	ret = ioctl(fd, req, arg);
	if (ret < 0)
		return fail(errno);
	return ret;
}

int uintr_register_handler_raw(void *entry, uint64_t stack, unsigned int flags)
{
	struct uintr_handler_args args = {
		.handler = (uint64_t)(uintptr_t)entry,
		.stack = stack,
		.flags = flags,
	};

	return do_ioctl(UINTR_REGISTER_HANDLER, (unsigned long)&args);
}

/* Size of the XSAVE area for the components the OS enabled in XCR0. */
static void probe_xsave(void)
{
	unsigned int a, b, c, d;

	__cpuid(1, a, b, c, d);
	if (!(c & (1u << 27)))		/* OSXSAVE */
		return;
	__cpuid_count(0xd, 0, a, b, c, d);
	if (b < 576)
		return;
	uintr_xsave_size = b;
	uintr_use_xsave = 1;
}

int uintr_register_handler(uintr_handler_fn fn, unsigned int flags)
{
	int ret;

	if (!fn || flags)
		return fail(EINVAL);
	probe_xsave();
	uintr_tls_fn = fn;
	/* skip the interrupted code's 128-byte red zone */
	ret = uintr_register_handler_raw((void *)uintr_entry, 128, 0);
	if (ret < 0)
		uintr_tls_fn = NULL;
	return ret;
}

int uintr_unregister_handler(void)
{
	int ret = do_ioctl(UINTR_UNREGISTER_HANDLER, 0);

	if (ret == 0)
		uintr_tls_fn = NULL;
	return ret;
}

int uintr_create_receiver(unsigned int vector)
{
	struct uintr_receiver_args args = { .vector = vector };

	return do_ioctl(UINTR_CREATE_RECEIVER, (unsigned long)&args);
}

int uintr_register_sender(int receiver_fd)
{
	struct uintr_sender_args args = { .receiver_fd = receiver_fd };

	return do_ioctl(UINTR_REGISTER_SENDER, (unsigned long)&args);
}

int uintr_unregister_sender(int index)
{
	if (index < 0)
		return fail(EINVAL);
	return do_ioctl(UINTR_UNREGISTER_SENDER, (unsigned long)index);
}

int uintr_wait(uint64_t timeout_ns)
{
	struct uintr_wait_args args = { .timeout_ns = timeout_ns };

	return do_ioctl(UINTR_WAIT, (unsigned long)&args);
}
