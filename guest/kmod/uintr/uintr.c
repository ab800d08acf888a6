// SPDX-License-Identifier: GPL-2.0
/*
 * uintr: user interrupts (Intel UINTR) for an unmodified Debian 6.1 kernel.
 *
 * The kernel knows nothing about UINTR, so this module supplies the
 * operating-system side described in the architecture documentation:
 *
 *  - CR4.UINTR on every online CPU (cpuhp state), cleared again at unload.
 *  - A receiving thread owns a UPID (posted-interrupt descriptor).  Its
 *    notification vector (UINV) borrows POSTED_INTR_VECTOR (0xF2): when the
 *    CPU recognises it as UINV it does notification processing itself; a
 *    stray 0xF2 that arrives while no receiver is loaded goes through the IDT
 *    to the stock handler, which only acks it.
 *  - A sending thread owns a UITT whose entries point at receivers' UPIDs.
 *  - The per-thread MSRs, UIRR and UIF are switched in preempt notifiers,
 *    since the kernel's XSAVES path knows nothing of state component 14.
 *  - A receiver blocked in UINTR_WAIT re-targets its UPID at the posted
 *    interrupt wake-up vector (0xF1), whose kernel handler calls the hook
 *    installed with kvm_set_posted_intr_wakeup_handler().
 *
 * Lifetimes: a UPID lives in a refcounted struct uintr_ctx.  The owning
 * thread, every receiver fd and every UITT entry that points at it hold a
 * reference, so a SENDUIPI that names a receiver which has gone away only
 * posts into memory that is still allocated (and that no CPU will notify,
 * because SN stays set once the owner is gone).  The per-thread struct
 * uintr_task is found through the thread's preempt notifier list; the module
 * learns of thread exit from the final context switch of a TASK_DEAD task
 * and frees the struct from a work item.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/errno.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/anon_inodes.h>
#include <linux/slab.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/preempt.h>
#include <linux/cpuhotplug.h>
#include <linux/percpu.h>
#include <linux/llist.h>
#include <linux/irq_work.h>
#include <linux/workqueue.h>
#include <linux/jiffies.h>
#include <linux/uaccess.h>
#include <asm/cpufeature.h>
#include <asm/processor.h>
#include <asm/msr.h>
#include <asm/apic.h>
#include <asm/irq.h>
#include <asm/irq_vectors.h>
#include <asm/tlbflush.h>

#include "uintr_uapi.h"

/* Architectural constants the 6.1 headers do not have. */
#define UINTR_CPUID_EDX_BIT	5		/* CPUID.(7,0):EDX[5] */
#define X86_CR4_UINTR		BIT(25)

#define MSR_IA32_UINTR_RR	0x985
#define MSR_IA32_UINTR_HANDLER	0x986
#define MSR_IA32_UINTR_STACKADJUST 0x987
#define MSR_IA32_UINTR_MISC	0x988		/* 31:0 UITTSZ, 39:32 UINV */
#define MSR_IA32_UINTR_PD	0x989
#define MSR_IA32_UINTR_TT	0x98a		/* bit 0: SENDUIPI enabled */

#define UINTR_MISC_UINV_SHIFT	32
#define UINTR_TT_VALID		BIT_ULL(0)

/* UPID control word: bit numbers for the atomic bitops, then fields. */
#define UPID_ON			0
#define UPID_SN			1
#define UPID_NV_SHIFT		16
#define UPID_NDST_SHIFT		32

/* UITT entry word 0: V in bit 0, UV in bits 13:8. */
#define UITTE_VALID		BIT_ULL(0)
#define UITTE_UV_SHIFT		8

/* Borrowed vectors (see the file comment). */
#define UINTR_NOTIFY_VECTOR	POSTED_INTR_VECTOR
#define UINTR_WAKE_VECTOR	POSTED_INTR_WAKEUP_VECTOR

struct uintr_upid {
	unsigned long ctl;	/* ON, SN, NV, NDST */
	u64 pir;		/* posted requests, one bit per user vector */
};

struct uintr_uitte {
	u64 ctl;		/* V, UV */
	u64 upid;		/* linear address of the target UPID */
};

