/*
 * virtq.h: split virtqueues (virtio 1.x, section 2.7) as the driver side sees
 * them. The fast path (add one buffer, publish, notify, reap) is inline here;
 * setup, descriptor chains and the integrity check live in virtq.c. A virtq is
 * used by one thread.
 *
 * The device is not trusted. It can write anything into the used ring, and the
 * descriptor table lies in memory it can write too, so the driver keeps what it
 * must rely on out of its reach (struct vq_slot): the free list, which chains are
 * in flight, and each chain's extent. The descriptor table is written, never read
 * back. A used entry that names no chain in flight is skipped and counted; a used
 * index that claims more entries than chains in flight marks the queue broken
 * (see virtq_pending and virtq_get).
 */
#ifndef LIBOS_NET_VIRTQ_H
#define LIBOS_NET_VIRTQ_H

#include <errno.h>
#include <linux/virtio_ring.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../base/defs.h"
#include "../mem/dma.h"

/* What the driver keeps about descriptor i, in its own memory. */
struct vq_slot {
	void *cookie;   /* head of a chain in flight: the caller's token; NULL otherwise */
	uint16_t next;  /* the free list's link; inside a chain in flight, the chain's */
	uint16_t ndesc; /* head: descriptors in its chain */
	uint16_t tail;  /* head: the chain's last descriptor */
};

struct virtq {
	uint16_t size;
	uint16_t qidx;
	bool event_idx;
	bool armed;
	bool broken; /* the device broke the protocol: the queue reports nothing more */
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	volatile uint16_t *used_event;  /* driver -> device: interrupt me after this */
	volatile uint16_t *avail_event; /* device -> driver: notify me after this */
	volatile uint16_t *notify;
	uint16_t free_head;
	uint16_t num_free;     /* descriptors */
	uint16_t in_flight;    /* chains added and not yet returned (cookies set) */
	uint16_t avail_shadow; /* next avail->idx to publish */
	uint16_t kicked_at;    /* avail->idx the device was last told about */
	uint16_t last_used;
	struct vq_slot *slot;   /* [size], never in device-visible memory */
	uint64_t notifications; /* how many times the device was notified */
	uint64_t bad_used;      /* used entries naming no chain in flight, skipped */
};

struct vq_seg {
	uint64_t addr;
	uint32_t len;
};

/* DMA bytes virtq_alloc() needs for a ring of size entries, alignment included. */
size_t virtq_bytes(uint16_t size);
/* The rings in r; the driver's own bookkeeping on the heap (virtq_free releases it). */
int virtq_alloc(struct virtq *vq, struct dma_region *r, uint16_t size, uint16_t qidx,
		bool event_idx);
void virtq_free(struct virtq *vq);
/*
 * A chain of n_out device-readable then n_in device-writable segments. 0, -ENOSPC, or
 * -EINVAL for a NULL cookie (a cookie marks its chain in flight).
 */
int virtq_add_chain(struct virtq *vq, const struct vq_seg *segs, unsigned int n_out,
		    unsigned int n_in, void *cookie);
/*
 * The driver's bookkeeping is whole: the free list holds num_free distinct descriptors,
 * none in flight; the chains in flight are in_flight, distinct, each ndesc long, and with
 * the free list they cover the ring exactly. 0, or -EIO after writing the first violation
 * to why. For tests and vnet_check; off the fast path.
 */
int virtq_check(const struct virtq *vq, FILE *why);

/* One buffer. 0, -ENOSPC when the ring is full, -EINVAL for a NULL cookie. */
static inline int virtq_add(struct virtq *vq, uint64_t addr, uint32_t len, bool device_writes,
			    void *cookie)
{
	uint16_t head = vq->free_head;
	struct vq_slot *s;
	struct vring_desc *d;

	if (unlikely(!vq->num_free || !cookie))
		return vq->num_free ? -EINVAL : -ENOSPC;
	s = &vq->slot[head];
	vq->free_head = s->next;
	vq->num_free--;
	vq->in_flight++;
	s->cookie = cookie;
	s->ndesc = 1;
	s->tail = head;
	d = &vq->desc[head];
	d->addr = addr;
	d->len = len;
	d->flags = device_writes ? VRING_DESC_F_WRITE : 0;
	vq->avail->ring[vq->avail_shadow & (vq->size - 1)] = head;
	vq->avail_shadow++;
	return 0;
}

