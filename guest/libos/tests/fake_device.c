/*
 * fake_device.c: a virtio-net device in plain memory, for host-side tests of the driver
 * (no VFIO, no IOMMU, no QEMU). A test #includes it after the driver's own sources, so
 * it can reach the driver's internals; it is never compiled alone.
 *
 * Two halves:
 *  - The VFIO calls the driver makes (vfio/vfio.h), answered from a PCI configuration
 *    space and one BAR held in memory. The capabilities (common, notify, ISR, device
 *    configuration) follow a layout a test may spoil through fdev_pci before vnet_open.
 *    DMA maps are recorded, and the device refuses to touch an address the driver never
 *    mapped, as an IOMMU would.
 *  - The device's side of a split ring (struct fdq): take what the driver made available,
 *    write used entries with any id and length, publish them. Everything a misbehaving
 *    device could write is within reach of a test.
 *
 * The common configuration is plain memory, so a register reads back what was last
 * written to it whatever queue_select says, and the 32-bit device_feature word answers
 * both halves of the feature set: the high 32 feature bits mirror the low 32 (bits 0 and 1
 * give VERSION_1 and ACCESS_PLATFORM, bit 28 gives RSS; the low bits they also set are
 * ones the driver does not ask for).
 *
 * One device exists at a time (fdev_pci is what the next vfio_open finds). Nothing here
 * is thread-safe except what the control-queue tests do through fdq.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define FDEV_BAR_SIZE 0x4000u
#define FDEV_COMMON_OFF 0x0000u
#define FDEV_NOTIFY_OFF 0x1000u
#define FDEV_ISR_OFF 0x2000u
#define FDEV_DEVCFG_OFF 0x3000u
/* DMA regions start here: inside AddressSanitizer's low application memory on x86-64 */
#define FDEV_IOVA_BASE 0x20000000ull
#define FDEV_MAX_MAPS 16

/* Low feature word: VERSION_1 and ACCESS_PLATFORM mirrored from bits 0 and 1 (see above). */
#define FDEV_F_BASE                                                                      \
	((1u << 0) | (1u << 1) | (1u << VIRTIO_NET_F_MAC) | (1u << VIRTIO_NET_F_STATUS) | \
	 (1u << VIRTIO_NET_F_MRG_RXBUF) | (1u << VIRTIO_RING_F_EVENT_IDX))
#define FDEV_F_CTRL (1u << VIRTIO_NET_F_CTRL_VQ)
#define FDEV_F_MQ (1u << VIRTIO_NET_F_MQ)
#define FDEV_F_RSS (1u << (VIRTIO_NET_F_RSS - 32))

struct fdev_pci {
	uint32_t features;      /* the device_feature word (see the header) */
	uint16_t queue_size;    /* what queue_size reads before the driver writes it */
	uint16_t num_queues;
	uint16_t notify_off;    /* queue_notify_off, the same for every queue */
	uint32_t notify_mult;
	uint32_t notify_len;    /* length of the notify capability */
	uint32_t notify_at;     /* its offset in the BAR */
	uint32_t devcfg_len;    /* length of the device configuration capability */
	uint32_t devcfg_at;     /* its offset in the BAR */
	uint16_t max_pairs;
	uint32_t common_len;
};

struct fdev_map {
	uint64_t iova, size;
};

struct fdev {
	struct fdev_pci pci;
	uint8_t cfg[256];
	uint8_t *bar;
	struct fdev_map maps[FDEV_MAX_MAPS];
	unsigned int nmaps;
	unsigned int opens;
};

static struct fdev fdev;

/* A device that a correct driver brings up with one queue pair and no control queue. */
static void fdev_defaults(void)
{
	memset(&fdev.pci, 0, sizeof(fdev.pci));
	fdev.pci.features = FDEV_F_BASE;
	fdev.pci.queue_size = 16;
	fdev.pci.num_queues = 3;
	fdev.pci.notify_mult = 4;
	fdev.pci.notify_len = 0x1000;
	fdev.pci.notify_at = FDEV_NOTIFY_OFF;
	fdev.pci.devcfg_len = sizeof(struct virtio_net_config);
	fdev.pci.devcfg_at = FDEV_DEVCFG_OFF;
	fdev.pci.max_pairs = 1;
	fdev.pci.common_len = sizeof(struct virtio_pci_common_cfg);
}