/* A receiving thread's UPID and what is allocated on it. */
struct uintr_ctx {
	struct uintr_upid upid;		/* first: the cache aligns it to 64 bytes */
	refcount_t ref;
	unsigned long vectors;		/* user vectors handed out as receiver fds */
	bool dead;			/* owner exited or unregistered its handler */
};

/* Private data of a receiver fd. */
struct uintr_receiver {
	struct uintr_ctx *ctx;
	unsigned int vector;
};

/* Per-thread state; only the thread itself changes it while it is alive. */
struct uintr_task {
	struct preempt_notifier pn;
	struct task_struct *task;
	u64 exec_id;		/* task->self_exec_id when the state was made */

	/* receiver role: NULL unless a handler is registered */
	struct uintr_ctx *ctx;
	u64 handler;
	u64 stack_adjust;
	u64 saved_uirr;		/* UIRR while scheduled out */
	bool saved_uif;

	/* sender role: NULL unless a sender is registered */
	struct uintr_uitte *uitt;	/* UINTR_UITT_ENTRIES, 16-byte aligned */
	struct uintr_ctx **uitt_ctx;	/* reference held by each valid entry */

	/* UINTR_WAIT: set while the thread is inside the ioctl */
	bool waiting;
	int wait_cpu;			/* CPU whose wait list holds us, or -1 */
	struct list_head wait_node;

	struct llist_node reap_node;
};

/* Threads blocked in UINTR_WAIT whose UPID notifies this CPU with 0xF1. */
struct uintr_wait_list {
	raw_spinlock_t lock;
	struct list_head head;
};

static DEFINE_PER_CPU(struct uintr_wait_list, uintr_waiters);
/* CR4.UINTR is set on this CPU: only then may UIF be read or written. */
static DEFINE_PER_CPU(bool, uintr_cr4_on);

static struct kmem_cache *uintr_ctx_cache;
static enum cpuhp_state uintr_hp_state;
static struct preempt_ops uintr_pn_ops;
static const struct file_operations uintr_receiver_fops;

/*
 * Dead threads are reaped outside the scheduler: the final context switch
 * runs with the runqueue lock held, where neither kfree of the notifier we
 * are iterating over nor queue_work (which may wake a worker on this
 * runqueue) is allowed.  An irq_work hops out of that context.
 */
static LLIST_HEAD(uintr_reap_list);
static void uintr_reap_fn(struct work_struct *work);
static DECLARE_WORK(uintr_reap_work, uintr_reap_fn);

static void uintr_reap_kick(struct irq_work *w)
{
	schedule_work(&uintr_reap_work);
}

static struct irq_work uintr_reap_irq_work;

/* ---------------------------------------------------------------------- */
/* Instructions and small helpers                                         */

static inline bool uintr_testui(void)
{
	bool uif;

	/* TESTUI: CF = UIF */
	asm volatile(".byte 0xf3, 0x0f, 0x01, 0xed" : "=@ccc" (uif));
	return uif;
}

static inline void uintr_stui(void)
{
	asm volatile(".byte 0xf3, 0x0f, 0x01, 0xef" ::: "memory");
}

static inline void uintr_clui(void)
{
	asm volatile(".byte 0xf3, 0x0f, 0x01, 0xee" ::: "memory");
}

static u32 uintr_ndst(int cpu)
{
	u32 id = per_cpu(x86_cpu_to_apicid, cpu);

	/* xAPIC: the 8-bit APIC ID sits in NDST bits 15:8 */
	return x2apic_mode ? id : (id & 0xff) << 8;
}

/* Retarget a UPID; ON is left as it is, PIR is not touched. */
static void upid_set(struct uintr_upid *upid, u8 nv, u32 ndst, bool sn)
{
	unsigned long old = READ_ONCE(upid->ctl), new;

	do {
		new = (old & BIT(UPID_ON)) |
		      ((unsigned long)nv << UPID_NV_SHIFT) |
		      ((unsigned long)ndst << UPID_NDST_SHIFT) |
		      (sn ? BIT(UPID_SN) : 0);
	} while (!try_cmpxchg(&upid->ctl, &old, new));
}

/*
 * Take everything posted while no CPU did notification processing for this
 * UPID.  SN must already be clear and NDST current: a sender that posts
 * after the xchg then sees ON = 0 and notifies the right CPU.
 */
static u64 upid_drain(struct uintr_upid *upid)
{
	clear_bit(UPID_ON, &upid->ctl);
	return xchg(&upid->pir, 0);
}

