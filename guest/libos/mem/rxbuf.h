/*
 * rxbuf.h: where receive buffers come from. Two schemes behind one interface:
 *
 *  fixed  each RX queue owns ring_size buffers of 2 KiB, reposted as soon as the
 *         frame is copied out (the classic per-queue provisioning);
 *  pool   one pool of large buffers (e.g. 16 KiB) cut into strides (e.g. 256 B)
 *         handed to whichever RX queue needs them; packets span strides through
 *         mergeable RX buffers. Each queue counts the strides it posted and
 *         released per buffer in arrays only it writes (no atomics on the fast
 *         path); a refill thread sums them and returns fully released buffers
 *         to the pool when the posted-minus-consumed gap runs low, and a queue
 *         that finds the pool empty does the same scan itself. Each queue keeps
 *         a share of strides posted that grows with its bursts.
 *
 * One rxbuf serves all queues of a device; queue q's calls come from one thread.
 */
#ifndef LIBOS_MEM_RXBUF_H
#define LIBOS_MEM_RXBUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct virtq;
struct vfio_dev;

enum rxbuf_kind { RXBUF_FIXED, RXBUF_POOL };

struct rxbuf_cfg {
	enum rxbuf_kind kind;
	unsigned int queues;
	unsigned int ring_size;     /* fixed: buffers per queue */
	unsigned int buf_size;      /* fixed: 2048; pool: large buffer size (16384) */
	unsigned int stride;        /* pool: stride size (256) */
	unsigned int pool_buffers;  /* pool: number of large buffers, >= 2 per queue */
};

struct rxbuf_qstats {
	uint64_t posted;   /* buffers (strides) handed to the device */
	uint64_t consumed; /* buffers the device filled and the driver released */
	uint64_t nobuf;    /* times the queue wanted a buffer and none was free */
	uint64_t share;    /* pool: strides the queue keeps posted; fixed: its ring size */
};

struct rxbuf_pstats {
	uint64_t pinned_bytes;
	uint64_t buffers_total;
	uint64_t buffers_free;
	uint64_t recycled;    /* buffers returned to the pool by the refill thread */
	uint64_t refill_runs; /* recycling scans: by the refill thread or a starving queue */
};

struct rxbuf;

/* The fewest pool buffers for queues queues: each can hold strides of two (see "Shares"). */
static inline unsigned int rxbuf_min_pool_buffers(unsigned int queues)
{
	return 2 * queues;
}

int rxbuf_create(struct rxbuf **out, const struct rxbuf_cfg *cfg, struct vfio_dev *dev);
void rxbuf_destroy(struct rxbuf *rb);
/* Size of one posted buffer (a stride in the pool scheme). */
size_t rxbuf_unit(const struct rxbuf *rb);
/* Post as many buffers to vq as it has room for and the scheme can give. */
unsigned int rxbuf_fill(struct rxbuf *rb, unsigned int q, struct virtq *vq);
/* The device filled buf and its bytes were copied out: give it back. */
void rxbuf_release(struct rxbuf *rb, unsigned int q, void *buf);
void rxbuf_qstats(const struct rxbuf *rb, unsigned int q, struct rxbuf_qstats *st);
void rxbuf_pstats(const struct rxbuf *rb, struct rxbuf_pstats *st);
/*
 * Accounting invariants, for a quiescent device (no thread in fill/release):
 * every queue's posted-minus-consumed equals in_ring[q] (its ring occupancy), and
 * in the pool every buffer is free, being cut by one queue, or holding exactly the
 * strides still in rings. Returns 0, or -EIO after writing the first violation.
 */
int rxbuf_check(struct rxbuf *rb, const unsigned int *in_ring, FILE *why);

#endif
