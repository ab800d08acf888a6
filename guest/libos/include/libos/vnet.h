/*
 * vnet.h: a virtio-net device driven from user space through VFIO, one RX/TX
 * queue pair per core. Frames cross this interface without the virtio header.
 *
 * Threading: vnet_open/vnet_close/vnet_stats_json from any one thread; every
 * per-queue call (rx, tx, arm, wait) for queue q from the single thread that owns q.
 */
#ifndef LIBOS_VNET_H
#define LIBOS_VNET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum vnet_rx_scheme { VNET_RX_FIXED, VNET_RX_POOL };

struct vnet_config {
	const char *pci_addr;       /* "0000:01:00.0", bound to vfio-pci */
	unsigned int queue_pairs;   /* 1..device maximum */
	unsigned int ring_size;     /* 0: the device's size (256 at most without huge pages) */
	enum vnet_rx_scheme scheme;
	unsigned int pool_buffers;  /* pool: large buffers (default 128) */
	unsigned int buffer_size;   /* pool: large buffer size (16384); fixed: 2048 */
	unsigned int stride;        /* pool: stride (256) */
	bool rss;                   /* spread flows with RSS when the device offers it */
	/* rings over 256 entries in normal pages: only on the project's QEMU (patch 0009) */
	bool small_page_rings;
};

struct vnet;

typedef void (*vnet_rx_fn)(void *arg, const uint8_t *frame, size_t len);

/* 0 or -errno; on error *why names the failing step. */
int vnet_open(struct vnet **out, const struct vnet_config *cfg, const char **why);
void vnet_close(struct vnet *v);

uint64_t vnet_features(const struct vnet *v);
void vnet_mac(const struct vnet *v, uint8_t mac[6]);
unsigned int vnet_queue_pairs(const struct vnet *v);
unsigned int vnet_max_queue_pairs(const struct vnet *v);
bool vnet_link_up(const struct vnet *v);

/*
 * Take up to max received frames off queue q, delivering the good ones to fn (each valid
 * only during the call) and counting the rest. Returns how many were delivered, or -EIO
 * once the device broke the queue's ring (it stays broken; see the stats).
 */
int vnet_rx_burst(struct vnet *v, unsigned int q, unsigned int max, vnet_rx_fn fn, void *arg);
/* Queue one frame for transmission (copied). 0, -EAGAIN when the ring is full, -EIO when
 * the device broke it. */
int vnet_tx(struct vnet *v, unsigned int q, const void *frame, size_t len);
/* Tell the device about queued frames (batched: call once per burst). */
void vnet_tx_flush(struct vnet *v, unsigned int q);

/*
 * Arm queue q: the next arrival signals its eventfd (an MSI-X vector through
 * VFIO). Returns true when frames are already waiting (do not sleep then).
 */
bool vnet_arm(struct vnet *v, unsigned int q);
void vnet_disarm(struct vnet *v, unsigned int q);
int vnet_eventfd(const struct vnet *v, unsigned int q);
/* Arm, sleep until an arrival or timeout_ms (-1: forever), disarm. 1 woken, 0 timeout. */
int vnet_wait(struct vnet *v, unsigned int q, int timeout_ms);

/* Counters of every queue and of the buffer pool, as one JSON object. */
void vnet_stats_json(struct vnet *v, FILE *out);
/* Every ring's bookkeeping (virtq_check) and the buffer accounting invariants (see
 * rxbuf_check); call with all queues idle. */
int vnet_check(struct vnet *v, FILE *why);

#endif