static u64 uintr_misc(struct uintr_task *ut)
{
	u64 misc = 0;

	if (ut->ctx)
		misc |= (u64)UINTR_NOTIFY_VECTOR << UINTR_MISC_UINV_SHIFT;
	if (ut->uitt)
		misc |= UINTR_UITT_ENTRIES - 1;		/* UITTSZ: highest index */
	return misc;
}

static struct uintr_ctx *uintr_ctx_get(struct uintr_ctx *ctx)
{
	refcount_inc(&ctx->ref);
	return ctx;
}

static void uintr_ctx_put(struct uintr_ctx *ctx)
{
	if (ctx && refcount_dec_and_test(&ctx->ref))
		kmem_cache_free(uintr_ctx_cache, ctx);
}

/* Owner is gone: no CPU will ever be notified for this UPID again. */
static void uintr_ctx_kill(struct uintr_ctx *ctx)
{
	set_bit(UPID_SN, &ctx->upid.ctl);
	WRITE_ONCE(ctx->dead, true);
}

/* ---------------------------------------------------------------------- */
/* Context switch                                                          */

static bool uintr_task_stale(struct uintr_task *ut)
{
	return ut->exec_id != READ_ONCE(ut->task->self_exec_id);
}

/*
 * Make @ut's state live on @cpu.  Interrupts are off so that a notification
 * cannot be processed against half-written MSRs.
 */
static void uintr_load(struct uintr_task *ut, int cpu)
{
	unsigned long flags;

	local_irq_save(flags);

	if (ut->wait_cpu >= 0) {
		struct uintr_wait_list *wl = per_cpu_ptr(&uintr_waiters, ut->wait_cpu);

		raw_spin_lock(&wl->lock);
		list_del_init(&ut->wait_node);
		raw_spin_unlock(&wl->lock);
		ut->wait_cpu = -1;
	}

	/*
	 * The thread has exec'd: its handler and UITT belong to the old
	 * program.  Leave the CPU as sched-out left it (SN set, no MSRs); the
	 * next ioctl or the thread's exit frees the state.
	 */
	if (unlikely(uintr_task_stale(ut)))
		goto out;

	if (ut->ctx) {
		struct uintr_upid *upid = &ut->ctx->upid;
		u64 uirr;

		wrmsrl(MSR_IA32_UINTR_HANDLER, ut->handler);
		wrmsrl(MSR_IA32_UINTR_STACKADJUST, ut->stack_adjust);
		wrmsrl(MSR_IA32_UINTR_PD, (u64)upid);
		upid_set(upid, UINTR_NOTIFY_VECTOR, uintr_ndst(cpu), false);
		/* posts that found SN set (or notified a CPU we left) */
		uirr = ut->saved_uirr | upid_drain(upid);
		wrmsrl(MSR_IA32_UINTR_RR, uirr);
		if (this_cpu_read(uintr_cr4_on)) {
			if (ut->saved_uif)
				uintr_stui();
			else
				uintr_clui();
		}
	}
	if (ut->uitt)
		wrmsrl(MSR_IA32_UINTR_TT, (u64)ut->uitt | UINTR_TT_VALID);
	wrmsrl(MSR_IA32_UINTR_MISC, uintr_misc(ut));
out:
	local_irq_restore(flags);
}

static void uintr_sched_in(struct preempt_notifier *pn, int cpu)
{
	uintr_load(container_of(pn, struct uintr_task, pn), cpu);
}

/*
 * Called with interrupts off and the runqueue locked.  Save the receiver's
 * UIRR/UIF and leave the CPU with no UINV, no UITT and an empty UIRR, so the
 * next thread can neither receive our interrupts nor send through our UITT.
 */
