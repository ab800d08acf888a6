/*
 * rxbuf.c: the two receive-buffer schemes of rxbuf.h.
 *
 * Ownership: the rxbuf owns its DMA region and, in the pool scheme, its refill
 * thread; rxbuf_destroy stops the thread before unmapping anything. Buffers are
 * identified by their address inside the region, so the device hands back
 * nothing but pointers the driver gave it.
 *
 * Concurrency in the pool scheme: queue q's posted/released arrays are written
 * only by queue q's thread and read by the refill thread (and by a starving
 * queue). Atomic stores and loads of naturally aligned words, never
 * read-modify-write: each counter has one writer. The orderings:
 *  - posted[b] is stored relaxed: the state byte's release store (BUF_POSTED,
 *    once b is fully cut) publishes the final counts, and pool_recycle loads the
 *    state with acquire before reading them;
 *  - released[b] is stored with release after the queue copied the stride out,
 *    and loaded with acquire: a buffer seen fully released has had every read of
 *    its strides done before it is handed out again;
 *  - the per-queue totals (st.posted, st.consumed) are relaxed: they steer the
 *    refill thread and feed the stats, exact only when the queues are idle.
 * On x86 (TSO) all of these are plain moves. A buffer changes hands through its
 * state byte and the free list (mutex, once per large buffer, never per packet).
 *
 * The per-buffer counters are 32 bits and wrap after 2^32 strides; only their
 * per-queue difference (strides of b in q's ring, never more than a ring) is
 * used, in modular arithmetic, which is exact across the wrap.
 */
#include "rxbuf.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/defs.h"
#include "../net/virtq.h"
#include "dma.h"

enum { BUF_FREE, BUF_CARVING, BUF_POSTED };

/* A full-size frame: 1514 B plus the 12 B virtio-net header. */
#define MAX_FRAME_BYTES 1526u

struct fixed_q {
	uint8_t **stack; /* buffers not posted */
	unsigned int top;
};

struct pool_q {
	int cur;            /* buffer being cut into strides, -1 when none */
	unsigned int next;  /* next stride of cur */
	unsigned int want;  /* strides this queue keeps posted; grows with its traffic */
	unsigned int level; /* strides in its ring right after its last fill */
	uint32_t *posted;   /* [buffer] strides this queue posted, ever, modulo 2^32 */
	uint32_t *released; /* [buffer] strides this queue released, ever, modulo 2^32 */
};

struct rxq_state {
	struct rxbuf_qstats st;
	union {
		struct fixed_q fixed;
		struct pool_q pool;
	};
} __cache_aligned;

struct rxbuf {
	struct rxbuf_cfg cfg;
	struct dma_region mem;
	size_t unit;
	unsigned int strides; /* per large buffer (pool) */
	struct rxq_state *q;
	/* pool scheme */
	uint8_t *state; /* [buffer] BUF_* */
	unsigned int *free_list;
	unsigned int nfree;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t refill;
	bool refill_running;
	bool stopping;
	uint64_t recycled, refill_runs;
	uint64_t gap_threshold; /* strides */
	unsigned int frame_strides; /* strides a full-size frame spans */
};

static uint8_t *buf_addr(const struct rxbuf *rb, unsigned int b)
{
	return rb->mem.base + (size_t)b * rb->cfg.buf_size;
}

/* --- fixed scheme ----------------------------------------------------------- */

static int fixed_init(struct rxbuf *rb)
{
	unsigned int q, i;

	for (q = 0; q < rb->cfg.queues; q++) {
		struct fixed_q *f = &rb->q[q].fixed;

		f->stack = calloc(rb->cfg.ring_size, sizeof(uint8_t *));
		if (!f->stack)
			return -ENOMEM;
		for (i = 0; i < rb->cfg.ring_size; i++)
			f->stack[f->top++] = buf_addr(rb, q * rb->cfg.ring_size + i);
	}
	return 0;
}

static unsigned int fixed_fill(struct rxbuf *rb, unsigned int q, struct virtq *vq)
{
	struct fixed_q *f = &rb->q[q].fixed;
	unsigned int n = 0;

	while (vq->num_free && f->top) {
		uint8_t *b = f->stack[--f->top];

		virtq_add(vq, dma_addr(b), (uint32_t)rb->unit, true, b);
		n++;
	}
	if (!f->top && vq->num_free)
		rb->q[q].st.nobuf++;
	return n;
}

