/*
 * test_driver: host-run tests of the virtio-net driver (virtq, virtio_pci, vnet, rxbuf)
 * against a device that misbehaves on purpose: the fake device of fake_device.c, in plain
 * memory, writes duplicate, out-of-range and never-posted ids, runaway used indexes,
 * descriptor chains that loop, bad lengths and bad num_buffers, and offers capabilities
 * and configuration that do not add up.
 *
 * Each case asserts three things: the driver survived (the case runs in a child process
 * with a time limit, so a crash or a hang fails that case alone), it counted what it
 * refused, and nothing was corrupted (virtq_check on every ring, vnet_check for the buffer
 * accounting, and the frames delivered are exactly the good ones). Built with
 * AddressSanitizer and UBSan by 'make check'.
 *
 * It includes the driver's sources, so it can play the device on the driver's own rings
 * and reach counters the public API does not show. The last line printed is
 * "N passed, M failed" (cases); the exit status is non-zero on any failure.
 */
#include "../mem/dma.c"
#include "../mem/rxbuf.c"
#include "../net/virtq.c"
#include "../net/virtio_pci.c"
#include "../net/vnet.c"
#include "fake_device.c"

#include <signal.h>
#include <sys/wait.h>

#define CASE_TIMEOUT_S 20

static int checks_failed; /* in the child running one case */

