/*
 * fuzz_rx: libFuzzer entry point over the driver's receive path, driven from both ends at
 * once: the bytes of the frames, and what the device writes into the rings (used ids and
 * lengths, num_buffers, the used index, the descriptor table, any ring byte). The device is
 * the fake one of fake_device.c; the frames the driver delivers go through the network
 * stack, whose answers go back out through the transmit ring.
 *
 * Input: one configuration byte, then operations until the input ends (a field cut short
 * by the end reads as zeros):
 *   config   bit 0: pool scheme (else fixed); bits 1-2: ring of 8 << n entries
 *   op byte, taken modulo OP_COUNT:
 *   FRAME    len:2 bytes:len     the device receives a frame (len % 1600) as virtio-net does
 *   USED     sel:1 [id:4] len:2  one used entry written, not published: sel < 0x80 names
 *                                descriptor sel % size, otherwise a 4-byte id follows
 *   PUBLISH                      publish the used entries written so far
 *   NBUFS    n:2                 rewrite num_buffers in the last frame's header
 *   LEN      k:1 len:2           rewrite the length of the (k % size + 1)-th last used entry
 *   RX       max:1               the driver takes up to max % 64 + 1 frames, the stack
 *                                answers, the answers are flushed
 *   TXDONE   n:1                 the device completes up to n transmitted frames
 *   TXUSED   sel:1 [id:4]        a transmit completion with any id, published
 *   SCRIBBLE off:2 n:1 bytes:n   the device writes n % 32 bytes anywhere in the ring memory
 *   IDX      delta:1             the used index moves by a signed delta, no entry written
 * Multi-byte fields are little-endian.
 *
 * Oracles: AddressSanitizer and UBSan on every access; the driver must not hang (libFuzzer's
 * -timeout); no delivered frame may exceed the driver's frame buffer; and after the last
 * operation vnet_check must pass (every ring's bookkeeping whole, every receive buffer
 * accounted for), whatever the device did. A violation aborts. LeakSanitizer checks that
 * vnet_close released everything.
 */
#include "../mem/dma.c"
#include "../mem/rxbuf.c"
#include "../net/virtq.c"
#include "../net/virtio_pci.c"
#include "../net/vnet.c"
#include "fake_device.c"

#include <libos/stack.h>

enum { OP_FRAME, OP_USED, OP_PUBLISH, OP_NBUFS, OP_LEN, OP_RX, OP_TXDONE, OP_TXUSED,
       OP_SCRIBBLE, OP_IDX, OP_COUNT };

#define FRAME_MOD 1600

struct input {
	const uint8_t *p;
	size_t left;
};

static uint32_t take(struct input *in, unsigned int bytes)
{
	uint32_t v = 0;
	unsigned int i;

	for (i = 0; i < bytes; i++) {
		if (in->left) {
			v |= (uint32_t)*in->p++ << (8 * i);
			in->left--;
		}
	}
	return v;
}

struct fz {
	struct vnet *v;
	struct stack *s;
	struct fdq rx, tx;
	uint8_t frame[FRAME_MOD];
};

static void die(const char *why)
{
	fprintf(stderr, "fuzz_rx: %s\n", why);
	abort();
}

static int fz_tx(void *ctx, const void *frame, size_t len)
{
	struct fz *z = ctx;

	return vnet_tx(z->v, 0, frame, len);
}

static void fz_udp(void *app, const struct udp_dgram *d)
{
	struct fz *z = app;

	stack_udp_reply(z->s, d, d->data, d->len);
}

static void fz_frame(void *arg, const uint8_t *frame, size_t len)
{
	struct fz *z = arg;

	if (len > sizeof(z->v->q[0].frame))
		die("frame longer than the driver's frame buffer delivered");
	stack_input(z->s, frame, len);
}

/* A used id: a descriptor of the ring (sel < 0x80) or any 32-bit value. */
static uint32_t used_id(struct input *in, const struct virtq *vq)
{
	uint32_t sel = take(in, 1);

	return sel < 0x80 ? sel % vq->size : take(in, 4);
}