static void fixed_release(struct rxbuf *rb, unsigned int q, void *buf)
{
	struct fixed_q *f = &rb->q[q].fixed;

	/* the ring hands each buffer back once (virtq.h), so this never fills; if a bug made
	 * it, the buffer is dropped here, and rxbuf_check reports the imbalance */
	if (unlikely(f->top >= rb->cfg.ring_size))
		return;
	f->stack[f->top++] = buf;
}

/* --- pool scheme ------------------------------------------------------------ */

static uint64_t load64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Strides of buffer b queue q still has in its ring: exact across the counters' wrap. */
static uint32_t pool_held(const struct rxbuf *rb, unsigned int q, unsigned int b)
{
	uint32_t released = __atomic_load_n(&rb->q[q].pool.released[b], __ATOMIC_ACQUIRE);

	return __atomic_load_n(&rb->q[q].pool.posted[b], __ATOMIC_RELAXED) - released;
}

static void pool_recycle(struct rxbuf *rb);

/*
 * Hand queue q a free buffer to cut. When the free list is empty the queue scans for
 * fully released buffers itself before giving up: waiting for the refill thread would
 * make a starving queue drop frames for as long as that thread waits for a CPU, which
 * on a machine whose cores all spin on queues is a scheduler time slice. This is the
 * slow path (once per buffer at most), never the per-packet one.
 */
static bool pool_take(struct rxbuf *rb, unsigned int *b)
{
	bool ok = false;

	if (!__atomic_load_n(&rb->nfree, __ATOMIC_RELAXED))
		pool_recycle(rb);
	pthread_mutex_lock(&rb->lock);
	if (rb->nfree) {
		*b = rb->free_list[--rb->nfree];
		__atomic_store_n(&rb->state[*b], BUF_CARVING, __ATOMIC_RELAXED);
		ok = true;
	} else {
		pthread_cond_signal(&rb->wake); /* still starving: let the refill thread look */
	}
	pthread_mutex_unlock(&rb->lock);
	return ok;
}

static unsigned int pool_fill(struct rxbuf *rb, unsigned int q, struct virtq *vq)
{
	struct rxq_state *s = &rb->q[q];
	struct pool_q *p = &s->pool;
	unsigned int n = 0, b;
	uint64_t in_ring = s->st.posted - s->st.consumed;

	/*
	 * Shares. Strides are shared: a queue keeps only what its traffic needs posted, so
	 * an idle queue pins a few strides, not a ring's worth. Each queue cuts its own
	 * buffer, so one whose share fits in a buffer holds strides of at most two: the one
	 * it cuts and the previous one, still being filled; hence a pool of at least two
	 * buffers per queue, and small buffers keep that floor low.
	 * What the device used since the last fill is the burst the ring had to absorb. A
	 * queue that used three quarters of its share grows it to a third more than that
	 * burst, so a quarter stays in reserve. One left without room for a full-size frame
	 * (it may have lost frames, and the burst may have been larger than what it saw)
	 * grows by half. Small steps keep a share close to what its bursts need. Only a
	 * queue whose last fill reached its share may grow: one held short by an empty pool
	 * needs buffers back, not a larger claim on them.
	 * Shares never shrink: strides posted to a virtio ring cannot be taken back short
	 * of resetting the queue, so a share that outgrew its traffic stays pinned anyway.
	 */
	if (p->level == p->want && p->level > in_ring && p->want < vq->size) {
		uint64_t used = p->level - in_ring, want = p->want;

		if (in_ring < rb->frame_strides)
			want += (want + 1) / 2;
		else if (4 * used >= 3 * want)
			want = (4 * used + 2) / 3;
		if (want > vq->size)
			want = vq->size;
		__atomic_store_n(&p->want, (unsigned int)want, __ATOMIC_RELAXED); /* stats read it */
	}
	while (vq->num_free && in_ring + n < p->want) {
		if (p->cur < 0 || p->next == rb->strides) {
			if (p->cur >= 0) /* fully cut: now only releases can free it */
				__atomic_store_n(&rb->state[p->cur], BUF_POSTED, __ATOMIC_RELEASE);
			p->cur = -1;
			if (!pool_take(rb, &b)) {
				s->st.nobuf++;
				break;
			}
			p->cur = (int)b;
			p->next = 0;
		}
		b = (unsigned int)p->cur;
		virtq_add(vq, dma_addr(buf_addr(rb, b) + (size_t)p->next * rb->unit),
			  (uint32_t)rb->unit, true, buf_addr(rb, b) + (size_t)p->next * rb->unit);
		p->next++;
		__atomic_store_n(&p->posted[b], p->posted[b] + 1, __ATOMIC_RELAXED);
		n++;
	}
	__atomic_store_n(&s->st.posted, s->st.posted + n, __ATOMIC_RELAXED);
	p->level = (unsigned int)(in_ring + n);
	return n;
}