static void put_cap(uint8_t *c, uint8_t next, uint8_t type, uint32_t off, uint32_t len,
		    uint8_t cap_len)
{
	struct virtio_pci_cap cap = {
		.cap_vndr = 0x09, .cap_next = next, .cap_len = cap_len, .cfg_type = type,
		.bar = 0, .offset = off, .length = len,
	};

	memcpy(c, &cap, sizeof(cap));
}

/* --- the VFIO interface, as the driver sees it ------------------------------------ */

int vfio_open(struct vfio_dev *dev, const char *bdf)
{
	volatile struct virtio_pci_common_cfg *common;
	struct virtio_net_config nc;
	uint32_t mult = fdev.pci.notify_mult;
	uint16_t st = 0x10; /* capability list */

	memset(dev, 0, sizeof(*dev));
	snprintf(dev->bdf, sizeof(dev->bdf), "%s", bdf);
	fdev.bar = aligned_alloc(4096, FDEV_BAR_SIZE);
	if (!fdev.bar)
		return -ENOMEM;
	memset(fdev.bar, 0, FDEV_BAR_SIZE);
	memset(fdev.cfg, 0, sizeof(fdev.cfg));
	fdev.cfg[0] = 0xf4, fdev.cfg[1] = 0x1a, fdev.cfg[2] = 0x41, fdev.cfg[3] = 0x10;
	memcpy(fdev.cfg + 0x06, &st, 2);
	fdev.cfg[0x34] = 0x40;
	put_cap(fdev.cfg + 0x40, 0x50, VIRTIO_PCI_CAP_COMMON_CFG, FDEV_COMMON_OFF,
		fdev.pci.common_len, 16);
	put_cap(fdev.cfg + 0x50, 0x68, VIRTIO_PCI_CAP_NOTIFY_CFG, fdev.pci.notify_at,
		fdev.pci.notify_len, 20);
	memcpy(fdev.cfg + 0x50 + 16, &mult, 4);
	put_cap(fdev.cfg + 0x68, 0x78, VIRTIO_PCI_CAP_ISR_CFG, FDEV_ISR_OFF, 1, 16);
	put_cap(fdev.cfg + 0x78, 0, VIRTIO_PCI_CAP_DEVICE_CFG, fdev.pci.devcfg_at,
		fdev.pci.devcfg_len, 16);

	common = (volatile void *)(fdev.bar + FDEV_COMMON_OFF);
	common->device_feature = fdev.pci.features;
	common->num_queues = fdev.pci.num_queues;
	common->queue_size = fdev.pci.queue_size;
	common->queue_notify_off = fdev.pci.notify_off;
	memset(&nc, 0, sizeof(nc));
	memcpy(nc.mac, "\x02\x00\x00\x00\x00\x01", 6);
	nc.status = VIRTIO_NET_S_LINK_UP;
	nc.max_virtqueue_pairs = fdev.pci.max_pairs;
	nc.rss_max_key_size = 40;
	nc.rss_max_indirection_table_length = 128;
	nc.supported_hash_types = VIRTIO_NET_RSS_HASH_TYPE_IPv4 | VIRTIO_NET_RSS_HASH_TYPE_UDPv4;
	/* only what the capability claims: the rest of the BAR stays zero */
	if (fdev.pci.devcfg_at < FDEV_BAR_SIZE)
		memcpy(fdev.bar + fdev.pci.devcfg_at, &nc,
		       sizeof(nc) < FDEV_BAR_SIZE - fdev.pci.devcfg_at
			       ? sizeof(nc) : FDEV_BAR_SIZE - fdev.pci.devcfg_at);
	dev->bars[0].map = fdev.bar;
	dev->bars[0].size = FDEV_BAR_SIZE;
	dev->next_iova = FDEV_IOVA_BASE;
	fdev.nmaps = 0;
	fdev.opens++;
	return 0;
}

