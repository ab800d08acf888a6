/*
 * fuzz_stack: libFuzzer entry point that feeds arbitrary bytes to stack_input.
 *
 * Input layout: one flags byte, then frames, each a 2-byte big-endian length (taken modulo
 * 1600, so oversize frames occur too) followed by that many bytes (fewer if the input ends).
 *   bit 0  fix IPv4 header, ICMP and (non-zero) UDP checksums, so mutations get past them
 *   bit 1  the tx callback refuses every frame
 *   bit 2  force the destination MAC to ours
 *   bit 3  force the IPv4 destination to ours
 * Without these the fuzzer would spend most of its time failing checksums.
 *
 * Each frame is copied into a heap buffer of exactly its length so that AddressSanitizer
 * flags a read past it. Beyond "no crash", it checks what the stack sends (well-formed
 * frames with valid checksums, never bigger than 1514 bytes) and that every frame received
 * ends in exactly one counter; a violation aborts.
 *
 * It must only use the public API. Build with -DSTACK_FUZZ_MAIN for a standalone binary that
 * replays files given on the command line (for compilers without libFuzzer).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libos/stack.h>

enum {
	F_FIX_CSUM = 1,
	F_TX_FAIL = 2,
	F_OUR_MAC = 4,
	F_OUR_IP = 8,
	MAX_FRAME_IN = 1600,
};

static const uint8_t fz_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
static const uint8_t fz_ip[4] = { 10, 0, 0, 1 };
static const uint8_t fz_mask[4] = { 255, 255, 255, 0 };

struct fz {
	struct stack *s;
	bool tx_fail;
	unsigned int rx_calls;
};

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void wr16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint32_t sum16(uint32_t s, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;
	return s;
}

static uint16_t fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static uint16_t udp_sum(const uint8_t *ip, const uint8_t *udp, size_t ulen)
{
	uint8_t ph[12];

	memcpy(ph, ip + 12, 8);
	ph[8] = 0;
	ph[9] = 17;
	wr16(ph + 10, (uint16_t)ulen);
	return fold(sum16(sum16(0, ph, 12), udp, ulen));
}

static void die(const char *why)
{
	fprintf(stderr, "fuzz_stack: %s\n", why);
	abort();
}

/* ---- checks on what the stack transmits ---- */

static void check_ipv4_out(const uint8_t *f, size_t len)
{
	const uint8_t *ip = f + 14, *l4 = ip + 20;
	size_t tot;

	if (len < 34 || ip[0] != 0x45 || fold(sum16(0, ip, 20)) != 0)
		die("bad IPv4 header sent");
	tot = be16(ip + 2);
	if (tot < 20 || 14 + tot > len || (len > 60 && 14 + tot != len))
		die("IPv4 total length does not match the frame");
	if (memcmp(ip + 12, fz_ip, 4) != 0 || ip[8] == 0)
		die("bad IPv4 source or TTL");
	if (ip[9] == 1 && (tot < 28 || fold(sum16(0, l4, tot - 20)) != 0))
		die("bad ICMP checksum sent");
	if (ip[9] == 17) {
		if (tot < 28 || be16(l4 + 4) != tot - 20)
			die("UDP length does not match IP");
		if (be16(l4 + 6) == 0 || udp_sum(ip, l4, tot - 20) != 0)
			die("bad UDP checksum sent");
	}
	if (ip[9] != 1 && ip[9] != 17)
		die("unexpected IP protocol sent");
}

static void check_arp_out(const uint8_t *f, size_t len)
{
	const uint8_t *a = f + 14;

	if (len < 42 || be16(a) != 1 || be16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4)
		die("bad ARP header sent");
	if (be16(a + 6) != 1 && be16(a + 6) != 2)
		die("bad ARP operation sent");
	if (memcmp(a + 8, fz_mac, 6) != 0 || memcmp(a + 14, fz_ip, 4) != 0)
		die("ARP sender is not us");
}

static int fz_tx(void *ctx, const void *frame, size_t len)
{
	struct fz *z = ctx;
	const uint8_t *f = frame;

	if (len < 60 || len > 1514)
		die("frame size out of range");
	if (memcmp(f + 6, fz_mac, 6) != 0)
		die("source MAC is not ours");
	if (be16(f + 12) == 0x0800)
		check_ipv4_out(f, len);
	else if (be16(f + 12) == 0x0806)
		check_arp_out(f, len);
	else
		die("unexpected ethertype sent");
	return z->tx_fail ? -ENOBUFS : 0;
}

