/*
 * vnet.c: bring a virtio-net device up from user space and move frames.
 *
 * Bring-up follows virtio 1.x section 3.1: reset, ACKNOWLEDGE, DRIVER, feature
 * negotiation, queue setup, DRIVER_OK, then control-queue commands for the queue
 * count and RSS. Setup unwinds in reverse on any failure (vnet_close handles a
 * half-built device). Queue layout: rx q = 2q, tx q = 2q+1, control = 2*max.
 * MSI-X: vector 0 config, 1+2q rx q, 2+2q tx q, each to its own eventfd.
 *
 * Frames are copied out of receive buffers at once, so buffers go back to the
 * scheme (rxbuf.c) right away and small packets never pin a large buffer.
 *
 * The device is not trusted: what it says about itself is checked at bring-up
 * (configuration length against the fields read, queue indexes against its queue
 * count), what it writes into rings is checked by virtq.h and, for frames, by the
 * receive path below ("Receiving"); every refusal is counted in the stats. A ring
 * the device broke is reported broken and its calls fail with -EIO.
 */
#include <errno.h>
#include <linux/virtio_config.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "../base/defs.h"
#include "../mem/dma.h"
#include "../mem/rxbuf.h"
#include "../vfio/vfio.h"
#include "libos/vnet.h"
#include "virtio_pci.h"
#include "virtq.h"

#define VNET_HDR_LEN sizeof(struct virtio_net_hdr_v1)
#define TX_SLOT 2048
/*
 * The largest ring whose used ring has no element across a 4 KiB page (element i sits
 * at 4 + 8 * i). Behind its emulated IOMMU, QEMU 7.2 writes the part of an access
 * beyond a page to the wrong place (images/qemu/patches/0009 fixes it), so a used
 * element across pages that are not contiguous in guest memory got a stale length,
 * and mergeable frames fell apart. Rings in 2 MiB pages are contiguous and safe on
 * any QEMU; small_page_rings trusts a fixed QEMU instead.
 */
#define PAGE_RING 256
#define MAX_FRAME 1514
#define FEAT(bit) (1ULL << (bit))

/*
 * Nudging. QEMU's software RSS (used when its eBPF steering cannot load) receives a frame
 * on the tap queue of RX queue i and hands it to the queue RSS picks, j. When j has no
 * buffers, the frame waits on queue i's side and QEMU stops reading i's tap queue until
 * the driver kicks queue i, which it has no reason to do: i has buffers and, being cut off,
 * gets no traffic. The queue is then dead for good (a fuzz run from the peer did it). So a
 * queue that saw nothing for NUDGE_NS (polling) or for a whole wait (armed) gets its
 * doorbell rung; the device rechecks and flushes what it held. Idle queues pay one MMIO
 * write per NUDGE_NS.
 */
#define NUDGE_NS (10 * 1000 * 1000)
#define NUDGE_CHECK_POLLS 64 /* empty polls between clock reads */

/* what this driver can use; VERSION_1 and ACCESS_PLATFORM are required */
static const uint64_t WANTED = FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_F_ACCESS_PLATFORM) |
			       FEAT(VIRTIO_NET_F_MQ) | FEAT(VIRTIO_NET_F_CTRL_VQ) |
			       FEAT(VIRTIO_NET_F_RSS) | FEAT(VIRTIO_NET_F_MRG_RXBUF) |
			       FEAT(VIRTIO_RING_F_EVENT_IDX) | FEAT(VIRTIO_NET_F_MAC) |
			       FEAT(VIRTIO_NET_F_STATUS);

struct vnet_queue {
	struct virtq rx;
	struct virtq tx;
	uint8_t *tx_slots; /* one TX_SLOT per tx descriptor, header included */
	int rx_efd;
	int tx_efd;
	uint64_t rx_packets, rx_bytes, rx_errors, tx_packets, tx_bytes, tx_full, wakeups;
	uint64_t nudges, last_rx_ns; /* see "Nudging" above */
	unsigned int empty_polls;
	/* why frames were refused: a first buffer's length out of range, a num_buffers of 0
	 * or beyond what was published, a frame longer than the largest Ethernet frame; and
	 * used entries dropped to find the next frame's start again (see "Receiving") */
	uint64_t rx_err_len, rx_err_span, rx_err_big, rx_err_resync;
	uint16_t last_bad_nbufs;
	uint32_t last_bad_len;
	uint8_t frame[MAX_FRAME + 64]; /* reassembly of frames spanning strides */
} __cache_aligned;

struct vnet {
	struct vfio_dev dev;
	struct vpci vp;
	struct dma_region rings;
	struct rxbuf *rb;
	struct virtq ctrl;
	uint8_t *ctrl_buf;       /* CTRL_SLOTS slots of CTRL_SLOT bytes */
	unsigned int ctrl_busy;  /* bit s: slot s is in the device's hands */
	unsigned int ctrl_timeout_ms;
	uint64_t ctrl_stale;     /* completions of commands that had timed out */
	struct vnet_queue *q;
	int cfg_efd;
	uint64_t features;
	unsigned int nq, max_pairs;
	uint16_t max_ring;  /* the device's RX queue size (QEMU's rx_queue_size) */
	uint16_t ring_size; /* RX queues */
	uint16_t tx_size;   /* TX queues: the RX size, or less if the device caps TX lower */
	uint8_t mac[6];
	bool dev_open, driver_ok;
} __cache_aligned; /* aligned_alloc wants a size that is a multiple of the alignment */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* --- control queue ------------------------------------------------------------ */