static void pool_release(struct rxbuf *rb, unsigned int q, void *buf)
{
	struct pool_q *p = &rb->q[q].pool;
	unsigned int b = (unsigned int)(((uint8_t *)buf - rb->mem.base) / rb->cfg.buf_size);

	/* release: the stride was copied out before anyone can see it released */
	__atomic_store_n(&p->released[b], p->released[b] + 1, __ATOMIC_RELEASE);
}

/* Fully released: no queue holds a stride of buffer b in its ring. */
static bool pool_idle(const struct rxbuf *rb, unsigned int b)
{
	unsigned int q;

	for (q = 0; q < rb->cfg.queues; q++)
		if (pool_held(rb, q, b))
			return false;
	return true;
}

static uint64_t pool_gap(const struct rxbuf *rb)
{
	uint64_t posted = 0, consumed = 0;
	unsigned int q;

	for (q = 0; q < rb->cfg.queues; q++) {
		posted += load64(&rb->q[q].st.posted);
		consumed += load64(&rb->q[q].st.consumed);
	}
	return posted - consumed;
}

static void pool_recycle(struct rxbuf *rb)
{
	unsigned int b;

	for (b = 0; b < rb->cfg.pool_buffers; b++) {
		if (__atomic_load_n(&rb->state[b], __ATOMIC_ACQUIRE) != BUF_POSTED)
			continue;
		/* the releases are read after the state: a buffer seen POSTED has all its
		 * strides counted in posted[] already */
		if (!pool_idle(rb, b))
			continue;
		/* a starving queue and the refill thread may both find b idle: the first one
		 * to take the lock frees it */
		pthread_mutex_lock(&rb->lock);
		if (rb->state[b] == BUF_POSTED) {
			rb->state[b] = BUF_FREE;
			rb->free_list[rb->nfree++] = b;
			rb->recycled++;
		}
		pthread_mutex_unlock(&rb->lock);
	}
	__atomic_fetch_add(&rb->refill_runs, 1, __ATOMIC_RELAXED);
}

static uint64_t pool_consumed(const struct rxbuf *rb)
{
	uint64_t consumed = 0;
	unsigned int q;

	for (q = 0; q < rb->cfg.queues; q++)
		consumed += load64(&rb->q[q].st.consumed);
	return consumed;
}

static void *refill_main(void *arg)
{
	struct rxbuf *rb = arg;
	struct timespec until;
	uint64_t seen = 0, now;
	long nap_ns = 1000000;

	pthread_mutex_lock(&rb->lock);
	while (!rb->stopping) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += nap_ns;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&rb->wake, &rb->lock, &until);
		if (rb->stopping)
			break;
		pthread_mutex_unlock(&rb->lock);
		/* only scan when the queues are running low (or a queue starved) */
		if (pool_gap(rb) < rb->gap_threshold || !rb->nfree)
			pool_recycle(rb);
		/* an idle instance must not pay for a ticking refill thread: nap 1 ms while
		 * packets flow, 100 ms when nothing was consumed (a starving queue wakes us) */
		now = pool_consumed(rb);
		nap_ns = now != seen ? 1000000 : 100000000;
		seen = now;
		pthread_mutex_lock(&rb->lock);
	}
	pthread_mutex_unlock(&rb->lock);
	return NULL;
}

