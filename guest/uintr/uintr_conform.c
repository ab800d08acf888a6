// SPDX-License-Identifier: MIT
/*
 * uintr_conform: conformance checks for user interrupts, derived from the
 * architecture description (docs/spec: CLUI/STUI/TESTUI, SENDUIPI, UIRET,
 * notification processing, delivery), run through libuintr.
 *
 * One JSON line per case: {"case": ..., "ok": true|false, "detail": ...}.
 * Exit status 1 if any case failed.
 *
 *   uintr_conform [--count N] [--case NAME]   a guest with UINTR and uintr.ko
 *   uintr_conform --expect-absent             a guest without the feature
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <cpuid.h>

#include "uintr.h"

#define SEC	1000000000ull
#define MS	1000000ull

/* RFLAGS bits */
#define F_CF	(1ull << 0)
#define F_FIXED	(1ull << 1)
#define F_PF	(1ull << 2)
#define F_AF	(1ull << 4)
#define F_ZF	(1ull << 6)
#define F_SF	(1ull << 7)
#define F_TF	(1ull << 8)
#define F_IF	(1ull << 9)
#define F_DF	(1ull << 10)
#define F_OF	(1ull << 11)
#define F_IOPL	(3ull << 12)
#define F_NT	(1ull << 14)
#define F_RF	(1ull << 16)
#define F_AC	(1ull << 18)
#define F_VIF	(1ull << 19)
#define F_VIP	(1ull << 20)
#define F_ID	(1ull << 21)

/* conform_asm.S */
struct expect {
	uint64_t rip, rsp, rflags;
};
uint64_t testui_flags(uint64_t rflags);
uint64_t uiret_probe(uint64_t rflags);
void frame_probe(struct expect *out);
void raw_entry(void);
volatile uint64_t raw_entry_rsp, raw_vec, raw_rip, raw_rflags, raw_rsp, raw_count;

static uint64_t opt_count = 100000;
static const char *opt_case;
static int failures;

/* ------------------------------------------------------------------ */
/* reporting */

static void report(const char *name, int ok, const char *fmt, ...)
{
	char detail[512], esc[1100];
	size_t j = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	for (size_t i = 0; detail[i] && j < sizeof(esc) - 3; i++) {
		if (detail[i] == '"' || detail[i] == '\\')
			esc[j++] = '\\';
		esc[j++] = (detail[i] == '\n') ? ' ' : detail[i];
	}
	esc[j] = 0;
	printf("{\"case\": \"%s\", \"ok\": %s, \"detail\": \"%s\"}\n",
	       name, ok ? "true" : "false", esc);
	fflush(stdout);
	if (!ok)
		failures++;
}

/* ------------------------------------------------------------------ */
/* the common C handler: per-vector counts and delivery order */

static uint64_t g_count[64];
static uint64_t g_order[64];
static uint64_t g_order_n;
static uint64_t g_frames_bad;

static void on_uintr(struct uintr_frame *frame, uint64_t vector)
{
	uint64_t n;

	/* the interrupted RSP and RIP must be user addresses */
	if (!frame->rip || (frame->rip >> 47) || (frame->rsp >> 47))
		__atomic_fetch_add(&g_frames_bad, 1, __ATOMIC_RELAXED);
	if (vector < 64)
		__atomic_fetch_add(&g_count[vector], 1, __ATOMIC_RELEASE);
	n = __atomic_fetch_add(&g_order_n, 1, __ATOMIC_RELAXED);
	if (n < 64)
		g_order[n] = vector;
}

static void reset_counts(void)
{
	for (int i = 0; i < 64; i++)
		__atomic_store_n(&g_count[i], 0, __ATOMIC_RELAXED);
	__atomic_store_n(&g_order_n, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&g_frames_bad, 0, __ATOMIC_RELAXED);
}

static uint64_t count_of(int v)
{
	return __atomic_load_n(&g_count[v], __ATOMIC_ACQUIRE);
}

/*
 * Spin in user mode (so interrupts can be delivered) until count >= target.
 * With @yield the CPU is offered to other runnable threads between checks:
 * for tests with more spinning threads than CPUs.
 */
static int wait_count_y(int v, uint64_t target, uint64_t timeout_ns, int yield)
{
	uint64_t deadline = now_ns() + timeout_ns;
	unsigned int i = 0;

	while (count_of(v) < target) {
		if ((++i & 1023) == 0 && now_ns() > deadline)
			return 0;
		if (yield)
			sched_yield();
		else
			cpu_relax();
	}
	return 1;
}

static int wait_count(int v, uint64_t target, uint64_t timeout_ns)
{
	return wait_count_y(v, target, timeout_ns, 0);
}

static void spin_ns(uint64_t ns)
{
	uint64_t end = now_ns() + ns;

	while (now_ns() < end)
		cpu_relax();
}