/*
 * Each command in flight owns a slot of ctrl_buf (class and command at 0, the ack byte at
 * CTRL_ACK, the body from CTRL_BODY), and the slot is its cookie. A command that times
 * out keeps its slot until the device answers it, so the late answer can neither land
 * in a later command's bytes nor be taken for its completion: it frees its slot and is
 * counted in ctrl_stale.
 */
#define CTRL_SLOTS 4
#define CTRL_SLOT 1024
#define CTRL_ACK 8
#define CTRL_BODY 16
#define CTRL_TIMEOUT_MS 1000 /* QEMU answers at once; slow emulation gets a second */

static int ctrl_cmd(struct vnet *v, uint8_t cls, uint8_t cmd, const void *data, size_t len)
{
	uint8_t *slot, *done;
	struct vq_seg segs[3];
	uint64_t deadline;
	unsigned int s;
	uint32_t got;

	if (len > CTRL_SLOT - CTRL_BODY)
		return -EINVAL;
	for (s = 0; s < CTRL_SLOTS && (v->ctrl_busy & (1u << s)); s++)
		;
	if (s == CTRL_SLOTS)
		return -EBUSY; /* every slot held by a command the device never answered */
	slot = v->ctrl_buf + (size_t)s * CTRL_SLOT;
	slot[0] = cls;
	slot[1] = cmd;
	memcpy(slot + CTRL_BODY, data, len);
	slot[CTRL_ACK] = 0xff;
	segs[0] = (struct vq_seg){ dma_addr(slot), 2 };
	segs[1] = (struct vq_seg){ dma_addr(slot + CTRL_BODY), (uint32_t)len };
	segs[2] = (struct vq_seg){ dma_addr(slot + CTRL_ACK), 1 };
	if (virtq_add_chain(&v->ctrl, segs, 2, 1, slot))
		return v->ctrl.broken ? -EIO : -ENOSPC;
	v->ctrl_busy |= 1u << s;
	virtq_kick(&v->ctrl);
	deadline = now_ns() + (uint64_t)v->ctrl_timeout_ms * 1000000u;
	for (;;) {
		done = virtq_get(&v->ctrl, &got);
		if (done) {
			/* a cookie is a slot we handed out, never a device value */
			v->ctrl_busy &= ~(1u << ((size_t)(done - v->ctrl_buf) / CTRL_SLOT));
			if (done == slot)
				return READ_ONCE(slot[CTRL_ACK]) == VIRTIO_NET_OK ? 0 : -EIO;
			v->ctrl_stale++;
			continue;
		}
		if (v->ctrl.broken)
			return -EIO;
		if (now_ns() >= deadline)
			return -ETIMEDOUT;
		usleep(10);
	}
}

static int set_queue_pairs(struct vnet *v)
{
	uint16_t pairs = (uint16_t)v->nq;

	if (!(v->features & FEAT(VIRTIO_NET_F_MQ)))
		return v->nq == 1 ? 0 : -ENOTSUP;
	return ctrl_cmd(v, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &pairs,
			sizeof(pairs));
}

/* A fixed key (the one commonly used as the Toeplitz default), 40 bytes. */
static const uint8_t rss_key[40] = {
	0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
	0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
	0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
};

/* the device configuration's fields were checked against its length (check_devcfg) */
static int set_rss(struct vnet *v)
{
	const volatile struct virtio_net_config *nc = (const volatile void *)v->vp.devcfg;
	unsigned int entries = 128, i, key_len = nc->rss_max_key_size;
	uint8_t buf[512];
	size_t off = 0;
	uint32_t types = VIRTIO_NET_RSS_HASH_TYPE_IPv4 | VIRTIO_NET_RSS_HASH_TYPE_TCPv4 |
			 VIRTIO_NET_RSS_HASH_TYPE_UDPv4;
	uint16_t mask, unclassified = 0, max_tx = (uint16_t)v->nq;

	if (nc->rss_max_indirection_table_length < entries)
		entries = nc->rss_max_indirection_table_length;
	if (key_len > sizeof(rss_key))
		key_len = sizeof(rss_key);
	if (!entries || (entries & (entries - 1)) || !key_len)
		return -ENOTSUP;
	types &= nc->supported_hash_types;
	mask = (uint16_t)(entries - 1);
	/* struct virtio_net_rss_config, laid out by hand: its table is variable */
	memcpy(buf + off, &types, 4), off += 4;
	memcpy(buf + off, &mask, 2), off += 2;
	memcpy(buf + off, &unclassified, 2), off += 2;
	for (i = 0; i < entries; i++) {
		uint16_t rxq = (uint16_t)(i % v->nq); /* receive queue number, not vq index */

		memcpy(buf + off, &rxq, 2), off += 2;
	}
	memcpy(buf + off, &max_tx, 2), off += 2;
	buf[off++] = (uint8_t)key_len;
	memcpy(buf + off, rss_key, key_len), off += key_len;
	return ctrl_cmd(v, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, buf, off);
}

