/*
 * vfio.c: open a VFIO group/container/device, map BARs, map DMA memory, route
 * MSI-X to eventfds. Every resource it opens is released by vfio_close, also
 * after a partial vfio_open. It must not interpret device registers.
 */
#include "vfio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../base/defs.h"

static int iommu_group_of(const char *bdf)
{
	char path[PATH_MAX], link[PATH_MAX];
	ssize_t n;
	const char *slash;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return -errno;
	link[n] = '\0';
	slash = strrchr(link, '/');
	return atoi(slash ? slash + 1 : link);
}

static int open_container(struct vfio_dev *dev, int group_id)
{
	struct vfio_group_status st = { .argsz = sizeof(st) };
	char path[64];

	dev->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (dev->container < 0)
		return -errno;
	if (ioctl(dev->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		return -EINVAL;
	if (!ioctl(dev->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU))
		return -ENOTSUP;
	snprintf(path, sizeof(path), "/dev/vfio/%d", group_id);
	dev->group = open(path, O_RDWR | O_CLOEXEC);
	if (dev->group < 0)
		return -errno;
	if (ioctl(dev->group, VFIO_GROUP_GET_STATUS, &st) < 0)
		return -errno;
	/* every device of the group must be bound to vfio-pci, or the IOMMU cannot isolate */
	if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE))
		return -EBUSY;
	if (ioctl(dev->group, VFIO_GROUP_SET_CONTAINER, &dev->container) < 0)
		return -errno;
	if (ioctl(dev->container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0)
		return -errno;
	return 0;
}

static int map_bars(struct vfio_dev *dev)
{
	unsigned int i;

	for (i = 0; i < VFIO_MAX_BARS; i++) {
		struct vfio_region_info ri = { .argsz = sizeof(ri), .index = i };
		void *p;

		if (ioctl(dev->device, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0)
			return -errno;
		if (!ri.size || !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP))
			continue;
		p = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev->device,
			 (off_t)ri.offset);
		if (p == MAP_FAILED)
			return -errno;
		dev->bars[i].map = p;
		dev->bars[i].size = ri.size;
	}
	return 0;
}

static int enable_bus_master(struct vfio_dev *dev)
{
	uint16_t cmd;
	int ret;

	ret = vfio_cfg_read(dev, 0x04, &cmd, sizeof(cmd));
	if (ret)
		return ret;
	cmd |= 0x0006; /* memory space + bus master */
	return vfio_cfg_write(dev, 0x04, &cmd, sizeof(cmd));
}

int vfio_open(struct vfio_dev *dev, const char *bdf)
{
	struct vfio_region_info cfg = { .argsz = sizeof(cfg),
					.index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_irq_info irq = { .argsz = sizeof(irq), .index = VFIO_PCI_MSIX_IRQ_INDEX };
	int group_id, ret;

	memset(dev, 0, sizeof(*dev));
	dev->container = dev->group = dev->device = -1;
	dev->next_iova = 1ULL << 32;
	snprintf(dev->bdf, sizeof(dev->bdf), "%s", bdf);
	group_id = iommu_group_of(bdf);
	if (group_id < 0)
		return group_id;
	ret = open_container(dev, group_id);
	if (ret)
		goto fail;
	dev->device = ioctl(dev->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev->device < 0) {
		ret = -errno;
		goto fail;
	}
	if (ioctl(dev->device, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0 ||
	    ioctl(dev->device, VFIO_DEVICE_GET_IRQ_INFO, &irq) < 0) {
		ret = -errno;
		goto fail;
	}
	dev->cfg_offset = cfg.offset;
	dev->msix_count = irq.count;
	ret = map_bars(dev);
	if (ret)
		goto fail;
	ret = enable_bus_master(dev);
	if (ret)
		goto fail;
	return 0;
fail:
	vfio_close(dev);
	return ret;
}

void vfio_close(struct vfio_dev *dev)
{
	unsigned int i;

	for (i = 0; i < VFIO_MAX_BARS; i++) {
		if (dev->bars[i].map)
			munmap(dev->bars[i].map, dev->bars[i].size);
		dev->bars[i].map = NULL;
	}
	if (dev->device >= 0)
		close(dev->device);
	if (dev->group >= 0)
		close(dev->group);
	if (dev->container >= 0)
		close(dev->container);
	dev->device = dev->group = dev->container = -1;
}

int vfio_cfg_read(struct vfio_dev *dev, unsigned int off, void *buf, size_t len)
{
	ssize_t n = pread(dev->device, buf, len, (off_t)(dev->cfg_offset + off));

	return n == (ssize_t)len ? 0 : (n < 0 ? -errno : -EIO);
}

int vfio_cfg_write(struct vfio_dev *dev, unsigned int off, const void *buf, size_t len)
{
	ssize_t n = pwrite(dev->device, buf, len, (off_t)(dev->cfg_offset + off));

	return n == (ssize_t)len ? 0 : (n < 0 ? -errno : -EIO);
}

int vfio_dma_map(struct vfio_dev *dev, void *vaddr, size_t size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)vaddr,
		.iova = (uintptr_t)vaddr,
		.size = size,
	};

	return ioctl(dev->container, VFIO_IOMMU_MAP_DMA, &m) < 0 ? -errno : 0;
}

int vfio_dma_unmap(struct vfio_dev *dev, void *vaddr, size_t size)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u), .iova = (uintptr_t)vaddr, .size = size,
	};

	return ioctl(dev->container, VFIO_IOMMU_UNMAP_DMA, &u) < 0 ? -errno : 0;
}

int vfio_msix_enable(struct vfio_dev *dev, const int *fds, unsigned int n)
{
	size_t sz = sizeof(struct vfio_irq_set) + n * sizeof(int);
	struct vfio_irq_set *set;
	int ret = 0;

	if (n > dev->msix_count)
		return -EINVAL;
	set = calloc(1, sz);
	if (!set)
		return -ENOMEM;
	set->argsz = (uint32_t)sz;
	set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	set->index = VFIO_PCI_MSIX_IRQ_INDEX;
	set->start = 0;
	set->count = n;
	memcpy(set->data, fds, n * sizeof(int));
	if (ioctl(dev->device, VFIO_DEVICE_SET_IRQS, set) < 0)
		ret = -errno;
	free(set);
	return ret;
}

int vfio_msix_disable(struct vfio_dev *dev)
{
	struct vfio_irq_set set = {
		.argsz = sizeof(set),
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
		.index = VFIO_PCI_MSIX_IRQ_INDEX,
		.start = 0,
		.count = 0,
	};

	return ioctl(dev->device, VFIO_DEVICE_SET_IRQS, &set) < 0 ? -errno : 0;
}

int vfio_reset(struct vfio_dev *dev)
{
	return ioctl(dev->device, VFIO_DEVICE_RESET) < 0 ? -errno : 0;
}