#define CHECK(cond)                                                               \
	do {                                                                      \
		if (!(cond)) {                                                    \
			checks_failed++;                                          \
			printf("  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
		}                                                                 \
	} while (0)

#define CHECK_EQ(a, b)                                                              \
	do {                                                                        \
		long long a_ = (long long)(a), b_ = (long long)(b);                 \
		if (a_ != b_) {                                                     \
			checks_failed++;                                            \
			printf("  FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__,  \
			       __LINE__, #a, #b, a_, b_);                           \
		}                                                                   \
	} while (0)

/* --- helpers ----------------------------------------------------------------------- */

/* A ring's free list and in-flight bookkeeping are intact. */
static void check_ring(const struct virtq *vq, const char *what)
{
	char msg[256] = "";
	FILE *m = fmemopen(msg, sizeof(msg), "w");
	int ret = virtq_check(vq, m);

	fclose(m);
	if (ret) {
		checks_failed++;
		printf("  FAIL %s ring: %s", what, msg);
	}
}

/* Every ring intact and the receive buffers accounted for. */
static void check_all(struct vnet *v)
{
	char msg[256] = "";
	FILE *m = fmemopen(msg, sizeof(msg), "w");
	unsigned int q;
	int ret = vnet_check(v, m);

	fclose(m);
	if (ret) {
		checks_failed++;
		printf("  FAIL vnet_check: %s", msg);
	}
	for (q = 0; q < v->nq; q++) {
		check_ring(&v->q[q].rx, "rx");
		check_ring(&v->q[q].tx, "tx");
	}
	if (v->features & FEAT(VIRTIO_NET_F_CTRL_VQ))
		check_ring(&v->ctrl, "ctrl");
}

static struct vnet *open_dev(enum vnet_rx_scheme scheme)
{
	struct vnet_config cfg = { .pci_addr = "fake", .queue_pairs = 1, .scheme = scheme,
				   .pool_buffers = 4, .buffer_size = 4096, .stride = 256 };
	const char *why = "";
	struct vnet *v = NULL;
	int ret = vnet_open(&v, &cfg, &why);

	if (ret) {
		printf("  vnet_open: %s: %s\n", why, strerror(-ret));
		exit(1);
	}
	return v;
}

/* Frames the driver delivered, copied. */
struct got {
	unsigned int n;
	size_t len[64];
	uint8_t frame[64][1600];
};

static void collect(void *arg, const uint8_t *frame, size_t len)
{
	struct got *g = arg;

	if (g->n < 64 && len <= sizeof(g->frame[0])) {
		memcpy(g->frame[g->n], frame, len);
		g->len[g->n] = len;
	}
	g->n++;
}

static int rx(struct vnet *v, struct got *g)
{
	memset(g, 0, sizeof(*g));
	return vnet_rx_burst(v, 0, 64, collect, g);
}

static void pattern(uint8_t *p, size_t len, uint8_t seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(seed + i * 7);
}

/* The next used entry the fake device will write, relative: fdq_used(d, -1) is the last. */
static struct vring_used_elem *fdq_used(struct fdq *d, int rel)
{
	return &d->vq->used->ring[(uint16_t)(d->used_idx + rel) % d->vq->size];
}

/* --- virtq on its own ------------------------------------------------------------------ */

struct bare {
	struct virtq vq;
	uint16_t doorbell;
	struct dma_region r;
	struct fdq d;
	int cookies[64];
};

static void bare_open(struct bare *b, uint16_t size)
{
	memset(b, 0, sizeof(*b));
	b->r.size = virtq_bytes(size);
	b->r.base = aligned_alloc(4096, (b->r.size + 4095) & ~(size_t)4095);
	if (!b->r.base || virtq_alloc(&b->vq, &b->r, size, 0, true))
		exit(1);
	b->vq.notify = &b->doorbell;
	fdq_init(&b->d, &b->vq);
}

static void bare_close(struct bare *b)
{
	virtq_free(&b->vq);
	free(b->r.base);
}

static void bare_post(struct bare *b, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		CHECK_EQ(virtq_add(&b->vq, 0x1000 + i * 64, 64, true, &b->cookies[i]), 0);
	virtq_kick(&b->vq);
}

/* Reap everything published; count the cookies seen. */
static unsigned int bare_reap(struct bare *b, unsigned int *seen)
{
	unsigned int n = 0, guard;
	uint32_t len;
	void *c;

	for (guard = 0; guard < 4 * b->vq.size && virtq_has_used(&b->vq); guard++) {
		c = virtq_get(&b->vq, &len);
		if (c) {
			seen[(int *)c - b->cookies]++;
			n++;
		}
	}
	return n;
}

/*
 * A duplicate id is skipped and counted; every buffer comes back exactly once. (The
 * device publishes no more entries than buffers in flight: more would break the queue.)
 */
static void case_virtq_duplicate_id(void)
{
	unsigned int seen[64] = { 0 }, i;
	struct bare b;

	bare_open(&b, 8);
	bare_post(&b, 4);
	for (i = 0; i < 4; i++)
		fdq_take(&b.d);
	fdq_put(&b.d, 0, 64);
	fdq_put(&b.d, 1, 64);
	fdq_put(&b.d, 0, 64); /* again */
	fdq_put(&b.d, 2, 64);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 3);
	fdq_put(&b.d, 3, 64);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 1);
	for (i = 0; i < 4; i++)
		CHECK_EQ(seen[i], 1);
	CHECK_EQ(b.vq.bad_used, 1);
	CHECK(!b.vq.broken);
	CHECK_EQ(b.vq.num_free, 8);
	check_ring(&b.vq, "bare");
	bare_close(&b);
}

/*
 * Ids beyond the ring, including one whose low 16 bits name a real buffer, are skipped
 * and counted, and the queue goes on: the entry after them is delivered.
 */
static void case_virtq_id_out_of_range(void)
{
	unsigned int seen[64] = { 0 };
	struct bare b;

	bare_open(&b, 8);
	bare_post(&b, 4);
	fdq_put(&b.d, 8, 64);
	fdq_put(&b.d, 0x10001, 64); /* 1 once truncated to 16 bits */
	fdq_put(&b.d, 1, 64);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 1);
	CHECK_EQ(seen[1], 1);
	CHECK_EQ(b.vq.bad_used, 2);
	fdq_put(&b.d, 0, 64);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 1);
	CHECK_EQ(seen[0], 1);
	CHECK(!b.vq.broken);
	CHECK_EQ(b.vq.num_free, 6); /* 2 and 3 still in flight */
	check_ring(&b.vq, "bare");
	bare_close(&b);
}

/* An id in range that the driver never made available. */
static void case_virtq_never_posted_id(void)
{
	unsigned int seen[64] = { 0 };
	struct bare b;

	bare_open(&b, 8);
	bare_post(&b, 3);
	fdq_put(&b.d, 6, 64);
	fdq_put(&b.d, 2, 64);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 1);
	CHECK_EQ(seen[2], 1);
	CHECK_EQ(b.vq.bad_used, 1);
	CHECK_EQ(b.vq.num_free, 6);
	check_ring(&b.vq, "bare");
	/* the free list still gives out distinct descriptors */
	bare_post(&b, 6);
	CHECK_EQ(virtq_add(&b.vq, 0, 64, true, &b.cookies[9]), -ENOSPC);
	check_ring(&b.vq, "bare");
	bare_close(&b);
}

