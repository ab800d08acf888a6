/*
 * virtq.h: split virtqueues (virtio 1.x, section 2.7) as the driver side sees
 * them. The fast path (add one buffer, publish, notify, reap) is inline here;
 * setup and descriptor chains live in virtq.c. A virtq is used by one thread.
 */
#ifndef LIBOS_NET_VIRTQ_H
#define LIBOS_NET_VIRTQ_H

#include <errno.h>
#include <linux/virtio_ring.h>
#include <stdbool.h>
#include <stdint.h>

#include "../base/defs.h"
#include "../mem/dma.h"

struct virtq {
	uint16_t size;
	uint16_t qidx;
	bool event_idx;
	bool armed;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	volatile uint16_t *used_event;  /* driver -> device: interrupt me after this */
	volatile uint16_t *avail_event; /* device -> driver: notify me after this */
	volatile uint16_t *notify;
	uint16_t free_head;
	uint16_t num_free;
	uint16_t avail_shadow; /* next avail->idx to publish */
	uint16_t kicked_at;    /* avail->idx the device was last told about */
	uint16_t last_used;
	void **cookie;
	uint64_t notifications; /* how many times the device was notified */
};

struct vq_seg {
	uint64_t addr;
	uint32_t len;
};

/* DMA bytes virtq_alloc() needs for a ring of size entries, alignment included. */
size_t virtq_bytes(uint16_t size);
int virtq_alloc(struct virtq *vq, struct dma_region *r, uint16_t size, uint16_t qidx,
		bool event_idx);
/* A chain of n_out device-readable then n_in device-writable segments. 0 or -ENOSPC. */
int virtq_add_chain(struct virtq *vq, const struct vq_seg *segs, unsigned int n_out,
		    unsigned int n_in, void *cookie);

static inline int virtq_add(struct virtq *vq, uint64_t addr, uint32_t len, bool device_writes,
			    void *cookie)
{
	uint16_t head = vq->free_head;
	struct vring_desc *d;

	if (unlikely(!vq->num_free))
		return -ENOSPC;
	d = &vq->desc[head];
	vq->free_head = d->next;
	vq->num_free--;
	d->addr = addr;
	d->len = len;
	d->flags = device_writes ? VRING_DESC_F_WRITE : 0;
	vq->cookie[head] = cookie;
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

static inline bool virtq_has_used(const struct virtq *vq)
{
	return READ_ONCE(vq->used->idx) != vq->last_used;
}

/* The next used buffer's cookie and written length, or NULL when there is none. */
static inline void *virtq_get(struct virtq *vq, uint32_t *len)
{
	struct vring_used_elem *e;
	uint16_t id, n = 1;
	void *cookie;

	if (!virtq_has_used(vq))
		return NULL;
	dma_rmb(); /* the entry after the index that announced it */
	e = &vq->used->ring[vq->last_used & (vq->size - 1)];
	id = (uint16_t)e->id;
	if (unlikely(id >= vq->size))
		return NULL;
	*len = e->len;
	cookie = vq->cookie[id];
	/* return the whole chain to the free list */
	{
		uint16_t tail = id;

		while (vq->desc[tail].flags & VRING_DESC_F_NEXT) {
			tail = vq->desc[tail].next;
			n++;
		}
		vq->desc[tail].next = vq->free_head;
	}
	vq->free_head = id;
	vq->num_free += n;
	vq->last_used++;
	if (!vq->armed && vq->event_idx)
		*vq->used_event = (uint16_t)(vq->last_used - 0x8000);
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