static void uintr_sched_out(struct preempt_notifier *pn, struct task_struct *next)
{
	struct uintr_task *ut = container_of(pn, struct uintr_task, pn);
	bool dead = READ_ONCE(current->__state) == TASK_DEAD;
	int cpu = smp_processor_id();

	/* Stop notification processing here before reading UIRR. */
	wrmsrl(MSR_IA32_UINTR_MISC, 0);
	if (ut->uitt)
		wrmsrl(MSR_IA32_UINTR_TT, 0);

	if (ut->ctx) {
		struct uintr_upid *upid = &ut->ctx->upid;

		rdmsrl(MSR_IA32_UINTR_RR, ut->saved_uirr);
		wrmsrl(MSR_IA32_UINTR_RR, 0);
		if (this_cpu_read(uintr_cr4_on)) {
			ut->saved_uif = uintr_testui();
			uintr_clui();
		}

		if (dead) {
			uintr_ctx_kill(ut->ctx);
		} else if (ut->waiting) {
			struct uintr_wait_list *wl = this_cpu_ptr(&uintr_waiters);

			/*
			 * Blocking in UINTR_WAIT: let senders notify this CPU
			 * with the wake-up vector.  If something was already
			 * posted or received, a self-IPI makes the wake-up
			 * handler run once the switch is over.
			 */
			raw_spin_lock(&wl->lock);
			list_add_tail(&ut->wait_node, &wl->head);
			ut->wait_cpu = cpu;
			raw_spin_unlock(&wl->lock);
			upid_set(upid, UINTR_WAKE_VECTOR, uintr_ndst(cpu), false);
			clear_bit(UPID_ON, &upid->ctl);
			if (ut->saved_uirr || READ_ONCE(upid->pir))
				apic->send_IPI(cpu, UINTR_WAKE_VECTOR);
		} else {
			/* Posts accumulate in PIR until we run again. */
			set_bit(UPID_SN, &upid->ctl);
		}
	}

	if (dead) {
		llist_add(&ut->reap_node, &uintr_reap_list);
		irq_work_queue(&uintr_reap_irq_work);
	}
}

static struct preempt_ops uintr_pn_ops = {
	.sched_in	= uintr_sched_in,
	.sched_out	= uintr_sched_out,
};

/* Hooked into the POSTED_INTR_WAKEUP_VECTOR handler; hard-irq context. */
static void uintr_wakeup_handler(void)
{
	struct uintr_wait_list *wl = this_cpu_ptr(&uintr_waiters);
	struct uintr_task *ut;

	raw_spin_lock(&wl->lock);
	list_for_each_entry(ut, &wl->head, wait_node) {
		if (ut->saved_uirr || READ_ONCE(ut->ctx->upid.pir))
			wake_up_process(ut->task);
	}
	raw_spin_unlock(&wl->lock);
}

/* ---------------------------------------------------------------------- */
/* Per-thread state                                                        */

static void uintr_task_destroy(struct uintr_task *ut);

/*
 * Our notifier is only ever added or removed by the thread itself.  State
 * left over from before an exec is dropped here, so the new program starts
 * from nothing.
 */
static struct uintr_task *uintr_current(void)
{
	struct preempt_notifier *pn;

	hlist_for_each_entry(pn, &current->preempt_notifiers, link) {
		if (pn->ops == &uintr_pn_ops) {
			struct uintr_task *ut = container_of(pn, struct uintr_task, pn);

			if (!uintr_task_stale(ut))
				return ut;
			uintr_task_destroy(ut);
			return NULL;
		}
	}
	return NULL;
}

static struct uintr_task *uintr_task_alloc(void)
{
	struct uintr_task *ut = kzalloc(sizeof(*ut), GFP_KERNEL);

	if (!ut)
		return NULL;
	preempt_notifier_init(&ut->pn, &uintr_pn_ops);
	ut->task = current;
	ut->exec_id = current->self_exec_id;
	ut->wait_cpu = -1;
	INIT_LIST_HEAD(&ut->wait_node);
	return ut;
}

/*
 * Attach a fresh @ut to the current thread.  The thread's notifiers now
 * point into this module, so the module stays until the struct is freed.
 */
static void uintr_task_attach(struct uintr_task *ut)
{
	__module_get(THIS_MODULE);
	preempt_notifier_register(&ut->pn);
}

static void uintr_free_uitt(struct uintr_task *ut)
{
	int i;

	if (!ut->uitt)
		return;
	for (i = 0; i < UINTR_UITT_ENTRIES; i++)
		uintr_ctx_put(ut->uitt_ctx[i]);
	kfree(ut->uitt_ctx);
	kfree(ut->uitt);
	ut->uitt = NULL;
	ut->uitt_ctx = NULL;
}