/*
 * A chain whose descriptors the device rewrote to loop (and to reach into the free list):
 * returning it must neither hang nor splice foreign descriptors into the free list.
 */
static void case_virtq_chain_loops(void)
{
	struct vq_seg segs[3] = { { 0x1000, 16 }, { 0x2000, 16 }, { 0x3000, 1 } };
	unsigned int seen[64] = { 0 };
	struct bare b;
	int head;

	bare_open(&b, 8);
	CHECK_EQ(virtq_add_chain(&b.vq, segs, 2, 1, &b.cookies[0]), 0);
	virtq_kick(&b.vq);
	head = fdq_take(&b.d);
	b.vq.desc[head].flags |= VRING_DESC_F_NEXT;
	b.vq.desc[head].next = (uint16_t)head; /* loops on itself */
	b.vq.desc[(head + 2) % 8].flags |= VRING_DESC_F_NEXT;
	b.vq.desc[(head + 2) % 8].next = 5; /* into the free list */
	fdq_put(&b.d, (uint32_t)head, 1);
	fdq_publish(&b.d);
	CHECK_EQ(bare_reap(&b, seen), 1);
	CHECK_EQ(seen[0], 1);
	CHECK_EQ(b.vq.num_free, 8);
	check_ring(&b.vq, "bare");
	bare_close(&b);
}

/*
 * A used index that runs ahead of the buffers in flight: the device is broken. The queue
 * is marked so, later calls return nothing at once, and no garbage entry is taken.
 */
static void case_virtq_used_index_runaway(void)
{
	unsigned int seen[64] = { 0 };
	uint32_t len;
	struct bare b;

	bare_open(&b, 8);
	bare_post(&b, 2);
	b.vq.used->idx = 200;
	CHECK(virtq_get(&b.vq, &len) == NULL);
	CHECK(b.vq.broken);
	CHECK(!virtq_has_used(&b.vq));
	CHECK_EQ(bare_reap(&b, seen), 0);
	CHECK_EQ(b.vq.num_free, 6);
	check_ring(&b.vq, "bare");
	bare_close(&b);
}

/* --- receive ------------------------------------------------------------------------- */

/* A used entry for a receive buffer twice: one frame delivered, the buffer posted once. */
static void case_rx_duplicate_id(enum vnet_rx_scheme scheme)
{
	struct vnet *v = open_dev(scheme);
	struct fdq d;
	struct got g;
	uint8_t f[100];

	fdq_init(&d, &v->q[0].rx);
	pattern(f, sizeof(f), 1);
	CHECK_EQ(fdq_rx_frame(&d, f, sizeof(f), 0), 1);
	fdq_put(&d, fdq_used(&d, -1)->id, fdq_used(&d, -1)->len);
	fdq_publish(&d);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(f) && !memcmp(g.frame[0], f, sizeof(f)));
	CHECK_EQ(v->q[0].rx.bad_used, 1);
	check_all(v);
	vnet_close(v);
}

static void case_rx_duplicate_id_fixed(void)
{
	case_rx_duplicate_id(VNET_RX_FIXED);
}

static void case_rx_duplicate_id_pool(void)
{
	case_rx_duplicate_id(VNET_RX_POOL);
}

/*
 * A frame over three strides whose first buffer has a bad length: the frame is dropped
 * and its two continuations are consumed with it, never parsed as headers (their bytes
 * are made to look like a valid header), so the good frame after it is the only one
 * delivered.
 */
static void case_rx_bad_first_len_consumes_continuations(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	uint8_t a[600], b[80];
	struct fdq d;
	struct got g;
	int n;

	fdq_init(&d, &v->q[0].rx);
	pattern(a, sizeof(a), 3);
	/* what a continuation would be read as: num_buffers 1 at each stride start */
	a[244 + 10] = 1, a[244 + 11] = 0;
	a[500 + 10] = 1, a[500 + 11] = 0;
	pattern(b, sizeof(b), 9);
	n = fdq_rx_frame(&d, a, sizeof(a), 0);
	CHECK_EQ(n, 3);
	fdq_used(&d, -n)->len = 300; /* more than the 256-byte stride */
	CHECK_EQ(fdq_rx_frame(&d, b, sizeof(b), 0), 1);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(b) && !memcmp(g.frame[0], b, sizeof(b)));
	CHECK_EQ(v->q[0].rx_err_len, 1);
	CHECK_EQ(v->q[0].rx_errors, 1);
	check_all(v);
	vnet_close(v);
}

