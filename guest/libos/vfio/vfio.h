/*
 * vfio.h: a PCI device handed to user space through VFIO: its regions (BARs,
 * config space), DMA mappings through the IOMMU, and MSI-X vectors delivered to
 * eventfds. Knows nothing about virtio.
 */
#ifndef LIBOS_VFIO_H
#define LIBOS_VFIO_H

#include <stddef.h>
#include <stdint.h>

#define VFIO_MAX_BARS 6

struct vfio_bar {
	void *map;    /* NULL when the BAR is absent or not mappable */
	size_t size;
};

struct vfio_dev {
	int container;
	int group;
	int device;
	uint64_t cfg_offset;  /* file offset of PCI config space in the device fd */
	struct vfio_bar bars[VFIO_MAX_BARS];
	unsigned int msix_count;
	/* Next free IOVA (== virtual address) for DMA regions: an emulated IOMMU may
	 * translate only 39 address bits, so regions live low in the address space. */
	uint64_t next_iova;
	char bdf[32];
};

/* Opens the device at PCI address bdf ("0000:00:03.0"), which must be bound to vfio-pci. */
int vfio_open(struct vfio_dev *dev, const char *bdf);
void vfio_close(struct vfio_dev *dev);
int vfio_cfg_read(struct vfio_dev *dev, unsigned int off, void *buf, size_t len);
int vfio_cfg_write(struct vfio_dev *dev, unsigned int off, const void *buf, size_t len);
/* Maps [vaddr, vaddr+size) for device reads and writes at IOVA == vaddr. */
int vfio_dma_map(struct vfio_dev *dev, void *vaddr, size_t size);
int vfio_dma_unmap(struct vfio_dev *dev, void *vaddr, size_t size);
/* Routes MSI-X vectors 0..n-1 to the given eventfds (-1 leaves a vector unrouted). */
int vfio_msix_enable(struct vfio_dev *dev, const int *fds, unsigned int n);
int vfio_msix_disable(struct vfio_dev *dev);
int vfio_reset(struct vfio_dev *dev);

#endif