static void run_op(struct fz *z, struct input *in)
{
	struct virtq *rxq = &z->v->q[0].rx;
	uint32_t a, b;

	switch (take(in, 1) % OP_COUNT) {
	case OP_FRAME:
		a = take(in, 2) % FRAME_MOD;
		for (b = 0; b < a; b++)
			z->frame[b] = (uint8_t)take(in, 1);
		fdq_rx_frame(&z->rx, z->frame, a, 0);
		break;
	case OP_USED:
		a = used_id(in, rxq);
		fdq_put(&z->rx, a, take(in, 2));
		break;
	case OP_PUBLISH:
		fdq_publish(&z->rx);
		break;
	case OP_NBUFS:
		a = take(in, 2);
		if (z->rx.last_hdr)
			memcpy(z->rx.last_hdr + offsetof(struct virtio_net_hdr_v1, num_buffers), &a,
			       2);
		break;
	case OP_LEN:
		a = take(in, 1) % rxq->size;
		rxq->used->ring[(uint16_t)(z->rx.used_idx - 1 - a) % rxq->size].len = take(in, 2);
		break;
	case OP_RX:
		vnet_rx_burst(z->v, 0, take(in, 1) % 64 + 1, fz_frame, z);
		vnet_tx_flush(z->v, 0);
		break;
	case OP_TXDONE:
		fdq_complete(&z->tx, take(in, 1));
		break;
	case OP_TXUSED:
		a = used_id(in, &z->v->q[0].tx);
		fdq_put(&z->tx, a, 0);
		fdq_publish(&z->tx);
		break;
	case OP_SCRIBBLE:
		/* the device may write any of the memory mapped for it: the rings included */
		fdev_strict = false;
		a = take(in, 2) % z->v->rings.used;
		b = take(in, 1) % 32;
		for (; b && a < z->v->rings.used; b--, a++)
			z->v->rings.base[a] = (uint8_t)take(in, 1);
		break;
	case OP_IDX:
		a = (uint32_t)(int8_t)take(in, 1);
		z->rx.used_idx = (uint16_t)(z->rx.used_idx + a);
		fdq_publish(&z->rx);
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t ip[4] = { 10, 0, 0, 1 }, mask[4] = { 255, 255, 255, 0 };
	struct input in = { data, size };
	struct vnet_config cfg = { .pci_addr = "fuzz", .queue_pairs = 1, .pool_buffers = 4,
				   .buffer_size = 4096, .stride = 256 };
	struct stack_ops ops;
	const char *why = "";
	char msg[256] = "";
	uint32_t conf, a, m;
	uint8_t mac[6];
	struct fz z;
	FILE *f;

	if (!size)
		return 0;
	conf = take(&in, 1);
	fdev_defaults();
	fdev_strict = true;
	fdev.pci.queue_size = (uint16_t)(8u << ((conf >> 1) & 3));
	cfg.scheme = (conf & 1) ? VNET_RX_POOL : VNET_RX_FIXED;
	memset(&z, 0, sizeof(z));
	if (vnet_open(&z.v, &cfg, &why)) {
		fprintf(stderr, "fuzz_rx: vnet_open: %s\n", why);
		abort();
	}
	vnet_mac(z.v, mac);
	memcpy(&a, ip, 4);
	memcpy(&m, mask, 4);
	ops = (struct stack_ops){ fz_tx, &z, fz_udp, &z };
	if (stack_create(&z.s, mac, a, m, &ops) || stack_udp_bind(z.s, 7))
		die("stack_create");
	fdq_init(&z.rx, &z.v->q[0].rx);
	fdq_init(&z.tx, &z.v->q[0].tx);
	while (in.left)
		run_op(&z, &in);
	f = fmemopen(msg, sizeof(msg), "w");
	if (vnet_check(z.v, f)) {
		fclose(f);
		fprintf(stderr, "fuzz_rx: after the input the driver's state is broken: %s\n", msg);
		abort();
	}
	fclose(f);
	stack_destroy(z.s);
	vnet_close(z.v);
	return 0;
}
