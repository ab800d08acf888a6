/*
 * dma.h: memory the device may read and write: an anonymous region mapped
 * through the IOMMU at IOVA == virtual address, carved by a bump allocator.
 * A region is freed whole; pieces are never freed one by one.
 */
#ifndef LIBOS_MEM_DMA_H
#define LIBOS_MEM_DMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vfio_dev;

struct dma_region {
	struct vfio_dev *dev;
	uint8_t *base;
	size_t size;
	size_t used;
	bool huge; /* backed by 2 MiB pages: physically contiguous within each */
};

/*
 * huge: try 2 MiB pages first (when the guest has them reserved), else normal pages.
 * Areas the device must see contiguous across 4 KiB (large rings, see net/virtq.c)
 * need them; receive buffers, whose pinned size is measured, take normal pages.
 */
int dma_region_create(struct dma_region *r, struct vfio_dev *dev, size_t size, bool huge);
void dma_region_destroy(struct dma_region *r);
/* Zeroed memory from the region; NULL when it is exhausted. align: power of two. */
void *dma_alloc(struct dma_region *r, size_t size, size_t align);

static inline uint64_t dma_addr(const void *p)
{
	return (uint64_t)(uintptr_t)p; /* identity IOVA mapping */
}

#endif
