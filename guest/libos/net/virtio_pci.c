/*
 * virtio_pci.c: capability parsing and common-configuration access for modern
 * virtio PCI devices (virtio 1.x, section 4.1). All register access goes
 * through volatile pointers into the mapped BARs with the width the spec
 * gives each field; 64-bit fields are written as two 32-bit halves.
 *
 * What the device says about its own layout is checked before it is used: each
 * capability must lie inside its BAR and be long enough for its structure, and a
 * queue's doorbell inside the notify capability. Fields of the device-specific
 * configuration are checked by their reader (vpci_devcfg_has).
 */
#include "virtio_pci.h"

#include <errno.h>
#include <stdbool.h>
#include <time.h>

#include "../base/defs.h"

#define PCI_STATUS 0x06
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CAP_PTR 0x34
#define PCI_CAP_ID_VNDR 0x09

static volatile uint8_t *cap_map(struct vpci *vp, const struct virtio_pci_cap *cap)
{
	struct vfio_bar *bar;

	if (cap->bar >= VFIO_MAX_BARS)
		return NULL;
	bar = &vp->dev->bars[cap->bar];
	if (!bar->map || (uint64_t)cap->offset + cap->length > bar->size)
		return NULL;
	return (volatile uint8_t *)bar->map + cap->offset;
}

/* The smallest length each capability type must have to be usable. */
static uint32_t cap_min_len(uint8_t type)
{
	switch (type) {
	case VIRTIO_PCI_CAP_COMMON_CFG:
		return sizeof(struct virtio_pci_common_cfg);
	case VIRTIO_PCI_CAP_NOTIFY_CFG:
		return sizeof(uint16_t); /* one doorbell */
	case VIRTIO_PCI_CAP_ISR_CFG:
		return 1;
	default:
		return 0;
	}
}

int vpci_init(struct vpci *vp, struct vfio_dev *dev)
{
	uint16_t status;
	uint8_t pos;
	int guard = 0, ret;
	bool too_short = false;

	vp->dev = dev;
	vp->common = NULL;
	vp->notify_base = vp->isr = vp->devcfg = NULL;
	ret = vfio_cfg_read(dev, PCI_STATUS, &status, sizeof(status));
	if (ret)
		return ret;
	if (!(status & PCI_STATUS_CAP_LIST))
		return -ENODEV;
	ret = vfio_cfg_read(dev, PCI_CAP_PTR, &pos, 1);
	if (ret)
		return ret;
	/* a malformed list could loop forever; 48 capabilities fit in config space */
	while (pos && guard++ < 48) {
		struct virtio_pci_notify_cap ncap;
		struct virtio_pci_cap *cap = &ncap.cap;

		ret = vfio_cfg_read(dev, pos & ~3u, &ncap, sizeof(ncap));
		if (ret)
			return ret;
		if (cap->cap_vndr == PCI_CAP_ID_VNDR) {
			volatile uint8_t *p = cap_map(vp, cap);

			/* unusable: skip it, a later capability of the same type may do */
			if (cap->length < cap_min_len(cap->cfg_type)) {
				too_short = true;
				p = NULL;
			}
			if (!p) {
				pos = cap->cap_next;
				continue;
			}
			switch (cap->cfg_type) {
			case VIRTIO_PCI_CAP_COMMON_CFG:
				if (!vp->common)
					vp->common = (volatile struct virtio_pci_common_cfg *)p;
				break;
			case VIRTIO_PCI_CAP_NOTIFY_CFG:
				if (!vp->notify_base) {
					vp->notify_base = p;
					vp->notify_mult = ncap.notify_off_multiplier;
					vp->notify_len = cap->length;
				}
				break;
			case VIRTIO_PCI_CAP_ISR_CFG:
				if (!vp->isr)
					vp->isr = p;
				break;
			case VIRTIO_PCI_CAP_DEVICE_CFG:
				if (!vp->devcfg) {
					vp->devcfg = p;
					vp->devcfg_len = cap->length;
				}
				break;
			}
		}
		pos = cap->cap_next;
	}
	if (!vp->common || !vp->notify_base || !vp->isr || !vp->devcfg)
		return too_short ? -EINVAL : -ENODEV; /* -ENODEV: not a modern virtio device */
	return 0;
}

int vpci_reset(struct vpci *vp)
{
	struct timespec ts = { 0, 100000 };
	int i;

	vp->common->device_status = 0;
	for (i = 0; i < 10000; i++) {
		if (vp->common->device_status == 0)
			return 0;
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}

void vpci_add_status(struct vpci *vp, uint8_t bits)
{
	vp->common->device_status = (uint8_t)(vp->common->device_status | bits);
}

uint8_t vpci_status(struct vpci *vp)
{
	return vp->common->device_status;
}

uint64_t vpci_device_features(struct vpci *vp)
{
	uint64_t lo, hi;

	vp->common->device_feature_select = 0;
	lo = vp->common->device_feature;
	vp->common->device_feature_select = 1;
	hi = vp->common->device_feature;
	return lo | hi << 32;
}

int vpci_set_features(struct vpci *vp, uint64_t features)
{
	vp->common->guest_feature_select = 0;
	vp->common->guest_feature = (uint32_t)features;
	vp->common->guest_feature_select = 1;
	vp->common->guest_feature = (uint32_t)(features >> 32);
	vpci_add_status(vp, VIRTIO_CONFIG_S_FEATURES_OK);
	return (vpci_status(vp) & VIRTIO_CONFIG_S_FEATURES_OK) ? 0 : -ENOTSUP;
}

uint16_t vpci_num_queues(struct vpci *vp)
{
	return vp->common->num_queues;
}

uint16_t vpci_queue_max(struct vpci *vp, uint16_t q)
{
	vp->common->queue_select = q;
	return vp->common->queue_size;
}

static void write64(volatile uint32_t *lo, volatile uint32_t *hi, uint64_t v)
{
	*lo = (uint32_t)v;
	*hi = (uint32_t)(v >> 32);
}

int vpci_queue_setup(struct vpci *vp, uint16_t q, uint16_t size, uint64_t desc, uint64_t driver,
		     uint64_t device, uint16_t msix_vector, volatile uint16_t **notify)
{
	volatile struct virtio_pci_common_cfg *c = vp->common;
	uint64_t off;

	c->queue_select = q;
	c->queue_size = size;
	write64(&c->queue_desc_lo, &c->queue_desc_hi, desc);
	write64(&c->queue_avail_lo, &c->queue_avail_hi, driver);
	write64(&c->queue_used_lo, &c->queue_used_hi, device);
	c->queue_msix_vector = msix_vector;
	/* reading it back tells whether the device accepted the vector */
	if (c->queue_msix_vector != msix_vector)
		return -EIO;
	/* 16 bits times 32 cannot wrap in 64; the 2-byte write must fit the capability */
	off = (uint64_t)c->queue_notify_off * vp->notify_mult;
	if (off > vp->notify_len || vp->notify_len - off < sizeof(uint16_t))
		return -EINVAL;
	c->queue_enable = 1;
	*notify = (volatile uint16_t *)(vp->notify_base + off);
	return 0;
}

int vpci_set_config_vector(struct vpci *vp, uint16_t vector)
{
	vp->common->msix_config = vector;
	return vp->common->msix_config == vector ? 0 : -EIO;
}