void vfio_close(struct vfio_dev *dev)
{
	free(fdev.bar);
	fdev.bar = NULL;
	dev->bars[0].map = NULL;
}

int vfio_cfg_read(struct vfio_dev *dev, unsigned int off, void *buf, size_t len)
{
	(void)dev;
	if (off > sizeof(fdev.cfg) || len > sizeof(fdev.cfg) - off)
		return -EINVAL;
	memcpy(buf, fdev.cfg + off, len);
	return 0;
}

int vfio_cfg_write(struct vfio_dev *dev, unsigned int off, const void *buf, size_t len)
{
	(void)dev, (void)off, (void)buf, (void)len;
	return 0;
}

int vfio_dma_map(struct vfio_dev *dev, void *vaddr, size_t size)
{
	(void)dev;
	if (fdev.nmaps == FDEV_MAX_MAPS)
		return -ENOSPC;
	fdev.maps[fdev.nmaps++] = (struct fdev_map){ (uint64_t)(uintptr_t)vaddr, size };
	return 0;
}

int vfio_dma_unmap(struct vfio_dev *dev, void *vaddr, size_t size)
{
	unsigned int i;

	(void)dev;
	for (i = 0; i < fdev.nmaps; i++) {
		if (fdev.maps[i].iova == (uint64_t)(uintptr_t)vaddr && fdev.maps[i].size == size) {
			fdev.maps[i] = fdev.maps[--fdev.nmaps];
			return 0;
		}
	}
	return -ENOENT;
}

int vfio_msix_enable(struct vfio_dev *dev, const int *fds, unsigned int n)
{
	(void)dev, (void)fds, (void)n;
	return 0;
}

int vfio_msix_disable(struct vfio_dev *dev)
{
	(void)dev;
	return 0;
}

int vfio_reset(struct vfio_dev *dev)
{
	(void)dev;
	return 0;
}

/* The IOMMU's view: is [iova, iova+len) inside one mapping? */
static bool fdev_mapped(uint64_t iova, uint64_t len)
{
	unsigned int i;

	for (i = 0; i < fdev.nmaps; i++)
		if (iova >= fdev.maps[i].iova && len <= fdev.maps[i].size &&
		    iova - fdev.maps[i].iova <= fdev.maps[i].size - len)
			return true;
	return false;
}

/* --- the device's side of a ring ---------------------------------------------------- */

struct fdq {
	struct virtq *vq;     /* the driver's queue: only its ring memory is read or written */
	uint16_t last_avail;  /* next available entry to take */
	uint16_t used_idx;    /* next used entry to write; published up to used->idx */
	uint8_t *last_hdr;    /* the header of the last frame received (fdq_rx_frame) */
};

/*
 * Strict (the default): a descriptor the device cannot use (not device-writable, too
 * short, or outside every DMA map) is the driver's bug, and aborts. A test that lets the
 * device scribble over the descriptor table clears it: the device then just refuses.
 */
static bool fdev_strict = true;

static void fdq_init(struct fdq *d, struct virtq *vq)
{
	d->vq = vq;
	d->last_avail = 0;
	d->used_idx = vq->used->idx;
	d->last_hdr = NULL;
}

static uint16_t fdq_avail(const struct fdq *d)
{
	return (uint16_t)(__atomic_load_n(&d->vq->avail->idx, __ATOMIC_ACQUIRE) - d->last_avail);
}

/* The next available chain's head, or -1 when the driver offered nothing (usable) more. */
static int fdq_take(struct fdq *d)
{
	uint16_t head;

	if (!fdq_avail(d))
		return -1;
	head = d->vq->avail->ring[d->last_avail % d->vq->size];
	if (head >= d->vq->size) { /* only a scribbled ring can say so */
		if (fdev_strict)
			abort();
		return -1;
	}
	d->last_avail++;
	return head;
}