/* Drop the current thread's struct once it has neither role left. */
static void uintr_task_maybe_detach(struct uintr_task *ut)
{
	if (ut->ctx || ut->uitt)
		return;
	preempt_disable();
	preempt_notifier_unregister(&ut->pn);
	preempt_enable();
	kfree(ut);
	module_put(THIS_MODULE);	/* the open /dev/uintr fd still pins us */
}

/* Tear down all of the current thread's state (both roles). */
static void uintr_task_destroy(struct uintr_task *ut)
{
	preempt_disable();
	if (ut->ctx)
		uintr_ctx_kill(ut->ctx);
	wrmsrl(MSR_IA32_UINTR_MISC, 0);
	wrmsrl(MSR_IA32_UINTR_TT, 0);
	wrmsrl(MSR_IA32_UINTR_RR, 0);
	wrmsrl(MSR_IA32_UINTR_HANDLER, 0);
	wrmsrl(MSR_IA32_UINTR_PD, 0);
	if (this_cpu_read(uintr_cr4_on))
		uintr_clui();
	preempt_notifier_unregister(&ut->pn);
	preempt_enable();

	uintr_ctx_put(ut->ctx);
	uintr_free_uitt(ut);
	kfree(ut);
	module_put(THIS_MODULE);
}

static void uintr_reap_fn(struct work_struct *work)
{
	struct llist_node *list = llist_del_all(&uintr_reap_list);
	struct uintr_task *ut, *tmp;

	llist_for_each_entry_safe(ut, tmp, list, reap_node) {
		uintr_ctx_put(ut->ctx);
		uintr_free_uitt(ut);
		kfree(ut);
		/* module_exit flushes this work, so returning is safe */
		module_put(THIS_MODULE);
	}
}

/* ---------------------------------------------------------------------- */
/* ioctls                                                                  */