/*
 * A first buffer shorter than the virtio-net header: its num_buffers was never written,
 * so the driver cannot know where the frame ends. It drops what was published with it
 * (a device publishes a frame's buffers together, so that ends on a frame boundary) and
 * counts them; the next frame is delivered.
 */
static void case_rx_first_len_below_header_resyncs(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	uint8_t a[600], b[80];
	struct fdq d;
	struct got g;
	int n;

	fdq_init(&d, &v->q[0].rx);
	pattern(a, sizeof(a), 5);
	a[244 + 10] = 1, a[244 + 11] = 0;
	a[500 + 10] = 1, a[500 + 11] = 0;
	pattern(b, sizeof(b), 11);
	n = fdq_rx_frame(&d, a, sizeof(a), 0);
	fdq_used(&d, -n)->len = 5;
	CHECK_EQ(rx(v, &g), 0);
	CHECK_EQ(v->q[0].rx_err_len, 1);
	CHECK_EQ(v->q[0].rx_err_resync, 2);
	CHECK_EQ(fdq_rx_frame(&d, b, sizeof(b), 0), 1);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(b) && !memcmp(g.frame[0], b, sizeof(b)));
	check_all(v);
	vnet_close(v);
}

/* num_buffers 0: not a frame; dropped, counted, and the stream resynchronised. */
static void case_rx_num_buffers_zero(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	uint8_t a[600], b[80];
	struct fdq d;
	struct got g;

	fdq_init(&d, &v->q[0].rx);
	pattern(a, sizeof(a), 7);
	pattern(b, sizeof(b), 13);
	CHECK_EQ(fdq_rx_frame(&d, a, sizeof(a), 0xffff), 3); /* placeholder, rewritten below */
	{
		struct vring_used_elem *e = fdq_used(&d, -3);
		uint8_t *first = (uint8_t *)(uintptr_t)v->q[0].rx.desc[e->id].addr;

		memset(first + offsetof(struct virtio_net_hdr_v1, num_buffers), 0, 2);
	}
	CHECK_EQ(rx(v, &g), 0);
	CHECK_EQ(v->q[0].rx_err_span, 1);
	CHECK_EQ(v->q[0].last_bad_nbufs, 0);
	CHECK_EQ(fdq_rx_frame(&d, b, sizeof(b), 0), 1);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(b) && !memcmp(g.frame[0], b, sizeof(b)));
	check_all(v);
	vnet_close(v);
}

/*
 * num_buffers larger than what was published (and absurdly large): the frame is dropped
 * and what was published is consumed, bounded by the ring; the next frame is delivered.
 */
static void case_rx_num_buffers_beyond_published(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	uint8_t a[600], b[80];
	struct fdq d;
	struct got g;

	fdq_init(&d, &v->q[0].rx);
	pattern(a, sizeof(a), 17);
	pattern(b, sizeof(b), 19);
	CHECK_EQ(fdq_rx_frame(&d, a, sizeof(a), 60000), 3);
	CHECK_EQ(rx(v, &g), 0);
	CHECK_EQ(v->q[0].rx_err_span, 1);
	CHECK_EQ(v->q[0].last_bad_nbufs, 60000);
	CHECK_EQ(fdq_rx_frame(&d, b, sizeof(b), 0), 1);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(b) && !memcmp(g.frame[0], b, sizeof(b)));
	check_all(v);
	vnet_close(v);
}

/*
 * A continuation with a bad id: skipped and counted by the ring, the frame it belonged to
 * dropped, and the queue does not stall: the next frame is delivered.
 */