static int pool_init(struct rxbuf *rb)
{
	unsigned int q, b;
	pthread_condattr_t ca;

	rb->state = calloc(rb->cfg.pool_buffers, 1);
	rb->free_list = calloc(rb->cfg.pool_buffers, sizeof(unsigned int));
	if (!rb->state || !rb->free_list)
		return -ENOMEM;
	for (b = 0; b < rb->cfg.pool_buffers; b++)
		rb->free_list[rb->nfree++] = rb->cfg.pool_buffers - 1 - b;
	rb->frame_strides = (MAX_FRAME_BYTES + rb->cfg.stride - 1) / rb->cfg.stride;
	for (q = 0; q < rb->cfg.queues; q++) {
		struct pool_q *p = &rb->q[q].pool;

		p->cur = -1;
		/* a whole buffer at first: a queue holds strides of up to two anyway (see
		 * "Shares" in pool_fill), and a larger first share loses less to the first
		 * bursts; at least one full-size frame when strides are large */
		p->want = rb->strides > rb->frame_strides ? rb->strides : rb->frame_strides;
		p->posted = calloc(rb->cfg.pool_buffers, sizeof(uint32_t));
		p->released = calloc(rb->cfg.pool_buffers, sizeof(uint32_t));
		if (!p->posted || !p->released)
			return -ENOMEM;
	}
	rb->gap_threshold = (uint64_t)rb->cfg.pool_buffers * rb->strides / 4;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rb->wake, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&rb->refill, NULL, refill_main, rb))
		return -EAGAIN;
	rb->refill_running = true;
	return 0;
}

/* --- common ----------------------------------------------------------------- */

int rxbuf_create(struct rxbuf **out, const struct rxbuf_cfg *cfg, struct vfio_dev *dev)
{
	struct rxbuf *rb;
	size_t bytes;
	int ret;

	if (!cfg->queues || !cfg->buf_size)
		return -EINVAL;
	if (cfg->kind == RXBUF_POOL &&
	    (!cfg->stride || cfg->buf_size % cfg->stride || cfg->pool_buffers < rxbuf_min_pool_buffers(cfg->queues) ||
	     cfg->stride < 64))
		return -EINVAL;
	if (cfg->kind == RXBUF_FIXED && !cfg->ring_size)
		return -EINVAL;
	rb = calloc(1, sizeof(*rb));
	if (!rb)
		return -ENOMEM;
	rb->cfg = *cfg;
	pthread_mutex_init(&rb->lock, NULL);
	rb->q = aligned_alloc(CACHE_LINE, sizeof(*rb->q) * cfg->queues);
	ret = -ENOMEM;
	if (!rb->q)
		goto fail;
	memset(rb->q, 0, sizeof(*rb->q) * cfg->queues);
	if (cfg->kind == RXBUF_FIXED) {
		rb->unit = cfg->buf_size;
		bytes = (size_t)cfg->queues * cfg->ring_size * cfg->buf_size;
	} else {
		rb->unit = cfg->stride;
		rb->strides = cfg->buf_size / cfg->stride;
		bytes = (size_t)cfg->pool_buffers * cfg->buf_size;
	}
	/* normal pages: no buffer or stride crosses one, and pinned_bytes stays exact */
	ret = dma_region_create(&rb->mem, dev, bytes, false);
	if (ret)
		goto fail;
	ret = cfg->kind == RXBUF_FIXED ? fixed_init(rb) : pool_init(rb);
	if (ret)
		goto fail;
	*out = rb;
	return 0;
fail:
	rxbuf_destroy(rb);
	return ret;
}

void rxbuf_destroy(struct rxbuf *rb)
{
	unsigned int q;

	if (!rb)
		return;
	if (rb->refill_running) {
		pthread_mutex_lock(&rb->lock);
		rb->stopping = true;
		pthread_cond_signal(&rb->wake);
		pthread_mutex_unlock(&rb->lock);
		pthread_join(rb->refill, NULL);
	}
	if (rb->q) {
		for (q = 0; q < rb->cfg.queues; q++) {
			if (rb->cfg.kind == RXBUF_FIXED) {
				free(rb->q[q].fixed.stack);
			} else {
				free(rb->q[q].pool.posted);
				free(rb->q[q].pool.released);
			}
		}
	}
	free(rb->q);
	free(rb->state);
	free(rb->free_list);
	dma_region_destroy(&rb->mem);
	free(rb);
}

size_t rxbuf_unit(const struct rxbuf *rb)
{
	return rb->unit;
}

unsigned int rxbuf_fill(struct rxbuf *rb, unsigned int q, struct virtq *vq)
{
	unsigned int n;

	if (rb->cfg.kind == RXBUF_POOL)
		return pool_fill(rb, q, vq);
	n = fixed_fill(rb, q, vq);
	rb->q[q].st.posted += n;
	return n;
}