/* Publish added buffers and notify the device if it asked to be told. */
static inline void virtq_kick(struct virtq *vq)
{
	uint16_t old = vq->kicked_at, new = vq->avail_shadow;
	bool need;

	if (old == new)
		return;
	dma_wmb(); /* descriptors and ring entries before the index that exposes them */
	WRITE_ONCE(vq->avail->idx, new);
	dma_mb(); /* the index must be visible before we read whether to notify */
	if (vq->event_idx)
		need = (uint16_t)(new - *vq->avail_event - 1) < (uint16_t)(new - old);
	else
		need = !(READ_ONCE(vq->used->flags) & VRING_USED_F_NO_NOTIFY);
	vq->kicked_at = new;
	if (need) {
		*vq->notify = vq->qidx;
		vq->notifications++;
	}
}

/*
 * Ring the doorbell whatever the device asked for. The doorbell carries no state, so
 * this is safe next to virtq_kick(); it exists for devices that wait for a kick they
 * never asked for (see vnet.c, "nudging").
 */
static inline void virtq_nudge(struct virtq *vq)
{
	*vq->notify = vq->qidx;
}

/*
 * Used entries published and not taken yet. A device cannot have returned more chains
 * than are in flight: an index that claims so (or that went backwards) means it is broken,
 * and the queue is marked broken: from then on it reports nothing, so callers fail fast
 * instead of reading entries nobody can make sense of.
 */
static inline uint16_t virtq_pending(struct virtq *vq)
{
	uint16_t n;

	if (unlikely(vq->broken))
		return 0;
	n = (uint16_t)(READ_ONCE(vq->used->idx) - vq->last_used);
	if (unlikely(n > vq->in_flight)) {
		WRITE_ONCE(vq->broken, true); /* read by the stats writer */
		return 0;
	}
	return n;
}

static inline bool virtq_has_used(struct virtq *vq)
{
	return virtq_pending(vq) != 0;
}

/*
 * Take the next used entry: its chain's cookie and the length the device wrote. NULL when
 * there is none, and also when the entry names no chain in flight (an id beyond the ring,
 * a chain already returned, one never added): that entry is skipped and counted in
 * bad_used, so the queue moves on instead of stalling on it. Which chain the device meant
 * cannot be known, so that chain stays in flight for good (its descriptors are lost to
 * the ring). A device that sent a ring's worth of such entries may hold none of our
 * buffers any more: the queue is marked broken. Takes at most one entry per call.
 */
static inline void *virtq_get(struct virtq *vq, uint32_t *len)
{
	struct vring_used_elem *e;
	struct vq_slot *s;
	uint32_t id, n;
	void *cookie;

	if (!virtq_pending(vq))
		return NULL;
	dma_rmb(); /* the entry after the index that announced it */
	e = &vq->used->ring[vq->last_used & (vq->size - 1)];
	id = READ_ONCE(e->id);
	n = READ_ONCE(e->len);
	vq->last_used++;
	if (!vq->armed && vq->event_idx)
		*vq->used_event = (uint16_t)(vq->last_used - 0x8000);
	if (unlikely(id >= vq->size || !vq->slot[id].cookie)) {
		WRITE_ONCE(vq->bad_used, vq->bad_used + 1);
		if (vq->bad_used >= vq->size)
			WRITE_ONCE(vq->broken, true);
		return NULL;
	}
	s = &vq->slot[id];
	cookie = s->cookie;
	s->cookie = NULL;
	/* the chain's extent comes from our records, never from the descriptor table */
	vq->slot[s->tail].next = vq->free_head;
	vq->free_head = (uint16_t)id;
	vq->num_free = (uint16_t)(vq->num_free + s->ndesc);
	vq->in_flight--;
	*len = n;
	return cookie;
}

/*
 * Ask for an interrupt on the next used buffer. Returns true when buffers are
 * already waiting: the caller must poll again instead of sleeping, or it could
 * sleep through the arrival that raced with arming.
 */
static inline bool virtq_arm(struct virtq *vq)
{
	vq->armed = true;
	if (vq->event_idx)
		*vq->used_event = vq->last_used;
	else
		WRITE_ONCE(vq->avail->flags, 0);
	dma_mb();
	return virtq_has_used(vq);
}

static inline void virtq_disarm(struct virtq *vq)
{
	vq->armed = false;
	if (vq->event_idx)
		*vq->used_event = (uint16_t)(vq->last_used - 0x8000);
	else
		WRITE_ONCE(vq->avail->flags, VRING_AVAIL_F_NO_INTERRUPT);
}

#endif