static void case_rx_bad_id_inside_frame(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	uint8_t a[600], b[80];
	struct fdq d;
	struct got g;

	fdq_init(&d, &v->q[0].rx);
	pattern(a, sizeof(a), 23);
	pattern(b, sizeof(b), 29);
	CHECK_EQ(fdq_rx_frame(&d, a, sizeof(a), 0), 3);
	fdq_used(&d, -2)->id = 999;
	CHECK_EQ(rx(v, &g), 0);
	CHECK_EQ(v->q[0].rx.bad_used, 1);
	CHECK_EQ(fdq_rx_frame(&d, b, sizeof(b), 0), 1);
	CHECK_EQ(rx(v, &g), 1);
	CHECK(g.len[0] == sizeof(b) && !memcmp(g.frame[0], b, sizeof(b)));
	/* the stride behind the bad id is lost to the driver (it cannot know which it was):
	 * still in flight, and still accounted as in the ring */
	check_all(v);
	vnet_close(v);
}

/* A runaway used index on a receive queue breaks that queue: -EIO at once, and stats say so. */
static void case_rx_broken_queue_fails_fast(void)
{
	struct vnet *v = open_dev(VNET_RX_FIXED);
	char *json = NULL;
	size_t jlen = 0;
	FILE *m;
	struct got g;

	v->q[0].rx.used->idx = (uint16_t)(v->q[0].rx.last_used + 1000);
	CHECK_EQ(rx(v, &g), -EIO);
	CHECK_EQ(g.n, 0);
	CHECK(v->q[0].rx.broken);
	CHECK_EQ(rx(v, &g), -EIO);
	m = open_memstream(&json, &jlen);
	vnet_stats_json(v, m);
	fclose(m);
	CHECK(strstr(json, "\"rx_broken\": true") != NULL);
	free(json);
	check_all(v);
	vnet_close(v);
}

/* --- transmit ------------------------------------------------------------------------ */

/* Completions with duplicate, out-of-range and never-posted ids: counted, slots intact. */
static void case_tx_bad_completions(void)
{
	struct vnet *v = open_dev(VNET_RX_FIXED);
	uint8_t f[60];
	struct fdq d;
	int i, head;

	fdq_init(&d, &v->q[0].tx);
	pattern(f, sizeof(f), 31);
	for (i = 0; i < 6; i++)
		CHECK_EQ(vnet_tx(v, 0, f, sizeof(f)), 0);
	vnet_tx_flush(v, 0);
	head = fdq_take(&d);
	fdq_put(&d, (uint32_t)head, 0);
	fdq_put(&d, (uint32_t)head, 0); /* twice */
	fdq_put(&d, 12, 0);             /* never posted */
	fdq_put(&d, 70000, 0);          /* beyond the ring */
	fdq_publish(&d);
	vnet_tx_flush(v, 0);
	CHECK_EQ(v->q[0].tx.bad_used, 3);
	CHECK(!v->q[0].tx.broken);
	CHECK_EQ(v->q[0].tx.num_free, v->tx_size - 5);
	check_all(v);
	/* and the ring keeps going round: 40 frames through a 16-entry ring */
	fdq_complete_all(&d);
	for (i = 0; i < 40; i++) {
		CHECK_EQ(vnet_tx(v, 0, f, sizeof(f)), 0);
		vnet_tx_flush(v, 0);
		fdq_complete_all(&d);
	}
	vnet_tx_flush(v, 0);
	CHECK_EQ(v->q[0].tx.num_free, v->tx_size);
	check_all(v);
	vnet_close(v);
}

/* --- control queue -------------------------------------------------------------------- */

struct ctrl_dev {
	struct fdq d;
	pthread_t t;
};

/* Answer the next available command with ack: find its device-writable byte. */
static void ctrl_answer(struct fdq *d, uint8_t ack)
{
	int head = fdq_take(d);
	uint16_t id = (uint16_t)head, i;
	uint8_t *p = NULL;

	for (i = 0; i < d->vq->size; i++) {
		if (d->vq->desc[id].flags & VRING_DESC_F_WRITE)
			p = fdq_writable(d, id, 1);
		if (!(d->vq->desc[id].flags & VRING_DESC_F_NEXT))
			break;
		id = d->vq->desc[id].next;
	}
	if (!p)
		abort();
	*p = ack;
	fdq_put(d, (uint32_t)head, 1);
	fdq_publish(d);
}