void rxbuf_release(struct rxbuf *rb, unsigned int q, void *buf)
{
	if (rb->cfg.kind == RXBUF_POOL)
		pool_release(rb, q, buf);
	else
		fixed_release(rb, q, buf);
	__atomic_store_n(&rb->q[q].st.consumed, rb->q[q].st.consumed + 1, __ATOMIC_RELAXED);
}

void rxbuf_qstats(const struct rxbuf *rb, unsigned int q, struct rxbuf_qstats *st)
{
	st->posted = load64(&rb->q[q].st.posted);
	st->consumed = load64(&rb->q[q].st.consumed);
	st->nobuf = load64(&rb->q[q].st.nobuf);
	st->share = rb->cfg.kind == RXBUF_POOL
			    ? __atomic_load_n(&rb->q[q].pool.want, __ATOMIC_RELAXED)
			    : rb->cfg.ring_size;
}

void rxbuf_pstats(const struct rxbuf *rb, struct rxbuf_pstats *st)
{
	memset(st, 0, sizeof(*st));
	st->pinned_bytes = rb->mem.size;
	if (rb->cfg.kind == RXBUF_FIXED) {
		st->buffers_total = (uint64_t)rb->cfg.queues * rb->cfg.ring_size;
		for (unsigned int q = 0; q < rb->cfg.queues; q++)
			st->buffers_free += __atomic_load_n(&rb->q[q].fixed.top, __ATOMIC_RELAXED);
		return;
	}
	st->buffers_total = rb->cfg.pool_buffers;
	st->buffers_free = __atomic_load_n(&rb->nfree, __ATOMIC_RELAXED);
	st->recycled = __atomic_load_n(&rb->recycled, __ATOMIC_RELAXED);
	st->refill_runs = __atomic_load_n(&rb->refill_runs, __ATOMIC_RELAXED);
}

static int fail(FILE *why, const char *what, unsigned int idx, uint64_t a, uint64_t b)
{
	if (why)
		fprintf(why, "rxbuf: %s %u: %llu != %llu\n", what, idx, (unsigned long long)a,
			(unsigned long long)b);
	return -EIO;
}

int rxbuf_check(struct rxbuf *rb, const unsigned int *in_ring, FILE *why)
{
	uint64_t in_rings = 0, held = 0, counted = 0;
	unsigned int q, b, carving = 0;

	for (q = 0; q < rb->cfg.queues; q++) {
		struct rxbuf_qstats st;

		rxbuf_qstats(rb, q, &st);
		if (st.posted - st.consumed != in_ring[q])
			return fail(why, "queue posted-consumed vs ring occupancy", q,
				    st.posted - st.consumed, in_ring[q]);
		in_rings += in_ring[q];
		if (rb->cfg.kind == RXBUF_FIXED && rb->q[q].fixed.top + in_ring[q] != rb->cfg.ring_size)
			return fail(why, "queue free+posted vs ring size", q,
				    rb->q[q].fixed.top + in_ring[q], rb->cfg.ring_size);
	}
	if (rb->cfg.kind == RXBUF_FIXED)
		return 0;
	pool_recycle(rb); /* quiescent: whatever is fully released goes home now */
	for (b = 0; b < rb->cfg.pool_buffers; b++) {
		uint64_t in_b = 0;

		for (q = 0; q < rb->cfg.queues; q++) {
			uint32_t h = pool_held(rb, q, b);

			/* a queue released more than it posted: the difference wrapped to a
			 * count larger than its ring could hold */
			if (h > in_ring[q])
				return fail(why, "buffer released more strides than posted (queue "
					    "holds more than its ring)", b, h, in_ring[q]);
			in_b += h;
		}
		held += in_b;
		switch (rb->state[b]) {
		case BUF_FREE:
			if (in_b)
				return fail(why, "free buffer with strides in rings", b, in_b, 0);
			counted++;
			break;
		case BUF_CARVING:
			carving++;
			break;
		case BUF_POSTED:
			if (!in_b)
				return fail(why, "released buffer not recycled", b, in_b, 0);
			break;
		}
	}
	for (q = 0; q < rb->cfg.queues; q++)
		if (rb->q[q].pool.cur >= 0)
			carving--;
	if (carving)
		return fail(why, "buffers carving without an owner", 0, carving, 0);
	if (counted != rb->nfree)
		return fail(why, "free buffers vs free list", 0, counted, rb->nfree);
	if (held != in_rings)
		return fail(why, "strides held by buffers vs in rings", 0, held, in_rings);
	return 0;
}
