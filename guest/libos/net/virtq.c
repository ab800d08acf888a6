/*
 * virtq.c: allocate a split virtqueue's three areas in DMA memory, add
 * descriptor chains (used by the control queue, off the fast path), and check
 * the driver's own bookkeeping of a ring (virtq.h says why it is kept apart).
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
	vq->slot = calloc(size, sizeof(*vq->slot));
	if (!vq->desc || !vq->avail || !vq->used || !vq->slot) {
		virtq_free(vq);
		return -ENOMEM;
	}
	vq->size = size;
	vq->qidx = qidx;
	vq->event_idx = event_idx;
	vq->used_event = &vq->avail->ring[size];
	vq->avail_event = (volatile uint16_t *)&vq->used->ring[size];
	for (i = 0; i < size; i++)
		vq->slot[i].next = (uint16_t)(i + 1); /* the last link is never followed */
	vq->num_free = size;
	virtq_disarm(vq);
	return 0;
}

void virtq_free(struct virtq *vq)
{
	free(vq->slot);
	vq->slot = NULL;
}

int virtq_add_chain(struct virtq *vq, const struct vq_seg *segs, unsigned int n_out,
		    unsigned int n_in, void *cookie)
{
	unsigned int i, n = n_out + n_in;
	uint16_t head = vq->free_head, cur = head, tail = head;

	if (!cookie)
		return -EINVAL;
	if (!n || n > vq->num_free)
		return -ENOSPC;
	for (i = 0; i < n; i++) {
		struct vring_desc *d = &vq->desc[cur];

		d->addr = segs[i].addr;
		d->len = segs[i].len;
		d->flags = (uint16_t)((i >= n_out ? VRING_DESC_F_WRITE : 0) |
				      (i + 1 < n ? VRING_DESC_F_NEXT : 0));
		/* the chain keeps the free list's links, which the device follows too */
		d->next = vq->slot[cur].next;
		tail = cur;
		cur = vq->slot[cur].next;
	}
	vq->free_head = cur;
	vq->num_free = (uint16_t)(vq->num_free - n);
	vq->in_flight++;
	vq->slot[head].cookie = cookie;
	vq->slot[head].ndesc = (uint16_t)n;
	vq->slot[head].tail = tail;
	vq->avail->ring[vq->avail_shadow & (vq->size - 1)] = head;
	vq->avail_shadow++;
	return 0;
}

static int check_fail(FILE *why, const struct virtq *vq, const char *what, unsigned int at)
{
	if (why)
		fprintf(why, "virtq %u: %s at descriptor %u\n", vq->qidx, what, at);
	return -EIO;
}

int virtq_check(const struct virtq *vq, FILE *why)
{
	unsigned int i, k, heads = 0, covered = 0, cur;
	uint8_t *seen;
	int ret = 0;

	seen = calloc(vq->size, 1);
	if (!seen)
		return -ENOMEM;
	cur = vq->free_head;
	for (i = 0; i < vq->num_free && !ret; i++) {
		if (cur >= vq->size)
			ret = check_fail(why, vq, "free list leaves the ring", cur);
		else if (seen[cur] || vq->slot[cur].cookie)
			ret = check_fail(why, vq, "free list holds a descriptor twice or in flight", cur);
		else
			seen[cur] = 1, covered++, cur = vq->slot[cur].next;
	}
	for (i = 0; i < vq->size && !ret; i++) {
		const struct vq_slot *h = &vq->slot[i];

		if (!h->cookie)
			continue;
		heads++;
		cur = i;
		for (k = 0; k < h->ndesc && !ret; k++) {
			if (cur >= vq->size || seen[cur])
				ret = check_fail(why, vq, "chain overlaps another or the free list", i);
			else if (k + 1 == h->ndesc && cur != h->tail)
				ret = check_fail(why, vq, "chain does not end at its tail", i);
			else
				seen[cur] = 1, covered++, cur = vq->slot[cur].next;
		}
	}
	if (!ret && heads != vq->in_flight)
		ret = check_fail(why, vq, "chains in flight miscounted", heads);
	if (!ret && covered != vq->size)
		ret = check_fail(why, vq, "descriptors neither free nor in flight", covered);
	free(seen);
	return ret;
}
