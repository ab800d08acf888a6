/*
 * virtio_pci.h: the modern virtio PCI transport over a VFIO device: find the
 * capability regions, drive the status handshake, negotiate features, set up
 * queues. Knows nothing about networking or ring contents.
 */
#ifndef LIBOS_NET_VIRTIO_PCI_H
#define LIBOS_NET_VIRTIO_PCI_H

#include <linux/virtio_config.h>
#include <linux/virtio_pci.h>
#include <stddef.h>
#include <stdint.h>

#include "../vfio/vfio.h"

struct vpci {
	struct vfio_dev *dev;
	volatile struct virtio_pci_common_cfg *common;
	volatile uint8_t *notify_base;
	uint32_t notify_mult;
	uint32_t notify_len; /* bytes of the notify capability: every doorbell must lie inside */
	volatile uint8_t *isr;
	volatile uint8_t *devcfg;
	uint32_t devcfg_len; /* bytes of the device configuration the capability covers */
};

/*
 * Find the capabilities. -ENODEV when one is missing or its BAR is not mapped; -EINVAL
 * when one is shorter than the structure it must hold (a device that contradicts itself).
 */
int vpci_init(struct vpci *vp, struct vfio_dev *dev);
/* Whether the device configuration covers [off, off + len): check before reading a field. */
static inline int vpci_devcfg_has(const struct vpci *vp, size_t off, size_t len)
{
	return off <= vp->devcfg_len && len <= vp->devcfg_len - off;
}
/* Reset the device and wait until it reads back 0. */
int vpci_reset(struct vpci *vp);
void vpci_add_status(struct vpci *vp, uint8_t bits);
uint8_t vpci_status(struct vpci *vp);
uint64_t vpci_device_features(struct vpci *vp);
/* Writes the driver features, sets FEATURES_OK and checks the device kept it. */
int vpci_set_features(struct vpci *vp, uint64_t features);
uint16_t vpci_num_queues(struct vpci *vp);
uint16_t vpci_queue_max(struct vpci *vp, uint16_t q);
/*
 * Program and enable queue q; *notify is its doorbell. -EIO when the device refuses the
 * MSI-X vector, -EINVAL when its queue_notify_off puts the doorbell (a 16-bit write)
 * outside the notify capability; the queue is not enabled then.
 */
int vpci_queue_setup(struct vpci *vp, uint16_t q, uint16_t size, uint64_t desc, uint64_t driver,
		     uint64_t device, uint16_t msix_vector, volatile uint16_t **notify);
int vpci_set_config_vector(struct vpci *vp, uint16_t vector);

#endif