/* Answers every datagram and also sends one by address, to drive the ARP path. */
static void fz_udp(void *app, const struct udp_dgram *d)
{
	struct fz *z = app;
	volatile uint8_t touch = 0;

	for (size_t i = 0; i < d->len; i++)
		touch ^= d->data[i];
	(void)touch;
	z->rx_calls++;
	stack_udp_reply(z->s, d, d->data, d->len);
	stack_udp_send(z->s, d->src_ip, d->dst_port, d->src_port, d->data,
		       d->len > 64 ? 64 : d->len);
}

/* ---- making mutated frames reach the deeper layers ---- */

static void fix_l4(uint8_t *ip, size_t hlen, size_t avail)
{
	size_t tot = be16(ip + 2), plen;
	uint8_t *l4 = ip + hlen;

	if (tot < hlen || tot > avail)
		return;
	plen = tot - hlen;
	if (ip[9] == 1 && plen >= 4) {
		wr16(l4 + 2, 0);
		wr16(l4 + 2, fold(sum16(0, l4, plen)));
	} else if (ip[9] == 17 && plen >= 8 && be16(l4 + 6) != 0) {
		size_t ulen = be16(l4 + 4);
		uint16_t c;

		if (ulen < 8 || ulen > plen)
			return;
		wr16(l4 + 6, 0);
		c = udp_sum(ip, l4, ulen);
		wr16(l4 + 6, c ? c : 0xffff);
	}
}

static void shape(uint8_t *f, size_t len, unsigned int flags)
{
	uint8_t *ip = f + 14;
	size_t hlen;

	if ((flags & F_OUR_MAC) && len >= 6)
		memcpy(f, fz_mac, 6);
	if (len < 34 || be16(f + 12) != 0x0800)
		return;
	hlen = (size_t)(ip[0] & 0xf) * 4;
	if (hlen < 20 || 14 + hlen > len)
		return;
	if (flags & F_OUR_IP)
		memcpy(ip + 16, fz_ip, 4);
	if (!(flags & F_FIX_CSUM))
		return;
	fix_l4(ip, hlen, len - 14);
	wr16(ip + 10, 0);
	wr16(ip + 10, fold(sum16(0, ip, hlen)));
}

/* ---- the entry point ---- */

static uint64_t outcomes(const struct stack_counters *c)
{
	return c->drop_short + c->drop_oversize + c->drop_foreign_mac + c->drop_ethertype +
	       c->drop_ip_bad + c->drop_ip_csum + c->drop_ip_frag + c->drop_ip_foreign +
	       c->drop_proto + c->drop_udp_bad + c->drop_udp_noport + c->drop_icmp_bad +
	       c->drop_src_mac + c->arp_rx + c->icmp_echo + c->udp_rx;
}

static void feed_one(struct fz *z, const uint8_t *src, size_t len, unsigned int flags)
{
	const struct stack_counters *c = stack_counters(z->s);
	uint64_t before = outcomes(c), frames = c->rx_frames;
	uint8_t *copy = malloc(len ? len : 1);

	if (!copy)
		return;
	if (len)
		memcpy(copy, src, len);
	shape(copy, len, flags);
	stack_input(z->s, copy, len);
	free(copy);

	if (c->rx_frames != frames + 1)
		die("rx_frames not counted");
	/* With tx failing, an unanswered echo counts as drop_tx instead of icmp_echo. */
	if (!z->tx_fail && outcomes(c) != before + 1)
		die("frame did not end in exactly one counter");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stack_ops ops;
	struct fz z = { 0 };
	unsigned int flags;
	uint32_t ip, mask;
	size_t pos = 1;

	if (size < 1)
		return 0;
	flags = data[0];
	z.tx_fail = flags & F_TX_FAIL;
	ops = (struct stack_ops){ fz_tx, &z, fz_udp, &z };
	memcpy(&ip, fz_ip, 4);
	memcpy(&mask, fz_mask, 4);
	if (stack_create(&z.s, fz_mac, ip, mask, &ops) != 0)
		die("stack_create failed");
	stack_udp_bind(z.s, 7);
	stack_udp_bind(z.s, 53);
	stack_udp_bind(z.s, 4791);

	while (pos + 2 <= size) {
		size_t len = be16(data + pos) % MAX_FRAME_IN;

		pos += 2;
		if (len > size - pos)
			len = size - pos;
		feed_one(&z, data + pos, len, flags);
		pos += len;
	}
	stack_destroy(z.s);
	return 0;
}

#ifdef STACK_FUZZ_MAIN
/* Replays inputs from files, for builds without libFuzzer. */
int main(int argc, char **argv)
{
	static uint8_t buf[1 << 20];

	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		size_t n;

		if (!f) {
			perror(argv[i]);
			return 1;
		}
		n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, n);
	}
	printf("replayed %d inputs\n", argc - 1);
	return 0;
}
#endif
