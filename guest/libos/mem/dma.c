/*
 * dma.c: create, map and release DMA regions. The memory is a memfd (backed by
 * 2 MiB huge pages when the caller asks and the guest has them reserved, else by
 * normal pages), mapped at a chosen low address and pinned by VFIO when mapped;
 * the pinned size is the region size.
 */
#define _GNU_SOURCE
#include "dma.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../vfio/vfio.h"

#define HUGE_2M (2u << 20)

/* A memfd of size bytes mapped shared at addr; huge pages first when asked and they fit. */
static void *map_memfd(void *addr, size_t *size, bool *huge)
{
	size_t rounded = (*size + HUGE_2M - 1) & ~(size_t)(HUGE_2M - 1);
	const int flags = MAP_SHARED | MAP_POPULATE | MAP_FIXED_NOREPLACE;
	void *p = MAP_FAILED;
	int fd;

	fd = *huge ? memfd_create("libos-dma", MFD_CLOEXEC | MFD_HUGETLB) : -1;
	if (fd >= 0) {
		if (ftruncate(fd, (off_t)rounded) == 0)
			p = mmap(addr, rounded, PROT_READ | PROT_WRITE, flags, fd, 0);
		close(fd);
		if (p != MAP_FAILED) {
			*size = rounded;
			return p;
		}
	}
	*huge = false;
	/* no huge pages reserved (the usual case in small guests): normal pages */
	fd = memfd_create("libos-dma", MFD_CLOEXEC);
	if (fd < 0)
		return MAP_FAILED;
	if (ftruncate(fd, (off_t)*size) == 0)
		p = mmap(addr, *size, PROT_READ | PROT_WRITE, flags, fd, 0);
	close(fd);
	return p;
}

int dma_region_create(struct dma_region *r, struct vfio_dev *dev, size_t size, bool huge)
{
	void *p;
	int ret;

	memset(r, 0, sizeof(*r));
	size = (size + 4095) & ~(size_t)4095;
	/* IOVA == virtual address, and the IOMMU may only translate 39 bits: place the
	 * region at the device's next low address instead of where mmap likes */
	p = map_memfd((void *)(uintptr_t)dev->next_iova, &size, &huge);
	if (p == MAP_FAILED)
		return -errno;
	/* the next region starts 2 MiB aligned (huge pages need it), after a guard gap */
	dev->next_iova = ((dev->next_iova + size + HUGE_2M - 1) & ~(uint64_t)(HUGE_2M - 1)) + HUGE_2M;
	ret = vfio_dma_map(dev, p, size);
	if (ret) {
		munmap(p, size);
		return ret;
	}
	r->dev = dev;
	r->base = p;
	r->size = size;
	r->huge = huge;
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