static long uintr_register_handler(void __user *uarg)
{
	struct uintr_handler_args args;
	struct uintr_task *ut;
	struct uintr_ctx *ctx;
	bool fresh = false;
	int ret;

	if (copy_from_user(&args, uarg, sizeof(args)))
		return -EFAULT;
	if (args.reserved || (args.flags & ~UINTR_HANDLER_STACK_LOAD))
		return -EINVAL;
	/* both end up in MSRs that fault on non-canonical values */
	if (args.handler >= TASK_SIZE_MAX)
		return -EINVAL;
	if ((args.flags & UINTR_HANDLER_STACK_LOAD) && args.stack >= TASK_SIZE_MAX)
		return -EINVAL;
	if (!(args.flags & UINTR_HANDLER_STACK_LOAD) && args.stack >= SZ_1M)
		return -EINVAL;

	ut = uintr_current();
	if (ut && ut->ctx)
		return -EBUSY;

	ctx = kmem_cache_zalloc(uintr_ctx_cache, GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	refcount_set(&ctx->ref, 1);	/* the owner's reference */

	if (!ut) {
		ut = uintr_task_alloc();
		if (!ut) {
			ret = -ENOMEM;
			goto err_ctx;
		}
		fresh = true;
	}

	preempt_disable();
	ut->handler = args.handler;
	/* bit 0 of the MSR selects "load" */
	ut->stack_adjust = (args.flags & UINTR_HANDLER_STACK_LOAD) ?
			   args.stack | 1 : args.stack & ~1ULL;
	ut->saved_uirr = 0;
	ut->saved_uif = false;		/* user space enables delivery with STUI */
	ut->ctx = ctx;
	if (fresh)
		uintr_task_attach(ut);
	uintr_load(ut, smp_processor_id());
	preempt_enable();
	return 0;

err_ctx:
	kmem_cache_free(uintr_ctx_cache, ctx);
	return ret;
}

static long uintr_unregister_handler(void)
{
	struct uintr_task *ut = uintr_current();
	struct uintr_ctx *ctx;

	if (!ut || !ut->ctx)
		return -ENOENT;

	preempt_disable();
	ctx = ut->ctx;
	uintr_ctx_kill(ctx);
	ut->ctx = NULL;
	wrmsrl(MSR_IA32_UINTR_MISC, uintr_misc(ut));
	wrmsrl(MSR_IA32_UINTR_RR, 0);
	wrmsrl(MSR_IA32_UINTR_HANDLER, 0);
	wrmsrl(MSR_IA32_UINTR_PD, 0);
	if (this_cpu_read(uintr_cr4_on))
		uintr_clui();
	preempt_enable();

	uintr_ctx_put(ctx);
	uintr_task_maybe_detach(ut);
	return 0;
}

static int uintr_receiver_release(struct inode *inode, struct file *file)
{
	struct uintr_receiver *rcv = file->private_data;

	clear_bit(rcv->vector, &rcv->ctx->vectors);
	uintr_ctx_put(rcv->ctx);
	kfree(rcv);
	return 0;
}

static const struct file_operations uintr_receiver_fops = {
	.owner		= THIS_MODULE,
	.release	= uintr_receiver_release,
	.llseek		= noop_llseek,
};

static long uintr_create_receiver(void __user *uarg)
{
	struct uintr_receiver_args args;
	struct uintr_receiver *rcv;
	struct uintr_task *ut;
	int fd;

	if (copy_from_user(&args, uarg, sizeof(args)))
		return -EFAULT;
	if (args.flags || args.vector > UINTR_MAX_VECTOR)
		return -EINVAL;
	ut = uintr_current();
	if (!ut || !ut->ctx)
		return -ENOENT;
	if (test_and_set_bit(args.vector, &ut->ctx->vectors))
		return -EBUSY;

	rcv = kzalloc(sizeof(*rcv), GFP_KERNEL);
	if (!rcv) {
		fd = -ENOMEM;
		goto err_vector;
	}
	rcv->ctx = uintr_ctx_get(ut->ctx);
	rcv->vector = args.vector;

	fd = anon_inode_getfd("[uintr-receiver]", &uintr_receiver_fops, rcv,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0)
		goto err_rcv;
	return fd;

err_rcv:
	uintr_ctx_put(rcv->ctx);
	kfree(rcv);
err_vector:
	clear_bit(args.vector, &ut->ctx->vectors);
	return fd;
}

static long uintr_register_sender(void __user *uarg)
{
	struct uintr_sender_args args;
	struct uintr_receiver *rcv;
	struct uintr_ctx **uitt_ctx;
	struct uintr_uitte *uitt;
	struct uintr_task *ut;
	struct fd f;
	bool fresh = false;
	u64 want;
	long ret;
	int i, idx = -1;

	if (copy_from_user(&args, uarg, sizeof(args)))
		return -EFAULT;
	if (args.flags)
		return -EINVAL;

	f = fdget(args.receiver_fd);
	if (!f.file)
		return -EBADF;
	if (f.file->f_op != &uintr_receiver_fops) {
		ret = -EINVAL;
		goto out_fd;
	}
	rcv = f.file->private_data;
	if (READ_ONCE(rcv->ctx->dead)) {
		ret = -ESRCH;
		goto out_fd;
	}

	ut = uintr_current();
	if (!ut) {
		ut = uintr_task_alloc();
		if (!ut) {
			ret = -ENOMEM;
			goto out_fd;
		}
		fresh = true;
	}
	want = UITTE_VALID | ((u64)rcv->vector << UITTE_UV_SHIFT);
	if (ut->uitt) {
		for (i = 0; i < UINTR_UITT_ENTRIES; i++) {
			if (!ut->uitt_ctx[i]) {
				if (idx < 0)
					idx = i;
			} else if (ut->uitt_ctx[i] == rcv->ctx &&
				   ut->uitt[i].ctl == want) {
				ret = -EBUSY;
				goto out_task;
			}
		}
		if (idx < 0) {
			ret = -ENOSPC;
			goto out_task;
		}
		uitt = ut->uitt;
		uitt_ctx = ut->uitt_ctx;
	} else {
		/* 1 KiB: kmalloc aligns power-of-two sizes naturally */
		uitt = kzalloc(UINTR_UITT_ENTRIES * sizeof(*uitt), GFP_KERNEL);
		uitt_ctx = kcalloc(UINTR_UITT_ENTRIES, sizeof(*uitt_ctx), GFP_KERNEL);
		if (!uitt || !uitt_ctx) {
			kfree(uitt);
			kfree(uitt_ctx);
			ret = -ENOMEM;
			goto out_task;
		}
		idx = 0;
	}

	/*
	 * Only this thread can execute SENDUIPI with this table, and it is
	 * here, so plain stores are enough; V goes last all the same.
	 */
	uitt_ctx[idx] = uintr_ctx_get(rcv->ctx);
	WRITE_ONCE(uitt[idx].upid, (u64)&rcv->ctx->upid);
	smp_wmb();
	WRITE_ONCE(uitt[idx].ctl, want);

	/* a new table becomes visible to the notifiers and the CPU at once */
	preempt_disable();
	if (!ut->uitt) {
		ut->uitt = uitt;
		ut->uitt_ctx = uitt_ctx;
		wrmsrl(MSR_IA32_UINTR_TT, (u64)uitt | UINTR_TT_VALID);
		wrmsrl(MSR_IA32_UINTR_MISC, uintr_misc(ut));
	}
	if (fresh)
		uintr_task_attach(ut);
	preempt_enable();
	fdput(f);
	return idx;

out_task:
	if (fresh)
		kfree(ut);
out_fd:
	fdput(f);
	return ret;
}

static long uintr_unregister_sender(unsigned long idx)
{
	struct uintr_task *ut = uintr_current();
	struct uintr_ctx *ctx;
	int i;

	if (!ut || !ut->uitt)
		return -ENOENT;
	if (idx >= UINTR_UITT_ENTRIES || !ut->uitt_ctx[idx])
		return -EINVAL;

	WRITE_ONCE(ut->uitt[idx].ctl, 0);
	ut->uitt[idx].upid = 0;
	ctx = ut->uitt_ctx[idx];
	ut->uitt_ctx[idx] = NULL;
	uintr_ctx_put(ctx);

	for (i = 0; i < UINTR_UITT_ENTRIES; i++)
		if (ut->uitt_ctx[i])
			return 0;

	/* last entry gone: drop the table and with it SENDUIPI */
	preempt_disable();
	wrmsrl(MSR_IA32_UINTR_TT, 0);
	kfree(ut->uitt_ctx);
	kfree(ut->uitt);
	ut->uitt = NULL;
	ut->uitt_ctx = NULL;
	wrmsrl(MSR_IA32_UINTR_MISC, uintr_misc(ut));
	preempt_enable();
	uintr_task_maybe_detach(ut);
	return 0;
}

/* Anything for the current receiver in UIRR or in its PIR? */
static bool uintr_pending(struct uintr_task *ut)
{
	u64 uirr;

	preempt_disable();
	rdmsrl(MSR_IA32_UINTR_RR, uirr);
	preempt_enable();
	return uirr || READ_ONCE(ut->ctx->upid.pir);
}

static long uintr_wait(void __user *uarg)
{
	struct uintr_wait_args args;
	struct uintr_task *ut;
	long timeout;
	long ret = 0;

	if (copy_from_user(&args, uarg, sizeof(args)))
		return -EFAULT;
	if (args.flags || args.reserved)
		return -EINVAL;
	ut = uintr_current();
	if (!ut || !ut->ctx)
		return -ENOENT;

	timeout = args.timeout_ns ?
		  max_t(long, 1, min_t(u64, nsecs_to_jiffies(args.timeout_ns),
				       MAX_SCHEDULE_TIMEOUT - 1)) :
		  MAX_SCHEDULE_TIMEOUT;

	/*
	 * The sched-out notifier sees ->waiting and points the UPID at the
	 * wake-up vector instead of suppressing notifications.
	 */
	ut->waiting = true;
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (uintr_pending(ut))
			break;
		if (signal_pending(current)) {
			/*
			 * Without a timeout, restart transparently unless a
			 * handler runs (e.g. an ignored SIGCHLD is not a
			 * reason to return); a timed wait returns -EINTR
			 * rather than restart with its full timeout.
			 */
			ret = args.timeout_ns ? -EINTR : -ERESTARTNOHAND;
			break;
		}
		if (!timeout) {
			ret = -ETIMEDOUT;
			break;
		}
		timeout = schedule_timeout(timeout);
	}
	__set_current_state(TASK_RUNNING);
	ut->waiting = false;
	return ret;
}