static pid_t gettid_(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* A receiver fd for vector v of the calling thread and a UITT index to it. */
struct link {
	int fd;
	int idx;
};

static int link_self(int v, struct link *l)
{
	l->fd = uintr_create_receiver(v);
	if (l->fd < 0)
		return l->fd;
	l->idx = uintr_register_sender(l->fd);
	if (l->idx < 0) {
		int err = l->idx;

		close(l->fd);
		return err;
	}
	return 0;
}

static void unlink_self(struct link *l)
{
	uintr_unregister_sender(l->idx);
	close(l->fd);
}

/* ------------------------------------------------------------------ */
/* trapping SIGILL / SIGSEGV around single instructions */

static __thread sigjmp_buf trap_env;
static __thread volatile int trap_armed;

static void on_trap(int sig)
{
	if (trap_armed)
		siglongjmp(trap_env, sig);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void install_traps(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_trap;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

/* Runs fn(arg); returns 0 or the signal number it raised. */
#define TRAP(expr)                                          \
	({                                                  \
		int __sig = sigsetjmp(trap_env, 1);         \
		if (__sig == 0) {                           \
			trap_armed = 1;                     \
			expr;                               \
		}                                           \
		trap_armed = 0;                             \
		__sig;                                      \
	})

/* ------------------------------------------------------------------ */
/* threads */

static pthread_t spawn(void *(*fn)(void *), void *arg)
{
	pthread_t t;

	if (pthread_create(&t, NULL, fn, arg)) {
		perror("pthread_create");
		exit(2);
	}
	return t;
}

/* ------------------------------------------------------------------ */
/* --expect-absent */

static int run_absent(void)
{
	unsigned int a, b, c, d;
	int bit = 0, ret, sig;

	install_traps();
	if (__get_cpuid_max(0, NULL) >= 7) {
		__cpuid_count(7, 0, a, b, c, d);
		bit = (d >> 5) & 1;
	}
	report("absent.cpuid", !bit || access(UINTR_DEVICE, F_OK) != 0,
	       "CPUID.(7,0):EDX[5]=%d", bit);

	errno = 0;
	ret = uintr_available();
	report("absent.library", ret == -EOPNOTSUPP || ret == -ENODEV,
	       "uintr_available()=%d errno=%d (%s)", ret, errno, strerror(errno));
	ret = uintr_register_handler((uintr_handler_fn)1, 0);
	report("absent.register", ret == -EOPNOTSUPP || ret == -ENODEV,
	       "uintr_register_handler()=%d", ret);

	sig = TRAP(uintr_clui());
	report("absent.clui_ud", sig == SIGILL, "signal %d", sig);
	sig = TRAP(uintr_stui());
	report("absent.stui_ud", sig == SIGILL, "signal %d", sig);
	sig = TRAP(uintr_testui());
	report("absent.testui_ud", sig == SIGILL, "signal %d", sig);
	sig = TRAP(uintr_senduipi(0));
	report("absent.senduipi_ud", sig == SIGILL, "signal %d", sig);
	sig = TRAP(uiret_probe(F_FIXED));
	report("absent.uiret_ud", sig == SIGILL, "signal %d", sig);
	return failures ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* cases */

static void case_uif(void)
{
	uint64_t in = F_FIXED | F_OF | F_SF | F_ZF | F_AF | F_PF;
	uint64_t status = F_OF | F_SF | F_ZF | F_AF | F_PF | F_CF;
	uint64_t f0, f1;
	int u0, u1, u2;

	uintr_clui();
	u0 = uintr_testui();
	uintr_stui();
	u1 = uintr_testui();
	uintr_clui();
	u2 = uintr_testui();
	report("uif.clui_stui_testui", u0 == 0 && u1 == 1 && u2 == 0,
	       "after CLUI %d, STUI %d, CLUI %d (want 0 1 0)", u0, u1, u2);

	/* TESTUI: CF = UIF, OF/SF/ZF/AF/PF cleared */
	uintr_clui();
	f0 = testui_flags(in);
	uintr_stui();
	f1 = testui_flags(in | F_CF);
	report("uif.testui_flags", (f0 & status) == 0 && (f1 & status) == F_CF,
	       "UIF=0: flags %#llx, UIF=1: flags %#llx (status bits must be CF=UIF only)",
	       (unsigned long long)(f0 & status), (unsigned long long)(f1 & status));

	/* UIF is per thread state: it must survive being switched out */
	uintr_clui();
	for (int i = 0; i < 20; i++)
		usleep(1000);
	u0 = uintr_testui();
	uintr_stui();
	for (int i = 0; i < 20; i++)
		usleep(1000);
	u1 = uintr_testui();
	report("uif.context_switch", u0 == 0 && u1 == 1,
	       "UIF after sleeping: %d (cleared), %d (set)", u0, u1);
}

static void case_uiret(void)
{
	/* taken from the frame: arithmetic flags, TF, DF, NT, RF, AC, ID */
	const uint64_t taken = F_CF | F_PF | F_AF | F_ZF | F_SF | F_OF | F_TF |
			       F_DF | F_NT | F_RF | F_AC | F_ID;
	/* no TF/NT/RF: they would trap or vanish before we can look */
	uint64_t in = F_FIXED | F_CF | F_PF | F_AF | F_ZF | F_SF | F_OF | F_DF |
		      F_AC | F_ID | F_IOPL | F_VIF | F_VIP;	/* IF clear */
	uint64_t want = (in & taken) | F_FIXED | F_IF;
	uint64_t got, got0;
	int uif;

	uintr_clui();
	got = uiret_probe(in);
	uif = uintr_testui();
	uintr_clui();
	got0 = uiret_probe(F_FIXED);
	report("uiret.flag_mask", got == want && got0 == (F_FIXED | F_IF) && uif == 1,
	       "frame %#llx -> RFLAGS %#llx (want %#llx); frame 0x2 -> %#llx (want 0x202); UIF after UIRET %d",
	       (unsigned long long)in, (unsigned long long)got, (unsigned long long)want,
	       (unsigned long long)got0, uif);
	uintr_stui();
}

static void case_self_ipi(void)
{
	struct link l;
	int ret;

	reset_counts();
	ret = link_self(1, &l);
	if (ret) {
		report("ipi.self", 0, "setup: %s", strerror(-ret));
		return;
	}
	uintr_stui();
	uintr_senduipi(l.idx);
	ret = wait_count(1, 1, 2 * SEC);
	spin_ns(20 * MS);
	report("ipi.self", ret && count_of(1) == 1 && !g_frames_bad,
	       "vector 1 delivered %llu time(s) (want 1), bad frames %llu",
	       (unsigned long long)count_of(1), (unsigned long long)g_frames_bad);
	unlink_self(&l);
}

static void case_coalesce_and_priority(void)
{
	struct link l9, l3, l5, l60;
	uint64_t before;
	int ret;

	reset_counts();
	ret = link_self(9, &l9);
	if (ret) {
		report("uif.coalescing", 0, "setup: %s", strerror(-ret));
		return;
	}
	uintr_clui();
	for (int i = 0; i < 5; i++)
		uintr_senduipi(l9.idx);
	usleep(20000);
	before = count_of(9);
	uintr_stui();
	wait_count(9, 1, 2 * SEC);
	spin_ns(50 * MS);
	report("uif.coalescing", before == 0 && count_of(9) == 1,
	       "5 SENDUIPI with UIF=0: %llu delivered while UIF=0, %llu after STUI (want 0, 1)",
	       (unsigned long long)before, (unsigned long long)count_of(9));
	unlink_self(&l9);

	reset_counts();
	if (link_self(3, &l3) || link_self(5, &l5) || link_self(60, &l60)) {
		report("delivery.priority", 0, "setup failed");
		return;
	}
	uintr_clui();
	uintr_senduipi(l3.idx);
	uintr_senduipi(l60.idx);
	uintr_senduipi(l5.idx);
	usleep(20000);
	uintr_stui();
	wait_count(3, 1, 2 * SEC);
	spin_ns(20 * MS);
	report("delivery.priority",
	       g_order_n == 3 && g_order[0] == 60 && g_order[1] == 5 && g_order[2] == 3,
	       "order %llu,%llu,%llu (n=%llu), want 60,5,3 (highest UIRR bit first)",
	       (unsigned long long)g_order[0], (unsigned long long)g_order[1],
	       (unsigned long long)g_order[2], (unsigned long long)g_order_n);
	unlink_self(&l3);
	unlink_self(&l5);
	unlink_self(&l60);
}

/* frame contents and stack adjustment, with a bare handler in its own thread */
struct frame_res {
	int setup_err;
	uint64_t count, vec, rip, rflags, rsp, entry_rsp;
	struct expect exp;
};

struct frame_arg {
	uint64_t stack;
	unsigned int flags;
	struct frame_res res;
};

static void *frame_thread(void *p)
{
	struct frame_arg *a = p;
	struct link l;
	int ret;

	raw_count = 0;
	ret = uintr_register_handler_raw((void *)raw_entry, a->stack, a->flags);
	if (!ret)
		ret = link_self(7, &l);
	if (ret) {
		a->res.setup_err = ret;
		return NULL;
	}
	uintr_clui();
	uintr_senduipi(l.idx);
	usleep(20000);		/* notification processed; UIRR[7] set */
	frame_probe(&a->res.exp);
	a->res.count = raw_count;
	a->res.vec = raw_vec;
	a->res.rip = raw_rip;
	a->res.rflags = raw_rflags;
	a->res.rsp = raw_rsp;
	a->res.entry_rsp = raw_entry_rsp;
	unlink_self(&l);
	uintr_unregister_handler();
	return NULL;
}

static char alt_stack[16384] __attribute__((aligned(64)));

static void case_frame(void)
{
	struct frame_arg sub = { .stack = 136, .flags = 0 };
	/* deliberately 8 bytes off 16-byte alignment: the CPU aligns down */
	uint64_t top = (uint64_t)(alt_stack + sizeof(alt_stack) - 8);
	struct frame_arg load = { .stack = top, .flags = UINTR_STACK_LOAD };
	struct frame_res *r;
	uint64_t want;

	pthread_join(spawn(frame_thread, &sub), NULL);
	r = &sub.res;
	if (r->setup_err) {
		report("frame.contents", 0, "setup: %s", strerror(-r->setup_err));
		return;
	}
	report("frame.contents",
	       r->count == 1 && r->vec == 7 && r->rip == r->exp.rip && r->rsp == r->exp.rsp &&
	       (r->rflags & ~F_RF) == (r->exp.rflags & ~F_RF),
	       "count %llu vector %llu (want 7); RIP %#llx want %#llx; RSP %#llx want %#llx; RFLAGS %#llx want %#llx",
	       (unsigned long long)r->count, (unsigned long long)r->vec,
	       (unsigned long long)r->rip, (unsigned long long)r->exp.rip,
	       (unsigned long long)r->rsp, (unsigned long long)r->exp.rsp,
	       (unsigned long long)r->rflags, (unsigned long long)r->exp.rflags);
	want = ((r->exp.rsp - 136) & ~0xfull) - 32;
	report("frame.stack_subtract", r->count == 1 && r->entry_rsp == want,
	       "STACKADJUST 136 (subtract): handler RSP %#llx, want %#llx",
	       (unsigned long long)r->entry_rsp, (unsigned long long)want);

	pthread_join(spawn(frame_thread, &load), NULL);
	r = &load.res;
	if (r->setup_err) {
		report("frame.stack_load", 0, "setup: %s", strerror(-r->setup_err));
		return;
	}
	want = (top & ~0xfull) - 32;
	report("frame.stack_load",
	       r->count == 1 && r->entry_rsp == want && r->rsp == r->exp.rsp && r->rip == r->exp.rip,
	       "STACKADJUST %#llx (load): handler RSP %#llx, want %#llx; saved RSP %#llx want %#llx",
	       (unsigned long long)top, (unsigned long long)r->entry_rsp, (unsigned long long)want,
	       (unsigned long long)r->rsp, (unsigned long long)r->exp.rsp);
}

static void *no_uitt_thread(void *p)
{
	int *sig = p;

	*sig = TRAP(uintr_senduipi(0));
	return NULL;
}

static void case_gp(void)
{
	struct link l;
	int sig1, sig2, sig3;

	if (link_self(2, &l)) {
		report("senduipi.gp_bad_index", 0, "setup failed");
		return;
	}
	sig1 = TRAP(uintr_senduipi(1ull << 40));		/* > UITTSZ */
	sig2 = TRAP(uintr_senduipi(UINTR_UITT_ENTRIES - 1));	/* in range, V = 0 */
	report("senduipi.gp_bad_index", sig1 == SIGSEGV && sig2 == SIGSEGV,
	       "index 2^40: signal %d, invalid entry %d: signal %d (want SIGSEGV=%d)",
	       sig1, UINTR_UITT_ENTRIES - 1, sig2, SIGSEGV);
	unlink_self(&l);

	pthread_join(spawn(no_uitt_thread, &sig3), NULL);
	report("senduipi.ud_without_uitt", sig3 == SIGILL,
	       "thread without a UITT: signal %d (want SIGILL=%d)", sig3, SIGILL);
}

/* ---- cross-CPU ---- */

struct sender_arg {
	int cpu;
	int fd;
	int vector;
	uint64_t n;
	uint64_t sent;
	int err;
	int lost;
	volatile int *done;
};

/* Flow-controlled: one interrupt in flight on this sender's vector. */
static void *sender_thread(void *p)
{
	struct sender_arg *a = p;
	int idx;

	pin_self(a->cpu);
	idx = uintr_register_sender(a->fd);
	if (idx < 0) {
		a->err = idx;
		goto out;
	}
	for (a->sent = 0; a->sent < a->n; ) {
		uintr_senduipi(idx);
		a->sent++;
		if (!wait_count_y(a->vector, a->sent, 5 * SEC, 1)) {
			a->lost = 1;
			break;
		}
	}
	uintr_unregister_sender(idx);
out:
	__atomic_add_fetch(a->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* The receiver waits for its senders; yielding lets senders share its CPU. */
static void spin_until(volatile int *flag, int value)
{
	while (__atomic_load_n(flag, __ATOMIC_ACQUIRE) < value)
		sched_yield();
}

static void case_cross(void)
{
	struct sender_arg a = { 0 };
	volatile int done = 0;
	pthread_t t;
	int fd;

	if (ncpus() < 2) {
		report("ipi.cross_cpu", 1, "skipped: one CPU");
		return;
	}
	reset_counts();
	pin_self(nth_cpu(0));
	fd = uintr_create_receiver(11);
	a = (struct sender_arg){ .cpu = nth_cpu(1), .fd = fd, .vector = 11, .n = 1000,
				 .done = &done };
	uintr_stui();
	t = spawn(sender_thread, &a);
	spin_until(&done, 1);
	pthread_join(t, NULL);
	report("ipi.cross_cpu", !a.err && !a.lost && count_of(11) == a.n && !g_frames_bad,
	       "receiver CPU %d, sender CPU %d: %llu/%llu delivered%s%s", nth_cpu(0), a.cpu,
	       (unsigned long long)count_of(11), (unsigned long long)a.n,
	       a.err ? ", sender setup failed" : "", a.lost ? ", stalled 5 s" : "");
	close(fd);
}

static void case_four_senders(void)
{
	struct sender_arg a[4];
	volatile int done = 0;
	pthread_t t[4];
	int fd[4], ok = 1;
	char buf[256] = "";
	uint64_t n = opt_count / 20 ? opt_count / 20 : 1;

	reset_counts();
	pin_self(nth_cpu(0));
	uintr_stui();
	for (int i = 0; i < 4; i++) {
		fd[i] = uintr_create_receiver(30 + i);
		a[i] = (struct sender_arg){ .cpu = nth_cpu(1 + i), .fd = fd[i],
					    .vector = 30 + i, .n = n, .done = &done };
		t[i] = spawn(sender_thread, &a[i]);
	}
	spin_until(&done, 4);
	for (int i = 0; i < 4; i++) {
		size_t len = strlen(buf);

		pthread_join(t[i], NULL);
		if (a[i].err || a[i].lost || count_of(30 + i) != n)
			ok = 0;
		snprintf(buf + len, sizeof(buf) - len, "%s%d@cpu%d %llu/%llu", i ? ", " : "",
			 30 + i, a[i].cpu, (unsigned long long)count_of(30 + i),
			 (unsigned long long)n);
		close(fd[i]);
	}
	report("ipi.four_senders", ok, "vector@sender-cpu delivered/sent: %s", buf);
}

/* N interrupts, 8 vectors in flight, zero loss */
struct many_arg {
	int cpu;
	int fd[8];
	uint64_t n;
	uint64_t sent[8];
	int err, lost;
	volatile int done;
};

static void *many_sender(void *p)
{
	struct many_arg *a = p;
	int idx[8];

	pin_self(a->cpu);
	for (int v = 0; v < 8; v++) {
		idx[v] = uintr_register_sender(a->fd[v]);
		if (idx[v] < 0) {
			a->err = idx[v];
			goto out;
		}
	}
	for (uint64_t k = 0; k < a->n; k++) {
		int v = k & 7;

		/* the previous interrupt on this vector must have arrived */
		if (!wait_count(40 + v, a->sent[v], 5 * SEC)) {
			a->lost = 1;
			break;
		}
		a->sent[v]++;
		uintr_senduipi(idx[v]);
	}
	for (int v = 0; v < 8; v++)
		if (!wait_count(40 + v, a->sent[v], 5 * SEC))
			a->lost = 1;
	for (int v = 0; v < 8; v++)
		uintr_unregister_sender(idx[v]);
out:
	__atomic_store_n(&a->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void case_many(void)
{
	static struct many_arg a;
	uint64_t t0, t1, got = 0, sent = 0;
	pthread_t t;

	reset_counts();
	memset(&a, 0, sizeof(a));
	pin_self(nth_cpu(0));
	for (int v = 0; v < 8; v++)
		a.fd[v] = uintr_create_receiver(40 + v);
	a.cpu = nth_cpu(1);
	a.n = opt_count;
	uintr_stui();
	t0 = now_ns();
	t = spawn(many_sender, &a);
	while (!__atomic_load_n(&a.done, __ATOMIC_ACQUIRE))
		cpu_relax();
	t1 = now_ns();
	pthread_join(t, NULL);
	for (int v = 0; v < 8; v++) {
		got += count_of(40 + v);
		sent += a.sent[v];
		close(a.fd[v]);
	}
	report("ipi.count_zero_loss", !a.err && !a.lost && got == a.n && sent == a.n,
	       "%llu/%llu delivered (sender CPU %d -> receiver CPU %d, %d vCPUs) in %.2f s, %.0f/s%s",
	       (unsigned long long)got, (unsigned long long)a.n, a.cpu, nth_cpu(0), ncpus(),
	       (t1 - t0) / 1e9, got / ((t1 - t0) / 1e9), a.lost ? ", stalled 5 s" : "");
}

/* receiver preempted and migrated: nothing lost */
struct mig {
	volatile int fd;
	volatile pid_t tid;
	volatile int round;	/* receiver: ready for round r */
	volatile int go;	/* orchestrator: round r may STUI */
	volatile int cpu;
	volatile int ok_rounds;
	volatile int failed_round;
	int rounds;
	int mode;		/* per round: round % 3 */
};

static void *mig_receiver(void *p)
{
	struct mig *m = p;

	m->tid = gettid_();
	if (uintr_register_handler(on_uintr, 0) < 0) {
		m->fd = -2;
		return NULL;
	}
	m->fd = uintr_create_receiver(13);
	for (int r = 1; r <= m->rounds; r++) {
		int mode = r % 3;

		if (mode != 2)
			uintr_clui();		/* keep it pending across the move */
		else
			uintr_stui();		/* delivered whenever it arrives */
		m->cpu = sched_getcpu();
		__atomic_store_n(&m->round, r, __ATOMIC_RELEASE);
		while (__atomic_load_n(&m->go, __ATOMIC_ACQUIRE) < r) {
			if (mode == 1)
				usleep(2000);	/* blocked: posts go to PIR with SN set */
			m->cpu = sched_getcpu();
		}
		uintr_stui();
		if (wait_count(13, r, 3 * SEC)) {
			m->ok_rounds++;
		} else {
			m->failed_round = r;
			break;
		}
	}
	__atomic_store_n(&m->round, m->rounds + 1, __ATOMIC_RELEASE);
	close(m->fd);
	uintr_unregister_handler();
	return NULL;
}

static void case_migrate(void)
{
	static struct mig m;
	pthread_t t;
	int idx, moves = 0;

	if (ncpus() < 2) {
		report("delivery.preempt_migrate", 1, "skipped: one CPU");
		return;
	}
	reset_counts();
	memset((void *)&m, 0, sizeof(m));
	m.fd = -1;
	m.rounds = 30;
	pin_self(nth_cpu(0));
	t = spawn(mig_receiver, &m);
	while (m.fd == -1)
		cpu_relax();
	if (m.fd < 0 || (idx = uintr_register_sender(m.fd)) < 0) {
		pthread_join(t, NULL);
		report("delivery.preempt_migrate", 0, "setup failed");
		return;
	}
	for (int r = 1; r <= m.rounds; r++) {
		int from, to;

		while (__atomic_load_n(&m.round, __ATOMIC_ACQUIRE) < r)
			usleep(100);
		if (m.round > m.rounds)
			break;
		from = m.cpu;
		to = nth_cpu(r) == from ? nth_cpu(r + 1) : nth_cpu(r);
		if (r & 1) {
			uintr_senduipi(idx);		/* post, then move */
			pin_tid(m.tid, to);
		} else {
			pin_tid(m.tid, to);		/* move while posting */
			uintr_senduipi(idx);
		}
		for (int i = 0; i < 2000 && m.cpu != to; i++)
			usleep(500);
		if (m.cpu == to)
			moves++;
		__atomic_store_n(&m.go, r, __ATOMIC_RELEASE);
	}
	pthread_join(t, NULL);
	uintr_unregister_sender(idx);
	report("delivery.preempt_migrate", m.ok_rounds == m.rounds && count_of(13) == (uint64_t)m.rounds,
	       "%d/%d rounds delivered after %d migrations (pending in UIRR, posted while blocked, UIF=1); delivered %llu%s",
	       m.ok_rounds, m.rounds, moves, (unsigned long long)count_of(13),
	       m.failed_round ? " - lost in a round" : "");
}

/* blocked receiver woken by uintr_wait */
struct waiter {
	volatile int fd;
	volatile int state;
	int ret_wait, ret_timeout, ret_pending;
	uint64_t blocked_ns, pending_ns;
};

static void *wait_thread(void *p)
{
	struct waiter *w = p;
	uint64_t t0;
	struct link l;

	pin_self(nth_cpu(0));
	if (uintr_register_handler(on_uintr, 0) < 0) {
		w->fd = -2;
		return NULL;
	}
	w->fd = uintr_create_receiver(20);
	uintr_stui();
	w->ret_timeout = uintr_wait(50 * MS);
	__atomic_store_n(&w->state, 1, __ATOMIC_RELEASE);
	t0 = now_ns();
	w->ret_wait = uintr_wait(10 * SEC);
	w->blocked_ns = now_ns() - t0;

	/* something already pending: no blocking at all */
	if (!link_self(21, &l)) {
		uintr_clui();
		uintr_senduipi(l.idx);
		t0 = now_ns();
		w->ret_pending = uintr_wait(10 * SEC);
		w->pending_ns = now_ns() - t0;
		uintr_stui();
		wait_count(21, 1, SEC);
		unlink_self(&l);
	} else {
		w->ret_pending = -999;
	}
	close(w->fd);
	uintr_unregister_handler();
	return NULL;
}

static void case_wait(void)
{
	static struct waiter w;
	pthread_t t;
	int idx;

	reset_counts();
	memset((void *)&w, 0, sizeof(w));
	w.fd = -1;
	pin_self(nth_cpu(1));
	t = spawn(wait_thread, &w);
	while (w.fd == -1)
		cpu_relax();
	if (w.fd < 0 || (idx = uintr_register_sender(w.fd)) < 0) {
		pthread_join(t, NULL);
		report("wait.wakeup", 0, "setup failed");
		return;
	}
	while (!__atomic_load_n(&w.state, __ATOMIC_ACQUIRE))
		usleep(1000);
	usleep(200000);		/* the receiver is asleep in uintr_wait by now */
	uintr_senduipi(idx);
	pthread_join(t, NULL);
	uintr_unregister_sender(idx);
	pin_self(nth_cpu(0));
	report("wait.timeout", w.ret_timeout == -ETIMEDOUT,
	       "uintr_wait(50 ms) with nothing pending = %d (want -ETIMEDOUT)", w.ret_timeout);
	report("wait.wakeup", w.ret_wait == 0 && count_of(20) == 1 && w.blocked_ns > 100 * MS &&
	       w.blocked_ns < 9 * SEC,
	       "uintr_wait = %d after %.1f ms blocked (sender on another CPU after 200 ms), handler ran %llu time(s)",
	       w.ret_wait, w.blocked_ns / 1e6, (unsigned long long)count_of(20));
	report("wait.already_pending", w.ret_pending == 0 && w.pending_ns < 1 * SEC && count_of(21) == 1,
	       "uintr_wait with UIRR set (UIF=0) = %d after %.2f ms; delivered after STUI %llu",
	       w.ret_pending, w.pending_ns / 1e6, (unsigned long long)count_of(21));
}

/* ---- API errors and teardown ---- */

struct gone {
	volatile int fd;
	volatile int exit_now;
	int ret_nohandler[3];
};

static void *gone_thread(void *p)
{
	struct gone *g = p;

	if (uintr_register_handler(on_uintr, 0) < 0) {
		g->fd = -2;
		return NULL;
	}
	g->fd = uintr_create_receiver(5);
	while (!g->exit_now)
		usleep(1000);
	return NULL;		/* exits with the handler still registered */
}

static void *nohandler_thread(void *p)
{
	struct gone *g = p;

	g->ret_nohandler[0] = uintr_create_receiver(1);
	g->ret_nohandler[1] = uintr_wait(1000);
	g->ret_nohandler[2] = uintr_unregister_handler();
	return NULL;
}

static void case_errors(void)
{
	static struct gone g;
	int r_vec, r_busy, r_rx, r_null, r_badf, r_unreg, r_dup, fd, idx, idx2, nul;
	int r_gone, r_after, sig;
	pthread_t t;

	r_vec = uintr_create_receiver(64);
	r_busy = uintr_register_handler(on_uintr, 0);
	fd = uintr_create_receiver(50);
	r_rx = uintr_create_receiver(50);
	nul = open("/dev/null", O_RDONLY);
	r_null = uintr_register_sender(nul);
	close(nul);
	r_badf = uintr_register_sender(-1);
	idx = uintr_register_sender(fd);
	r_dup = uintr_register_sender(fd);
	r_unreg = uintr_unregister_sender(UINTR_UITT_ENTRIES - 1);
	if (idx >= 0)
		uintr_unregister_sender(idx);
	close(fd);
	pthread_join(spawn(nohandler_thread, &g), NULL);
	report("api.errors",
	       r_vec == -EINVAL && r_busy == -EBUSY && fd >= 0 && r_rx == -EBUSY &&
	       r_null == -EINVAL && r_badf == -EBADF && idx >= 0 && r_dup == -EBUSY &&
	       r_unreg == -EINVAL && g.ret_nohandler[0] == -ENOENT &&
	       g.ret_nohandler[1] == -ENOENT && g.ret_nohandler[2] == -ENOENT,
	       "vector 64: %d; handler twice: %d; vector twice: %d; sender on /dev/null: %d; on fd -1: %d; "
	       "same sender twice: %d; unregister unused index: %d; without handler: receiver %d wait %d unregister %d",
	       r_vec, r_busy, r_rx, r_null, r_badf, r_dup, r_unreg, g.ret_nohandler[0],
	       g.ret_nohandler[1], g.ret_nohandler[2]);

	/* receiver thread exits while a sender still points at its UPID */
	memset((void *)&g, 0, sizeof(g));
	g.fd = -1;
	t = spawn(gone_thread, &g);
	while (g.fd == -1)
		cpu_relax();
	idx = g.fd >= 0 ? uintr_register_sender(g.fd) : -1;
	g.exit_now = 1;
	pthread_join(t, NULL);
	usleep(50000);
	sig = TRAP(for (int i = 0; i < 1000; i++) uintr_senduipi(idx));
	idx2 = g.fd >= 0 ? uintr_register_sender(g.fd) : -1;
	r_gone = idx2;
	close(g.fd);
	r_after = idx >= 0 ? uintr_unregister_sender(idx) : -1;
	report("api.receiver_gone", idx >= 0 && sig == 0 && r_gone == -ESRCH && r_after == 0,
	       "1000 SENDUIPI to an exited receiver: signal %d; new sender on its fd: %d (want -ESRCH); "
	       "unregistering the stale entry: %d", sig, r_gone, r_after);
}

static long read_refcnt(void)
{
	char buf[32] = "";
	int fd = open("/sys/module/uintr/refcnt", O_RDONLY);

	if (fd < 0)
		return -1;
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = 0;
	close(fd);
	return strtol(buf, NULL, 10);
}

static void *child_spin(void *p)
{
	(void)p;
	if (uintr_register_handler(on_uintr, 0) == 0) {
		uintr_stui();
		for (;;)
			cpu_relax();
	}
	return NULL;
}

/* not inlined: case_sigkill() uses sigsetjmp, which upsets -Wclobbered */
static __attribute__((noinline)) int send_fd(int sock, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte = 'x';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static __attribute__((noinline)) int recv_fd(int sock)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd;

	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/*
 * A receiver process killed while blocked: its UPID must be marked gone
 * (new senders get ESRCH) and an old sender's SENDUIPI must stay harmless.
 * The module refcount is compared too, but only reported: other users of
 * the module (a parallel run) move it.
 */
static void case_sigkill(void)
{
	long before, after = -1;
	int status = 0, sv[2], rfd, sig = -1;
	volatile int idx = -1, r_gone = 0;	/* live across the TRAP longjmp */
	pid_t pid;

	before = read_refcnt();
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
		report("exit.sigkill_cleanup", 0, "socketpair: %s", strerror(errno));
		return;
	}
	pid = fork();
	if (pid == 0) {
		struct link l;
		pthread_t t;

		close(sv[0]);
		if (uintr_register_handler(on_uintr, 0) || link_self(3, &l))
			_exit(3);
		t = spawn(child_spin, NULL);
		(void)t;
		if (send_fd(sv[1], l.fd))
			_exit(4);
		uintr_stui();
		uintr_wait(0);		/* blocks until killed */
		_exit(5);
	}
	close(sv[1]);
	rfd = recv_fd(sv[0]);
	close(sv[0]);
	if (rfd >= 0)
		idx = uintr_register_sender(rfd);
	usleep(100000);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	if (idx >= 0) {
		/* thread exit is noticed at its last context switch: give it a moment */
		for (int i = 0; i < 100; i++) {
			r_gone = uintr_register_sender(rfd);
			if (r_gone == -ESRCH)
				break;
			if (r_gone >= 0)
				uintr_unregister_sender(r_gone);
			usleep(10000);
		}
		sig = TRAP(for (int i = 0; i < 1000; i++) uintr_senduipi(idx));
		uintr_unregister_sender(idx);
	}
	if (rfd >= 0)
		close(rfd);
	for (int i = 0; i < 100; i++) {
		after = read_refcnt();
		if (after == before)
			break;
		usleep(10000);
	}
	report("exit.sigkill_cleanup",
	       rfd >= 0 && idx >= 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL &&
	       r_gone == -ESRCH && sig == 0,
	       "child with a handler, a receiver, a sender and a second thread killed in uintr_wait: "
	       "new sender on its receiver fd %d (want -ESRCH), 1000 SENDUIPI through an old entry: "
	       "signal %d; module refcnt %ld before, %ld after (informative)",
	       r_gone, sig, before, after);
}

/*
 * exec: the new program must start without the old one's handler, UITT or
 * pending interrupts (the old handler address means nothing in it).
 */
static int exec_child(void)
{
	uint64_t total = 0;
	int ret = uintr_register_handler(on_uintr, 0);

	if (ret)
		return 10;
	uintr_stui();
	spin_ns(100 * MS);
	for (int i = 0; i < 64; i++)
		total += count_of(i);
	uintr_unregister_handler();
	return total ? 11 : 0;
}

static void case_exec(void)
{
	int status = -1;
	pid_t pid;

	pid = fork();
	if (pid == 0) {
		struct link l;

		if (uintr_register_handler(on_uintr, 0) || link_self(4, &l))
			_exit(3);
		uintr_clui();
		uintr_senduipi(l.idx);		/* left pending in UIRR */
		usleep(10000);
		execl("/proc/self/exe", "uintr_conform", "--exec-child", (char *)NULL);
		_exit(4);
	}
	waitpid(pid, &status, 0);
	report("exit.exec_fresh_state", WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "after exec with a handler, a sender and vector 4 pending: %s %d "
	       "(0: registering again works and nothing old is delivered; 10: register failed; 11: stray interrupt)",
	       WIFEXITED(status) ? "exit" : "signal",
	       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* ------------------------------------------------------------------ */

struct tcase {
	const char *name;
	void (*fn)(void);
};

static const struct tcase cases[] = {
	{ "uif", case_uif },
	{ "uiret", case_uiret },
	{ "self", case_self_ipi },
	{ "coalesce", case_coalesce_and_priority },
	{ "frame", case_frame },
	{ "gp", case_gp },
	{ "cross", case_cross },
	{ "migrate", case_migrate },
	{ "wait", case_wait },
	{ "four", case_four_senders },
	{ "count", case_many },
	{ "errors", case_errors },
	{ "sigkill", case_sigkill },
	{ "exec", case_exec },
};

static void usage(void)
{
	fprintf(stderr, "usage: uintr_conform [--expect-absent] [--count N] [--case NAME]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	allowed_cpus();
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--expect-absent"))
			return run_absent();
		else if (!strcmp(argv[i], "--exec-child"))
			return exec_child();
		else if (!strcmp(argv[i], "--count") && i + 1 < argc)
			opt_count = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--case") && i + 1 < argc)
			opt_case = argv[++i];
		else
			usage();
	}
	install_traps();

	ret = uintr_available();
	report("available", ret == 0, "uintr_available() = %d (%s)", ret,
	       ret ? strerror(-ret) : "CPUID bit set, /dev/uintr open");
	if (ret)
		return 1;
	ret = uintr_register_handler(on_uintr, 0);
	if (ret) {
		report("register_handler", 0, "%s", strerror(-ret));
		return 1;
	}
	uintr_stui();

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t t0;

		if (opt_case && strcmp(opt_case, cases[i].name))
			continue;
		t0 = now_ns();
		cases[i].fn();
		/* timings go to stderr: stdout is JSON lines only */
		fprintf(stderr, "# %s: %.2f s\n", cases[i].name, (now_ns() - t0) / 1e9);
	}

	uintr_unregister_handler();
	return failures ? 1 : 0;
}
