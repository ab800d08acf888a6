/*
 * dma.c: create, map and release DMA regions. The pages are populated and
 * pinned by VFIO when mapped; the pinned size is the region size.
 */
#include "dma.h"

#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "../vfio/vfio.h"

int dma_region_create(struct dma_region *r, struct vfio_dev *dev, size_t size)
{
	void *p;
	int ret;

	memset(r, 0, sizeof(*r));
	size = (size + 4095) & ~(size_t)4095;
	/* IOVA == virtual address, and the IOMMU may only translate 39 bits: place the
	 * region at the device's next low address instead of where mmap likes */
	p = mmap((void *)(uintptr_t)dev->next_iova, size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	dev->next_iova += size + (1u << 21); /* a guard gap between regions */
	ret = vfio_dma_map(dev, p, size);
	if (ret) {
		munmap(p, size);
		return ret;
	}
	r->dev = dev;
	r->base = p;
	r->size = size;
	return 0;
}

void dma_region_destroy(struct dma_region *r)
{
	if (!r->base)
		return;
	vfio_dma_unmap(r->dev, r->base, r->size);
	munmap(r->base, r->size);
	r->base = NULL;
}

void *dma_alloc(struct dma_region *r, size_t size, size_t align)
{
	size_t off = (r->used + align - 1) & ~(align - 1);

	if (off + size > r->size)
		return NULL;
	r->used = off + size;
	return memset(r->base + off, 0, size);
}