/* Once two commands wait: answer the first (timed out) with OK, later the second with ERR. */
static void *ctrl_late_device(void *arg)
{
	struct ctrl_dev *c = arg;
	struct timespec ts = { 0, 1000000 };
	int i;

	for (i = 0; i < 5000 && fdq_avail(&c->d) < 2; i++)
		nanosleep(&ts, NULL);
	ctrl_answer(&c->d, VIRTIO_NET_OK);
	ts.tv_nsec = 30000000;
	nanosleep(&ts, NULL);
	ctrl_answer(&c->d, VIRTIO_NET_ERR);
	return NULL;
}

/*
 * A command that timed out must not lend its late completion to the next one: the next
 * command gets its own answer (ERR here), and the stale completion is counted.
 */
static void case_ctrl_timeout_then_next_command(void)
{
	struct ctrl_dev c;
	struct vnet *v;
	uint16_t pairs = 1;

	fdev_defaults();
	fdev.pci.features |= FDEV_F_CTRL;
	v = open_dev(VNET_RX_FIXED);
	fdq_init(&c.d, &v->ctrl);
	v->ctrl_timeout_ms = 30;
	CHECK_EQ(ctrl_cmd(v, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &pairs, 2),
		 -ETIMEDOUT);
	v->ctrl_timeout_ms = 5000;
	pthread_create(&c.t, NULL, ctrl_late_device, &c);
	CHECK_EQ(ctrl_cmd(v, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, &pairs, 2),
		 -EIO);
	pthread_join(c.t, NULL);
	CHECK_EQ(v->ctrl_stale, 1);
	check_all(v);
	vnet_close(v);
}

/* --- bring-up: what the device claims about itself ----------------------------------- */

static int try_open(const char **why)
{
	struct vnet_config cfg = { .pci_addr = "fake", .queue_pairs = 1 };
	struct vnet *v = NULL;
	int ret;

	*why = "";
	ret = vnet_open(&v, &cfg, why);
	if (!ret)
		vnet_close(v);
	return ret;
}

/* max_virtqueue_pairs 0x8000 (the spec's maximum) puts the control queue at 65536. */
static void case_open_max_pairs_wraps_queue_index(void)
{
	const char *why;

	fdev_defaults();
	fdev.pci.features |= FDEV_F_CTRL | FDEV_F_MQ;
	fdev.pci.max_pairs = 0x8000;
	fdev.pci.num_queues = 0xffff;
	CHECK_EQ(try_open(&why), -EINVAL);
	CHECK(strstr(why, "max_virtqueue_pairs") != NULL);
}

/* A notify address beyond the BAR, one beyond the capability, one the 2-byte write crosses. */
static void case_open_notify_outside_capability(void)
{
	const char *why;

	fdev_defaults();
	fdev.pci.notify_off = 0xc00; /* 0x1000 + 0xc00 * 4: the end of the BAR */
	CHECK_EQ(try_open(&why), -EINVAL);
	CHECK(strstr(why, "notify") != NULL);
	fdev_defaults();
	fdev.pci.notify_off = 0x400; /* the end of the capability, inside the BAR */
	CHECK_EQ(try_open(&why), -EINVAL);
	fdev_defaults();
	fdev.pci.notify_len = 0x11;
	fdev.pci.notify_off = 4; /* at 16 of 17 bytes: the write would cross the end */
	CHECK_EQ(try_open(&why), -EINVAL);
	fdev_defaults();
	fdev.pci.notify_len = 0x12;
	fdev.pci.notify_off = 4; /* at 16 of 18: fits */
	CHECK_EQ(try_open(&why), 0);
}

/* Device configuration shorter than the fields the negotiated features make the driver read. */
static void case_open_device_config_too_short(void)
{
	const char *why;

	fdev_defaults();
	fdev.pci.features |= FDEV_F_CTRL | FDEV_F_MQ;
	fdev.pci.devcfg_len = 8; /* mac and status only: max_virtqueue_pairs missing */
	fdev.pci.devcfg_at = FDEV_BAR_SIZE - 8;
	CHECK_EQ(try_open(&why), -EINVAL);
	CHECK(strstr(why, "configuration") != NULL);
	fdev_defaults();
	fdev.pci.devcfg_len = 6; /* STATUS negotiated: status missing */
	fdev.pci.devcfg_at = FDEV_BAR_SIZE - 6;
	CHECK_EQ(try_open(&why), -EINVAL);
	fdev_defaults();
	fdev.pci.common_len = 0x20; /* common configuration cut short */
	CHECK(try_open(&why) < 0);
}