/* --- bring-up ------------------------------------------------------------------ */

static int negotiate(struct vnet *v, const char **why)
{
	uint64_t offered = vpci_device_features(&v->vp);
	const uint64_t required = FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_F_ACCESS_PLATFORM);

	if ((offered & required) != required) {
		*why = "device lacks VERSION_1 or ACCESS_PLATFORM (needs a modern device "
		       "with iommu_platform=on)";
		return -ENOTSUP;
	}
	v->features = offered & WANTED;
	/* MQ and RSS are commands on the control queue: without it, neither */
	if (!(v->features & FEAT(VIRTIO_NET_F_CTRL_VQ)))
		v->features &= ~(FEAT(VIRTIO_NET_F_MQ) | FEAT(VIRTIO_NET_F_RSS));
	if (vpci_set_features(&v->vp, v->features)) {
		*why = "device refused the negotiated features (FEATURES_OK cleared)";
		return -ENOTSUP;
	}
	return 0;
}

/* The fields of struct virtio_net_config the negotiated features make us read. */
#define CFG_END(field) (offsetof(struct virtio_net_config, field) + \
			sizeof(((struct virtio_net_config *)0)->field))

static int check_devcfg(struct vnet *v, const char **why)
{
	static const struct {
		unsigned int bit;
		size_t end;
		const char *why;
	} need[] = {
		{ VIRTIO_NET_F_MAC, CFG_END(mac), "the device configuration is too short for its "
		  "mac (VIRTIO_NET_F_MAC)" },
		{ VIRTIO_NET_F_STATUS, CFG_END(status), "the device configuration is too short "
		  "for its status (VIRTIO_NET_F_STATUS)" },
		{ VIRTIO_NET_F_MQ, CFG_END(max_virtqueue_pairs), "the device configuration is too "
		  "short for its max_virtqueue_pairs (VIRTIO_NET_F_MQ)" },
		{ VIRTIO_NET_F_RSS, CFG_END(supported_hash_types), "the device configuration is "
		  "too short for its RSS limits (VIRTIO_NET_F_RSS)" },
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(need); i++) {
		if ((v->features & FEAT(need[i].bit)) && !vpci_devcfg_has(&v->vp, 0, need[i].end)) {
			*why = need[i].why;
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Queue indexes from the device's figures, in unsigned int: the control queue sits at
 * 2 * max_virtqueue_pairs, which is 65536 for the spec's largest value, one past what a
 * 16-bit queue index (and num_queues) can name.
 */
static int check_queue_count(struct vnet *v, const char **why)
{
	unsigned int num = vpci_num_queues(&v->vp);

	if (v->max_pairs < 1 || v->max_pairs > 0x8000) {
		*why = "the device's max_virtqueue_pairs is out of the spec's range 1..0x8000";
		return -EINVAL;
	}
	if ((v->features & FEAT(VIRTIO_NET_F_CTRL_VQ)) && 2u * v->max_pairs >= num) {
		*why = "the device's max_virtqueue_pairs puts the control queue (2 x pairs) "
		       "beyond its num_queues";
		return -EINVAL;
	}
	if (2u * v->nq > num) {
		*why = "the device has fewer queues (num_queues) than the queue pairs asked for";
		return -EINVAL;
	}
	return 0;
}

static int setup_queue(struct vnet *v, struct virtq *vq, unsigned int idx, uint16_t size,
		       uint16_t vector, const char **why)
{
	bool ev = v->features & FEAT(VIRTIO_RING_F_EVENT_IDX);
	volatile uint16_t *notify = NULL;
	int ret;

	ret = virtq_alloc(vq, &v->rings, size, (uint16_t)idx, ev);
	if (ret)
		return ret;
	ret = vpci_queue_setup(&v->vp, (uint16_t)idx, size, dma_addr(vq->desc),
			       dma_addr(vq->avail), dma_addr(vq->used), vector, &notify);
	if (ret == -EINVAL)
		*why = "the device's queue_notify_off puts a doorbell outside its notify capability";
	else if (ret)
		*why = "the device refused a queue's MSI-X vector";
	if (ret)
		return ret;
	vq->notify = notify;
	return 0;
}

static size_t rings_bytes(unsigned int pairs, unsigned int rx, unsigned int tx)
{
	/* rx and tx rings, the TX slots, the control queue (<= 64 entries) and its slots */
	return pairs * (virtq_bytes(rx) + virtq_bytes(tx) + (size_t)tx * TX_SLOT) +
	       virtq_bytes(64) + CTRL_SLOTS * CTRL_SLOT + 4096u;
}

/*
 * The ring memory, in huge pages when the guest has them: a ring over PAGE_RING
 * entries needs them (see PAGE_RING) unless small_pages_ok. Without, the device's
 * size is cut to PAGE_RING unless the caller asked for more, which is then an error.
 */
static int map_rings(struct vnet *v, bool asked, bool small_pages_ok, const char **why)
{
	uint16_t txmax = vpci_queue_max(&v->vp, 1);
	int ret;

	for (;;) {
		/* QEMU lets rx_queue_size reach 1024 while TX stays at 256 */
		v->tx_size = v->ring_size < txmax ? v->ring_size : txmax;
		ret = dma_region_create(&v->rings, &v->dev,
					rings_bytes(v->nq, v->ring_size, v->tx_size), true);
		if (ret) {
			*why = "mapping ring memory for DMA (VFIO_IOMMU_MAP_DMA)";
			return ret;
		}
		if (v->ring_size <= PAGE_RING || v->rings.huge || small_pages_ok)
			return 0;
		dma_region_destroy(&v->rings);
		if (asked) {
			*why = "rings over 256 entries need huge pages, and the guest has none free "
			       "(see PAGE_RING in net/vnet.c); reserve some, use 256 or less, or "
			       "--rings-in-small-pages on the project's QEMU";
			return -EINVAL;
		}
		v->ring_size = PAGE_RING;
	}
}

static int open_queues(struct vnet *v, const char **why)
{
	unsigned int i;
	int ret, *fds;
	unsigned int nvec = 1 + 2 * v->nq;

	v->cfg_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	fds = calloc(nvec, sizeof(int));
	if (!fds || v->cfg_efd < 0) {
		free(fds);
		*why = "eventfd";
		return -ENOMEM;
	}
	fds[0] = v->cfg_efd;
	for (i = 0; i < v->nq; i++) {
		struct vnet_queue *q = &v->q[i];

		q->rx_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		q->tx_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		fds[1 + 2 * i] = q->rx_efd;
		fds[2 + 2 * i] = q->tx_efd;
		if (q->rx_efd < 0 || q->tx_efd < 0) {
			free(fds);
			*why = "eventfd";
			return -EMFILE;
		}
	}
	ret = vfio_msix_enable(&v->dev, fds, nvec);
	free(fds);
	if (ret) {
		*why = "routing MSI-X vectors to eventfds (VFIO_DEVICE_SET_IRQS)";
		return ret;
	}
	if (vpci_set_config_vector(&v->vp, 0)) {
		*why = "device refused the config MSI-X vector";
		return -EIO;
	}
	for (i = 0; i < v->nq; i++) {
		struct vnet_queue *q = &v->q[i];

		*why = "setting up a queue pair";
		ret = setup_queue(v, &q->rx, 2 * i, v->ring_size, (uint16_t)(1 + 2 * i), why);
		if (!ret)
			ret = setup_queue(v, &q->tx, 2 * i + 1, v->tx_size, (uint16_t)(2 + 2 * i),
					  why);
		q->tx_slots = dma_alloc(&v->rings, (size_t)TX_SLOT * v->tx_size, 64);
		if (ret || !q->tx_slots)
			return ret ? ret : -ENOMEM;
		virtq_disarm(&q->tx); /* completions are reaped when sending, never signalled */
	}
	if (v->features & FEAT(VIRTIO_NET_F_CTRL_VQ)) {
		/* below num_queues (check_queue_count), so it fits 16 bits */
		unsigned int cidx = 2 * v->max_pairs;
		uint16_t csize = vpci_queue_max(&v->vp, (uint16_t)cidx);

		if (csize > 64)
			csize = 64;
		*why = "setting up the control queue";
		ret = setup_queue(v, &v->ctrl, cidx, csize, VIRTIO_MSI_NO_VECTOR, why);
		v->ctrl_buf = dma_alloc(&v->rings, CTRL_SLOTS * CTRL_SLOT, 64);
		if (ret || !v->ctrl_buf)
			return ret ? ret : -ENOMEM;
	}
	return 0;
}

int vnet_open(struct vnet **out, const struct vnet_config *cfg, const char **why)
{
	const volatile struct virtio_net_config *nc;
	struct rxbuf_cfg rcfg;
	struct vnet *v;
	uint16_t maxring;
	const char *dummy;
	unsigned int i;
	int ret;

	why = why ? why : &dummy;
	*why = "";
	v = aligned_alloc(CACHE_LINE, sizeof(*v));
	if (!v)
		return -ENOMEM;
	memset(v, 0, sizeof(*v));
	v->cfg_efd = -1;
	v->ctrl_timeout_ms = CTRL_TIMEOUT_MS;
	ret = vfio_open(&v->dev, cfg->pci_addr);
	if (ret) {
		*why = "opening the device through VFIO (is it bound to vfio-pci?)";
		free(v);
		return ret;
	}
	v->dev_open = true;
	ret = vpci_init(&v->vp, &v->dev);
	if (ret) {
		*why = ret == -EINVAL ? "a virtio PCI capability is shorter than its structure"
				      : "finding the virtio PCI capabilities (not a modern virtio "
					"device?)";
		goto fail;
	}
	ret = vpci_reset(&v->vp);
	if (ret) {
		*why = "resetting the device";
		goto fail;
	}
	vpci_add_status(&v->vp, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	vpci_add_status(&v->vp, VIRTIO_CONFIG_S_DRIVER);
	ret = negotiate(v, why);
	if (!ret)
		ret = check_devcfg(v, why);
	if (ret)
		goto fail;
	nc = (const volatile void *)v->vp.devcfg;
	v->max_pairs = (v->features & FEAT(VIRTIO_NET_F_MQ)) ? nc->max_virtqueue_pairs : 1;
	v->nq = cfg->queue_pairs ? cfg->queue_pairs : 1;
	ret = check_queue_count(v, why);
	if (ret)
		goto fail;
	if (v->nq > v->max_pairs) {
		*why = "more queue pairs asked for than the device has";
		ret = -EINVAL;
		goto fail;
	}
	/* without VIRTIO_NET_F_MAC the field means nothing: the MAC stays zero (unusable) */
	for (i = 0; i < 6 && (v->features & FEAT(VIRTIO_NET_F_MAC)); i++)
		v->mac[i] = nc->mac[i];
	maxring = vpci_queue_max(&v->vp, 0);
	v->max_ring = maxring;
	v->ring_size = cfg->ring_size ? (uint16_t)cfg->ring_size : maxring;
	if (!v->ring_size || v->ring_size > maxring || (v->ring_size & (v->ring_size - 1))) {
		*why = "ring size must be a power of two no larger than the device's";
		ret = -EINVAL;
		goto fail;
	}
	v->q = aligned_alloc(CACHE_LINE, sizeof(*v->q) * v->nq);
	ret = -ENOMEM;
	if (!v->q)
		goto fail;
	memset(v->q, 0, sizeof(*v->q) * v->nq);
	for (i = 0; i < v->nq; i++)
		v->q[i].rx_efd = v->q[i].tx_efd = -1;
	ret = map_rings(v, cfg->ring_size != 0, cfg->small_page_rings, why);
	if (ret)
		goto fail;
	ret = open_queues(v, why);
	if (ret)
		goto fail;
	memset(&rcfg, 0, sizeof(rcfg));
	rcfg.queues = v->nq;
	rcfg.ring_size = v->ring_size;
	if (cfg->scheme == VNET_RX_POOL) {
		rcfg.kind = RXBUF_POOL;
		rcfg.buf_size = cfg->buffer_size ? cfg->buffer_size : 16384;
		rcfg.stride = cfg->stride ? cfg->stride : 256;
		rcfg.pool_buffers = cfg->pool_buffers ? cfg->pool_buffers : 128;
		if (!(v->features & FEAT(VIRTIO_NET_F_MRG_RXBUF)) && rcfg.stride < MAX_FRAME + 12) {
			*why = "strides smaller than a frame need MRG_RXBUF, which the device lacks";
			ret = -ENOTSUP;
			goto fail;
		}
		if (rcfg.pool_buffers < rxbuf_min_pool_buffers(v->nq)) {
			*why = "the pool needs at least 2 buffers per queue pair";
			ret = -EINVAL;
			goto fail;
		}
	} else {
		rcfg.kind = RXBUF_FIXED;
		rcfg.buf_size = cfg->buffer_size ? cfg->buffer_size : 2048;
	}
	ret = rxbuf_create(&v->rb, &rcfg, &v->dev);
	if (ret) {
		*why = "creating the receive buffers";
		goto fail;
	}
	for (i = 0; i < v->nq; i++) {
		rxbuf_fill(v->rb, i, &v->q[i].rx);
		virtq_disarm(&v->q[i].rx);
	}
	vpci_add_status(&v->vp, VIRTIO_CONFIG_S_DRIVER_OK);
	v->driver_ok = true;
	for (i = 0; i < v->nq; i++)
		virtq_kick(&v->q[i].rx);
	ret = set_queue_pairs(v);
	if (ret) {
		*why = "setting the number of queue pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET)";
		goto fail;
	}
	if (cfg->rss && v->nq > 1 && (v->features & FEAT(VIRTIO_NET_F_RSS))) {
		ret = set_rss(v);
		if (ret) {
			*why = "configuring RSS (VIRTIO_NET_CTRL_MQ_RSS_CONFIG)";
			goto fail;
		}
	}
	*out = v;
	return 0;
fail:
	vnet_close(v);
	return ret;
}

void vnet_close(struct vnet *v)
{
	unsigned int i;

	if (!v)
		return;
	if (v->dev_open) {
		/* stop DMA before any memory it targets is unmapped (no common configuration
		 * found: the device was never touched) */
		if (v->vp.common)
			vpci_reset(&v->vp);
		vfio_msix_disable(&v->dev);
	}
	rxbuf_destroy(v->rb);
	if (v->q) {
		for (i = 0; i < v->nq; i++) {
			if (v->q[i].rx_efd >= 0)
				close(v->q[i].rx_efd);
			if (v->q[i].tx_efd >= 0)
				close(v->q[i].tx_efd);
			virtq_free(&v->q[i].rx);
			virtq_free(&v->q[i].tx);
		}
	}
	virtq_free(&v->ctrl);
	if (v->cfg_efd >= 0)
		close(v->cfg_efd);
	dma_region_destroy(&v->rings);
	free(v->q);
	if (v->dev_open)
		vfio_close(&v->dev);
	free(v);
}

/* --- data path -------------------------------------------------------------------- */

static void nudge(struct vnet_queue *vq, uint64_t now)
{
	virtq_nudge(&vq->rx);
	vq->nudges++;
	vq->last_rx_ns = now;
}

/*
 * Called every NUDGE_CHECK_POLLS empty polls. last_rx_ns is when the queue was last seen
 * quiet after an arrival or a nudge; 0 means "traffic since", so the quiet period starts
 * now.
 */
static void nudge_if_quiet(struct vnet_queue *vq)
{
	uint64_t now = now_ns();

	vq->empty_polls = 0;
	if (!vq->last_rx_ns)
		vq->last_rx_ns = now;
	else if (now - vq->last_rx_ns >= NUDGE_NS)
		nudge(vq, now);
}

/*
 * Receiving. With MRG_RXBUF a frame spans num_buffers used entries: the first starts with
 * the virtio-net header, the others hold frame bytes only. Nothing the device wrote is
 * trusted: each length is checked against the buffer it names, num_buffers against what
 * was published, and all of a frame's entries leave the ring with it whatever happens to
 * the frame, so a continuation is never read as a header.
 * Where a frame's extent is unknown (its first buffer too short to hold a header, so
 * num_buffers was never written; num_buffers 0 or beyond what was published; an entry
 * inside it that names no buffer) the driver resynchronises: it drops every entry up to
 * the used index it read before taking the frame, counting them in rx_err_resync. A
 * device publishes a frame's entries with one index update (QEMU moves the used index
 * once per frame, after writing all its entries), so that index is a frame boundary.
 */
static void rx_resync(struct vnet *v, unsigned int q, struct vnet_queue *vq, uint16_t end)
{
	uint32_t len;
	void *buf;

	/* at most end - last_used entries, which virtq_pending bounded by the ring */
	while (vq->rx.last_used != end) {
		uint16_t at = vq->rx.last_used;

		buf = virtq_get(&vq->rx, &len);
		if (buf) {
			rxbuf_release(v->rb, q, buf);
			vq->rx_err_resync++;
		} else if (vq->rx.last_used == at) {
			break; /* nothing there after all: the index went back, or the ring broke */
		}
	}
}

/*
 * Take one frame (the caller saw entries up to end published) and copy it into vq->frame.
 * Returns its length, or -1 when it was dropped; the reason is counted.
 */
static long rx_frame(struct vnet *v, unsigned int q, struct vnet_queue *vq, uint16_t end)
{
	size_t unit = rxbuf_unit(v->rb), flen = 0;
	uint16_t nbufs = 1, i;
	bool bad = false;
	uint32_t len;
	uint8_t *buf;

	buf = virtq_get(&vq->rx, &len);
	if (unlikely(!buf)) { /* named no buffer (counted by the ring): extent unknown */
		rx_resync(v, q, vq, end);
		return -1;
	}
	if (unlikely(len < VNET_HDR_LEN)) { /* no header written: num_buffers unknown */
		vq->rx_err_len++;
		vq->last_bad_len = len;
		rxbuf_release(v->rb, q, buf);
		rx_resync(v, q, vq, end);
		return -1;
	}
	if (v->features & FEAT(VIRTIO_NET_F_MRG_RXBUF)) {
		/* a buffer holds at least 64 bytes, so the header is inside it */
		memcpy(&nbufs, buf + offsetof(struct virtio_net_hdr_v1, num_buffers), 2);
		if (unlikely(!nbufs || nbufs - 1 > (uint16_t)(end - vq->rx.last_used))) {
			vq->rx_err_span++;
			vq->last_bad_nbufs = nbufs;
			rxbuf_release(v->rb, q, buf);
			rx_resync(v, q, vq, end);
			return -1;
		}
	}
	if (unlikely(len > unit)) {
		/* the header is there, so the frame's other entries are known: taken below */
		vq->rx_err_len++;
		vq->last_bad_len = len;
		bad = true;
	} else if (unlikely(len - VNET_HDR_LEN > sizeof(vq->frame))) {
		vq->rx_err_big++;
		bad = true;
	} else {
		flen = len - VNET_HDR_LEN;
		memcpy(vq->frame, buf + VNET_HDR_LEN, flen);
	}
	rxbuf_release(v->rb, q, buf);
	for (i = 1; i < nbufs; i++) {
		buf = virtq_get(&vq->rx, &len);
		if (unlikely(!buf)) { /* what follows may still be this frame's */
			rx_resync(v, q, vq, end);
			return -1;
		}
		if (!bad && (len > unit || flen + len > sizeof(vq->frame))) {
			vq->rx_err_big++;
			bad = true;
		}
		if (!bad) {
			memcpy(vq->frame + flen, buf, len);
			flen += len;
		}
		rxbuf_release(v->rb, q, buf);
	}
	return bad ? -1 : (long)flen;
}

int vnet_rx_burst(struct vnet *v, unsigned int q, unsigned int max, vnet_rx_fn fn, void *arg)
{
	struct vnet_queue *vq = &v->q[q];
	unsigned int n = 0, i;
	uint16_t pending;
	long flen;

	if (unlikely(vq->rx.broken))
		return -EIO;
	/* max frames delivered or dropped: bad traffic cannot keep the caller here */
	for (i = 0; i < max; i++) {
		pending = virtq_pending(&vq->rx);
		if (!pending)
			break;
		flen = rx_frame(v, q, vq, (uint16_t)(vq->rx.last_used + pending));
		if (unlikely(flen < 0)) {
			vq->rx_errors++;
			continue;
		}
		vq->rx_packets++;
		vq->rx_bytes += (uint64_t)flen;
		fn(arg, vq->frame, (size_t)flen);
		n++;
	}
	if (unlikely(vq->rx.broken))
		return n ? (int)n : -EIO;
	if (rxbuf_fill(v->rb, q, &vq->rx))
		virtq_kick(&vq->rx);
	if (n) {
		/* the clock is read once per NUDGE_CHECK_POLLS, so an arrival just marks the
		 * queue busy; nudge_if_quiet() then measures from its next reading */
		vq->empty_polls = 0;
		vq->last_rx_ns = 0;
	} else if (unlikely(++vq->empty_polls >= NUDGE_CHECK_POLLS))
		nudge_if_quiet(vq);
	return (int)n;
}

static void tx_reap(struct vnet_queue *vq)
{
	uint32_t len;
	uint16_t i;

	/* a ring's worth at most: entries that name nothing come back NULL, and are skipped */
	for (i = 0; i < vq->tx.size && virtq_has_used(&vq->tx); i++)
		virtq_get(&vq->tx, &len);
}

int vnet_tx(struct vnet *v, unsigned int q, const void *frame, size_t len)
{
	struct vnet_queue *vq = &v->q[q];
	uint16_t slot;
	uint8_t *p;

	if (unlikely(len > MAX_FRAME || len < 14))
		return -EINVAL;
	if (unlikely(vq->tx.broken))
		return -EIO;
	if (vq->tx.num_free < 1)
		tx_reap(vq);
	if (unlikely(!vq->tx.num_free)) {
		vq->tx_full++;
		return -EAGAIN;
	}
	/* the slot belongs to the descriptor the add will take: the free-list head, which
	 * lives in the driver's memory and is always inside the ring when num_free > 0 */
	slot = vq->tx.free_head;
	p = vq->tx_slots + (size_t)slot * TX_SLOT;
	memset(p, 0, VNET_HDR_LEN);
	memcpy(p + VNET_HDR_LEN, frame, len);
	virtq_add(&vq->tx, dma_addr(p), (uint32_t)(VNET_HDR_LEN + len), false, p);
	vq->tx_packets++;
	vq->tx_bytes += len;
	return 0;
}

void vnet_tx_flush(struct vnet *v, unsigned int q)
{
	virtq_kick(&v->q[q].tx);
	tx_reap(&v->q[q]);
}

bool vnet_arm(struct vnet *v, unsigned int q)
{
	return virtq_arm(&v->q[q].rx);
}

void vnet_disarm(struct vnet *v, unsigned int q)
{
	virtq_disarm(&v->q[q].rx);
}

int vnet_eventfd(const struct vnet *v, unsigned int q)
{
	return v->q[q].rx_efd;
}

int vnet_wait(struct vnet *v, unsigned int q, int timeout_ms)
{
	struct pollfd p = { .fd = v->q[q].rx_efd, .events = POLLIN };
	uint64_t cnt;
	int ret;

	if (vnet_arm(v, q)) {
		vnet_disarm(v, q);
		return 1;
	}
	ret = poll(&p, 1, timeout_ms);
	vnet_disarm(v, q);
	if (ret > 0) {
		if (read(p.fd, &cnt, sizeof(cnt)) < 0)
			cnt = 0;
		v->q[q].wakeups++;
		return 1;
	}
	if (ret == 0) /* a whole wait without an arrival: see "Nudging" */
		nudge(&v->q[q], now_ns());
	return ret < 0 ? -errno : 0;
}

/* --- introspection ----------------------------------------------------------------- */

uint64_t vnet_features(const struct vnet *v)
{
	return v->features;
}

void vnet_mac(const struct vnet *v, uint8_t mac[6])
{
	memcpy(mac, v->mac, 6);
}

unsigned int vnet_queue_pairs(const struct vnet *v)
{
	return v->nq;
}

unsigned int vnet_max_queue_pairs(const struct vnet *v)
{
	return v->max_pairs;
}

bool vnet_link_up(const struct vnet *v)
{
	const volatile struct virtio_net_config *nc = (const volatile void *)v->vp.devcfg;

	if (!(v->features & FEAT(VIRTIO_NET_F_STATUS)))
		return true;
	return nc->status & VIRTIO_NET_S_LINK_UP;
}

static const char *const feature_names[64] = {
	[VIRTIO_NET_F_MAC] = "MAC",
	[VIRTIO_NET_F_STATUS] = "STATUS",
	[VIRTIO_NET_F_CTRL_VQ] = "CTRL_VQ",
	[VIRTIO_NET_F_MQ] = "MQ",
	[VIRTIO_NET_F_MRG_RXBUF] = "MRG_RXBUF",
	[VIRTIO_RING_F_EVENT_IDX] = "EVENT_IDX",
	[VIRTIO_F_VERSION_1] = "VERSION_1",
	[VIRTIO_F_ACCESS_PLATFORM] = "ACCESS_PLATFORM",
	[VIRTIO_NET_F_RSS] = "RSS",
};

void vnet_stats_json(struct vnet *v, FILE *out)
{
	struct rxbuf_pstats ps;
	unsigned int i, first = 1;

	rxbuf_pstats(v->rb, &ps);
	fprintf(out, "{\"features\": [");
	for (i = 0; i < 64; i++) {
		if ((v->features & FEAT(i)) && feature_names[i]) {
			fprintf(out, "%s\"%s\"", first ? "" : ", ", feature_names[i]);
			first = 0;
		}
	}
	fprintf(out, "], \"queue_pairs\": %u, \"max_queue_pairs\": %u, \"max_ring_size\": %u, "
		     "\"ring_size\": %u, \"tx_ring_size\": %u, "
		     "\"link_up\": %s, \"ctrl_stale\": %llu, \"ctrl_bad_used\": %llu, "
		     "\"ctrl_broken\": %s, "
		     "\"pool\": {\"pinned_bytes\": %llu, \"buffers_total\": %llu, "
		     "\"buffers_free\": %llu, \"recycled\": %llu, \"refill_runs\": %llu}, "
		     "\"queues\": [",
		v->nq, v->max_pairs, v->max_ring, v->ring_size, v->tx_size,
		vnet_link_up(v) ? "true" : "false", (unsigned long long)v->ctrl_stale,
		(unsigned long long)READ_ONCE(v->ctrl.bad_used),
		READ_ONCE(v->ctrl.broken) ? "true" : "false",
		(unsigned long long)ps.pinned_bytes, (unsigned long long)ps.buffers_total,
		(unsigned long long)ps.buffers_free, (unsigned long long)ps.recycled,
		(unsigned long long)ps.refill_runs);
	for (i = 0; i < v->nq; i++) {
		struct vnet_queue *q = &v->q[i];
		struct rxbuf_qstats qs;

		rxbuf_qstats(v->rb, i, &qs);
		fprintf(out,
			"%s{\"rx_packets\": %llu, \"rx_bytes\": %llu, \"rx_errors\": %llu, "
			"\"tx_packets\": %llu, \"tx_bytes\": %llu, \"tx_full\": %llu, "
			"\"posted\": %llu, \"consumed\": %llu, \"drops_nobuf\": %llu, \"share\": %llu, "
			"\"wakeups\": %llu, \"nudges\": %llu, \"notifications\": %llu, "
			"\"rx_err_len\": %llu, "
			"\"rx_err_span\": %llu, \"rx_err_big\": %llu, \"rx_err_resync\": %llu, "
			"\"last_bad_len\": %u, \"last_bad_nbufs\": %u, "
			"\"rx_bad_used\": %llu, \"tx_bad_used\": %llu, "
			"\"rx_broken\": %s, \"tx_broken\": %s}",
			i ? ", " : "", (unsigned long long)READ_ONCE(q->rx_packets),
			(unsigned long long)READ_ONCE(q->rx_bytes),
			(unsigned long long)READ_ONCE(q->rx_errors),
			(unsigned long long)READ_ONCE(q->tx_packets),
			(unsigned long long)READ_ONCE(q->tx_bytes),
			(unsigned long long)READ_ONCE(q->tx_full), (unsigned long long)qs.posted,
			(unsigned long long)qs.consumed, (unsigned long long)qs.nobuf,
			(unsigned long long)qs.share,
			(unsigned long long)READ_ONCE(q->wakeups),
			(unsigned long long)READ_ONCE(q->nudges),
			(unsigned long long)(READ_ONCE(q->rx.notifications) +
					     READ_ONCE(q->tx.notifications)),
			(unsigned long long)READ_ONCE(q->rx_err_len),
			(unsigned long long)READ_ONCE(q->rx_err_span),
			(unsigned long long)READ_ONCE(q->rx_err_big),
			(unsigned long long)READ_ONCE(q->rx_err_resync), READ_ONCE(q->last_bad_len),
			READ_ONCE(q->last_bad_nbufs), (unsigned long long)READ_ONCE(q->rx.bad_used),
			(unsigned long long)READ_ONCE(q->tx.bad_used),
			READ_ONCE(q->rx.broken) ? "true" : "false",
			READ_ONCE(q->tx.broken) ? "true" : "false");
	}
	fprintf(out, "]}\n");
}

int vnet_check(struct vnet *v, FILE *why)
{
	unsigned int *in_ring, i;
	int ret = 0;

	/* every ring's own bookkeeping first: the buffer accounting reads its occupancy */
	for (i = 0; i < v->nq && !ret; i++) {
		ret = virtq_check(&v->q[i].rx, why);
		if (!ret)
			ret = virtq_check(&v->q[i].tx, why);
	}
	if (!ret && v->ctrl.slot)
		ret = virtq_check(&v->ctrl, why);
	if (ret)
		return ret;
	in_ring = calloc(v->nq, sizeof(unsigned int));
	if (!in_ring)
		return -ENOMEM;
	for (i = 0; i < v->nq; i++)
		in_ring[i] = (unsigned int)(v->q[i].rx.size - v->q[i].rx.num_free);
	ret = rxbuf_check(v->rb, in_ring, why);
	free(in_ring);
	return ret;
}
