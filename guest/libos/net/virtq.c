/*
 * virtq.c: allocate a split virtqueue's three areas in DMA memory and add
 * descriptor chains (used by the control queue, off the fast path).
 */
#include "virtq.h"

#include <stdlib.h>
#include <string.h>

int virtq_alloc(struct virtq *vq, struct dma_region *r, uint16_t size, uint16_t qidx,
		bool event_idx)
{
	size_t avail_sz = sizeof(struct vring_avail) + sizeof(uint16_t) * (size + 1u);
	size_t used_sz = sizeof(struct vring_used) + sizeof(struct vring_used_elem) * size +
			 sizeof(uint16_t);
	uint16_t i;

	if (!size || (size & (size - 1)))
		return -EINVAL;
	memset(vq, 0, sizeof(*vq));
	/*
	 * The spec asks for 16/2/4-byte alignment, but behind QEMU 7.2's emulated IOMMU an
	 * access that crosses a page boundary has its tail misplaced (fixed by the
	 * project's QEMU patch 0009): used entries then came back with length 0 and frames
	 * were lost. One page-aligned area each keeps rings of up to 256 entries clear of
	 * it; larger ones need contiguous memory (PAGE_RING in vnet.c).
	 */
	vq->desc = dma_alloc(r, sizeof(struct vring_desc) * size, 4096);
	vq->avail = dma_alloc(r, avail_sz, 4096);
	vq->used = dma_alloc(r, used_sz, 4096);
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