/* --- buffer accounting ----------------------------------------------------------------- */

/*
 * The pool's per-buffer stride counters are 32 bits. Started just short of 2^32, traffic
 * carries them across the wrap: the accounting check and recycling stay right.
 */
static void case_pool_counters_wrap(void)
{
	struct vnet *v = open_dev(VNET_RX_POOL);
	struct rxbuf *rb;
	uint8_t f[100];
	unsigned int b, i, delivered = 0;
	struct fdq d;
	struct got g;

	rb = v->rb;
	for (b = 0; b < rb->cfg.pool_buffers; b++) {
		rb->q[0].pool.posted[b] += UINT32_MAX - 20;
		rb->q[0].pool.released[b] += UINT32_MAX - 20;
	}
	fdq_init(&d, &v->q[0].rx);
	pattern(f, sizeof(f), 37);
	for (i = 0; i < 200; i++) {
		if (fdq_rx_frame(&d, f, sizeof(f), 0) < 0) {
			printf("  the driver stopped posting buffers after %u frames\n", i);
			checks_failed++;
			break;
		}
		CHECK_EQ(rx(v, &g), 1);
		delivered += g.n;
		if (i % 10 == 9)
			check_all(v);
	}
	CHECK_EQ(delivered, 200);
	CHECK(rb->recycled > 0);
	check_all(v);
	vnet_close(v);
}

/* --- runner ---------------------------------------------------------------------------- */

struct tcase {
	const char *name;
	void (*fn)(void);
};

static const struct tcase cases[] = {
	{ "virtq_duplicate_id", case_virtq_duplicate_id },
	{ "virtq_id_out_of_range", case_virtq_id_out_of_range },
	{ "virtq_never_posted_id", case_virtq_never_posted_id },
	{ "virtq_chain_loops", case_virtq_chain_loops },
	{ "virtq_used_index_runaway", case_virtq_used_index_runaway },
	{ "rx_duplicate_id_fixed", case_rx_duplicate_id_fixed },
	{ "rx_duplicate_id_pool", case_rx_duplicate_id_pool },
	{ "rx_bad_first_len_consumes_continuations", case_rx_bad_first_len_consumes_continuations },
	{ "rx_first_len_below_header_resyncs", case_rx_first_len_below_header_resyncs },
	{ "rx_num_buffers_zero", case_rx_num_buffers_zero },
	{ "rx_num_buffers_beyond_published", case_rx_num_buffers_beyond_published },
	{ "rx_bad_id_inside_frame", case_rx_bad_id_inside_frame },
	{ "rx_broken_queue_fails_fast", case_rx_broken_queue_fails_fast },
	{ "tx_bad_completions", case_tx_bad_completions },
	{ "ctrl_timeout_then_next_command", case_ctrl_timeout_then_next_command },
	{ "open_max_pairs_wraps_queue_index", case_open_max_pairs_wraps_queue_index },
	{ "open_notify_outside_capability", case_open_notify_outside_capability },
	{ "open_device_config_too_short", case_open_device_config_too_short },
	{ "pool_counters_wrap", case_pool_counters_wrap },
};

/* Runs one case in a child: a crash, a hang or a failed check fails that case only. */
static bool run_case(const struct tcase *c)
{
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return false;
	}
	if (pid == 0) {
		alarm(CASE_TIMEOUT_S);
		fdev_defaults();
		c->fn();
		fflush(stdout);
		exit(checks_failed ? 1 : 0);
	}
	if (waitpid(pid, &status, 0) < 0)
		return false;
	if (WIFSIGNALED(status)) {
		printf("  %s: killed by signal %d%s\n", c->name, WTERMSIG(status),
		       WTERMSIG(status) == SIGALRM ? " (hung)" : "");
		return false;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
	unsigned int i, passed = 0, failed = 0;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		if (argc > 1 && !strstr(cases[i].name, argv[1]))
			continue;
		if (run_case(&cases[i])) {
			passed++;
			printf("ok   %s\n", cases[i].name);
		} else {
			failed++;
			printf("FAIL %s\n", cases[i].name);
		}
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
