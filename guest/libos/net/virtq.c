/*
 * virtq.c: allocate a split virtqueue's three areas in DMA memory and add
 * descriptor chains (used by the control queue, off the fast path).
 */
#include "virtq.h"

#include <stdlib.h>
#include <string.h>

/* The three areas of a ring of size entries (virtio 1.x, 2.7). */
static void area_sizes(uint16_t size, size_t sz[3])
{
	sz[0] = sizeof(struct vring_desc) * size;
	sz[1] = sizeof(struct vring_avail) + sizeof(uint16_t) * (size + 1u);
	sz[2] = sizeof(struct vring_used) + sizeof(struct vring_used_elem) * size + sizeof(uint16_t);
}

/*
 * The spec asks for 16/2/4-byte alignment, but behind QEMU 7.2's emulated IOMMU an
 * access that crosses a page boundary has its tail misplaced (fixed by the project's
 * QEMU patch 0009): used entries then came back with length 0 and frames were lost.
 * Each area is aligned to a page, or to its own size rounded up to a power of two when
 * larger: rings of up to 256 entries then never cross a page, and larger ones (in huge
 * pages, see PAGE_RING in vnet.c) never cross a 2 MiB page.
 */
static size_t area_align(size_t sz)
{
	size_t a = 4096;

	while (a < sz)
		a *= 2;
	return a;
}

size_t virtq_bytes(uint16_t size)
{
	size_t sz[3], total = 0;
	unsigned int i;

	area_sizes(size, sz);
	for (i = 0; i < 3; i++)
		total += sz[i] + area_align(sz[i]); /* worst-case padding before each */
	return total;
}

int virtq_alloc(struct virtq *vq, struct dma_region *r, uint16_t size, uint16_t qidx,
		bool event_idx)
{
	size_t sz[3];
	uint16_t i;

	if (!size || (size & (size - 1)))
		return -EINVAL;
	memset(vq, 0, sizeof(*vq));
	area_sizes(size, sz);
	vq->desc = dma_alloc(r, sz[0], area_align(sz[0]));
	vq->avail = dma_alloc(r, sz[1], area_align(sz[1]));
	vq->used = dma_alloc(r, sz[2], area_align(sz[2]));
	vq->cookie = calloc(size, sizeof(void *));
	if (!vq->desc || !vq->avail || !vq->used || !vq->cookie) {
		free(vq->cookie);
		vq->cookie = NULL;
		return -ENOMEM;
	}
	vq->size = size;
	vq->qidx = qidx;
	vq->event_idx = event_idx;
	vq->used_event = &vq->avail->ring[size];
	vq->avail_event = (volatile uint16_t *)&vq->used->ring[size];
	for (i = 0; i < size; i++)
		vq->desc[i].next = (uint16_t)(i + 1);
	vq->num_free = size;
	virtq_disarm(vq);
	return 0;
}

int virtq_add_chain(struct virtq *vq, const struct vq_seg *segs, unsigned int n_out,
		    unsigned int n_in, void *cookie)
{
	unsigned int i, n = n_out + n_in;
	uint16_t head = vq->free_head, cur = head;

	if (!n || n > vq->num_free)
		return -ENOSPC;
	for (i = 0; i < n; i++) {
		struct vring_desc *d = &vq->desc[cur];

		d->addr = segs[i].addr;
		d->len = segs[i].len;
		d->flags = (uint16_t)((i >= n_out ? VRING_DESC_F_WRITE : 0) |
				      (i + 1 < n ? VRING_DESC_F_NEXT : 0));
		cur = d->next;
	}
	vq->free_head = cur;
	vq->num_free = (uint16_t)(vq->num_free - n);
	vq->cookie[head] = cookie;
	vq->avail->ring[vq->avail_shadow & (vq->size - 1)] = head;
	vq->avail_shadow++;
	return 0;
}