static long uintr_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case UINTR_REGISTER_HANDLER:
		return uintr_register_handler(uarg);
	case UINTR_UNREGISTER_HANDLER:
		return uintr_unregister_handler();
	case UINTR_CREATE_RECEIVER:
		return uintr_create_receiver(uarg);
	case UINTR_REGISTER_SENDER:
		return uintr_register_sender(uarg);
	case UINTR_UNREGISTER_SENDER:
		return uintr_unregister_sender(arg);
	case UINTR_WAIT:
		return uintr_wait(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations uintr_dev_fops = {
	.owner		= THIS_MODULE,
	.unlocked_ioctl	= uintr_ioctl,
	.compat_ioctl	= NULL,		/* the instructions are 64-bit only */
	.llseek		= noop_llseek,
};

static struct miscdevice uintr_misc_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "uintr",
	.fops	= &uintr_dev_fops,
	.mode	= 0666,
};

/* ---------------------------------------------------------------------- */
/* CPUs and module life                                                    */

static int uintr_cpu_online(unsigned int cpu)
{
	cr4_set_bits(X86_CR4_UINTR);
	this_cpu_write(uintr_cr4_on, true);
	return 0;
}

static int uintr_cpu_offline(unsigned int cpu)
{
	struct uintr_wait_list *wl = this_cpu_ptr(&uintr_waiters);
	struct uintr_task *ut;
	unsigned long flags;

	/* Waiters notified through this CPU would never hear: wake them. */
	raw_spin_lock_irqsave(&wl->lock, flags);
	list_for_each_entry(ut, &wl->head, wait_node)
		wake_up_process(ut->task);
	raw_spin_unlock_irqrestore(&wl->lock, flags);

	this_cpu_write(uintr_cr4_on, false);
	cr4_clear_bits(X86_CR4_UINTR);
	return 0;
}