/* Write a used entry, any id and length, without publishing it. */
static void fdq_put(struct fdq *d, uint32_t id, uint32_t len)
{
	struct vring_used_elem *e = &d->vq->used->ring[d->used_idx % d->vq->size];

	e->id = id;
	e->len = len;
	d->used_idx++;
}

static void fdq_publish(struct fdq *d)
{
	__atomic_store_n(&d->vq->used->idx, d->used_idx, __ATOMIC_RELEASE);
}

/* Descriptor id as a buffer the device may write len bytes into, or NULL. */
static uint8_t *fdq_writable(const struct fdq *d, uint16_t id, uint32_t len)
{
	const struct vring_desc *desc = &d->vq->desc[id];

	if (!(desc->flags & VRING_DESC_F_WRITE) || len > desc->len ||
	    !fdev_mapped(desc->addr, desc->len)) {
		if (fdev_strict) {
			fprintf(stderr, "fake device: descriptor %u not writable for %u bytes\n",
				id, len);
			abort();
		}
		return NULL;
	}
	return (uint8_t *)(uintptr_t)desc->addr;
}

#define FDQ_MAX_BUFS 64

/*
 * Receive a frame as virtio-net does with mergeable buffers: the 12-byte header, then the
 * frame, across as many available buffers as it takes (each filled before the next), all
 * published at once. nbufs_claim != 0 writes that num_buffers instead of the true count.
 * Returns the buffers used, or -1 when the driver offered too few usable ones (nothing is
 * written, nothing taken).
 */
static int fdq_rx_frame(struct fdq *d, const void *frame, size_t len, uint16_t nbufs_claim)
{
	const size_t hdr = sizeof(struct virtio_net_hdr_v1);
	size_t total = hdr + len, done = 0, chunk[FDQ_MAX_BUFS];
	uint8_t *buf[FDQ_MAX_BUFS], h[sizeof(struct virtio_net_hdr_v1)];
	uint16_t head[FDQ_MAX_BUFS], n = 0, nb, i;
	int got;

	/* take and check every buffer first, so a refusal leaves the ring as it was */
	while (done < total) {
		if (n == FDQ_MAX_BUFS || (got = fdq_take(d)) < 0)
			goto refuse;
		head[n] = (uint16_t)got;
		chunk[n] = d->vq->desc[got].len;
		if (chunk[n] > total - done)
			chunk[n] = total - done;
		buf[n] = fdq_writable(d, head[n], (uint32_t)chunk[n]);
		n++;
		if (!buf[n - 1] || !chunk[n - 1])
			goto refuse;
		done += chunk[n - 1];
	}
	memset(h, 0, sizeof(h));
	nb = nbufs_claim ? nbufs_claim : n;
	memcpy(h + offsetof(struct virtio_net_hdr_v1, num_buffers), &nb, 2);
	for (done = 0, i = 0; i < n; i++) {
		size_t k;

		/* the header goes into the stream first, then the frame's bytes */
		for (k = 0; k < chunk[i]; k++, done++)
			buf[i][k] = done < hdr ? h[done] : ((const uint8_t *)frame)[done - hdr];
		fdq_put(d, head[i], (uint32_t)chunk[i]);
	}
	d->last_hdr = buf[0];
	fdq_publish(d);
	return n;
refuse:
	d->last_avail = (uint16_t)(d->last_avail - n);
	return -1;
}

/* Complete up to max transmitted chains (a transmit queue), publishing once. */
static unsigned int fdq_complete(struct fdq *d, unsigned int max)
{
	unsigned int n = 0;
	int head;

	while (n < max && (head = fdq_take(d)) >= 0) {
		fdq_put(d, (uint32_t)head, 0);
		n++;
	}
	fdq_publish(d);
	return n;
}

__attribute__((unused)) static unsigned int fdq_complete_all(struct fdq *d)
{
	return fdq_complete(d, UINT_MAX);
}