static int __init uintr_init(void)
{
	unsigned int eax, ebx, ecx, edx;
	int cpu, ret;

	cpuid_count(7, 0, &eax, &ebx, &ecx, &edx);
	if (!(edx & BIT(UINTR_CPUID_EDX_BIT))) {
		pr_err("CPU does not support user interrupts (CPUID.(EAX=7,ECX=0):EDX[5] is clear); not loading\n");
		return -ENODEV;
	}

	for_each_possible_cpu(cpu) {
		struct uintr_wait_list *wl = per_cpu_ptr(&uintr_waiters, cpu);

		raw_spin_lock_init(&wl->lock);
		INIT_LIST_HEAD(&wl->head);
	}
	init_irq_work(&uintr_reap_irq_work, uintr_reap_kick);

	uintr_ctx_cache = kmem_cache_create("uintr_upid", sizeof(struct uintr_ctx),
					    64, 0, NULL);
	if (!uintr_ctx_cache)
		return -ENOMEM;

	/* the notifier call sites are behind a static key */
	preempt_notifier_inc();
	kvm_set_posted_intr_wakeup_handler(uintr_wakeup_handler);

	ret = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "x86/uintr:online",
				uintr_cpu_online, uintr_cpu_offline);
	if (ret < 0)
		goto err_hook;
	uintr_hp_state = ret;

	ret = misc_register(&uintr_misc_dev);
	if (ret)
		goto err_hp;

	pr_info("user interrupts enabled (UINV 0x%x, wake-up vector 0x%x, %s)\n",
		UINTR_NOTIFY_VECTOR, UINTR_WAKE_VECTOR,
		x2apic_mode ? "x2APIC" : "xAPIC");
	return 0;

err_hp:
	cpuhp_remove_state(uintr_hp_state);
err_hook:
	kvm_set_posted_intr_wakeup_handler(NULL);
	preempt_notifier_dec();
	kmem_cache_destroy(uintr_ctx_cache);
	return ret;
}

static void __exit uintr_exit(void)
{
	/*
	 * The refcount is zero: no fds are open and every thread that had
	 * state has been reaped, or is about to be by a queued work item.
	 */
	misc_deregister(&uintr_misc_dev);
	irq_work_sync(&uintr_reap_irq_work);
	flush_work(&uintr_reap_work);
	cpuhp_remove_state(uintr_hp_state);
	kvm_set_posted_intr_wakeup_handler(NULL);	/* waits for running handlers */
	preempt_notifier_dec();
	kmem_cache_destroy(uintr_ctx_cache);
}

module_init(uintr_init);
module_exit(uintr_exit);

MODULE_DESCRIPTION("User interrupts (UINTR) for Debian's 6.1 kernel");
MODULE_LICENSE("GPL");
