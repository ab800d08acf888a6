/*
 * test_stack: host-run unit tests for the user-space network stack (libos/stack.h).
 *
 * Every frame is built byte by byte with the helpers below, copied into a heap buffer of
 * exactly its length (so a sanitizer build catches any read past the end), fed to
 * stack_input, and judged by the frames the tx callback captured and by the counters.
 * Checksums are verified with an implementation of its own, not the stack's.
 *
 * It must not include the stack's internal header: it tests the public API only.
 * The last line printed is "N passed, M failed"; the exit status is non-zero on failure.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libos/stack.h>

static int passed, failed;

#define CHECK(cond)                                                                   \
	do {                                                                          \
		if (cond) {                                                           \
			passed++;                                                     \
		} else {                                                              \
			failed++;                                                     \
			printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);         \
		}                                                                     \
	} while (0)

#define CHECK_EQ(a, b)                                                                \
	do {                                                                          \
		long long a_ = (long long)(a), b_ = (long long)(b);                   \
		if (a_ == b_) {                                                       \
			passed++;                                                     \
		} else {                                                              \
			failed++;                                                     \
			printf("FAIL %s:%d: %s == %s (%lld != %lld)\n", __FILE__,       \
			       __LINE__, #a, #b, a_, b_);                             \
		}                                                                     \
	} while (0)

/* ---- addresses ---- */

static const uint8_t our_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
static const uint8_t peer_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x02 };
static const uint8_t peer_mac2[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x22 };
static const uint8_t other_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x99 };
static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t mcast_mac[6] = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0x01 };
static const uint8_t zero_mac[6];

/* Network byte order whatever the host's: the bytes are laid out as on the wire. */
static uint32_t ip4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
	uint8_t bytes[4] = { a, b, c, d };
	uint32_t v;

	memcpy(&v, bytes, 4);
	return v;
}

#define OUR_IP ip4(10, 0, 0, 1)
#define PEER_IP ip4(10, 0, 0, 2)
#define NETMASK ip4(255, 255, 255, 0)

/* ---- frame building ---- */

struct buf {
	uint8_t b[2048];
	size_t n;
};

static void put8(struct buf *f, uint8_t v)
{
	if (f->n < sizeof(f->b))
		f->b[f->n++] = v;
}

static void put16(struct buf *f, uint16_t v)
{
	put8(f, (uint8_t)(v >> 8));
	put8(f, (uint8_t)v);
}

static void putmem(struct buf *f, const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < len; i++)
		put8(f, b[i]);
}

static void putip(struct buf *f, uint32_t ip)
{
	putmem(f, &ip, 4);
}

static void set16(struct buf *f, size_t off, uint16_t v)
{
	f->b[off] = (uint8_t)(v >> 8);
	f->b[off + 1] = (uint8_t)v;
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t rdip(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

/* Ones' complement sum, folded after every word. */
static uint16_t ref_sum(uint16_t start, const uint8_t *p, size_t len)
{
	uint32_t s = start;

	for (size_t i = 0; i < len; i += 2) {
		uint16_t w = (uint16_t)(p[i] << 8);

		if (i + 1 < len)
			w |= p[i + 1];
		s += w;
		s = (s & 0xffff) + (s >> 16);
	}
	return (uint16_t)s;
}

static uint16_t ref_csum(const uint8_t *p, size_t len)
{
	return (uint16_t)~ref_sum(0, p, len);
}

static uint16_t pseudo_sum(uint32_t src, uint32_t dst, uint16_t ulen)
{
	uint8_t ph[12];

	memcpy(ph, &src, 4);
	memcpy(ph + 4, &dst, 4);
	ph[8] = 0;
	ph[9] = 17;
	ph[10] = (uint8_t)(ulen >> 8);
	ph[11] = (uint8_t)ulen;
	return ref_sum(0, ph, 12);
}

static uint16_t ref_udp_csum(uint32_t src, uint32_t dst, const uint8_t *udp, uint16_t ulen)
{
	return (uint16_t)~ref_sum(pseudo_sum(src, dst, ulen), udp, ulen);
}

static void eth(struct buf *f, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
	f->n = 0;
	putmem(f, dst, 6);
	putmem(f, src, 6);
	put16(f, type);
}

static void arp(struct buf *f, const uint8_t *eth_dst, uint16_t op, const uint8_t *sha,
		uint32_t spa, const uint8_t *tha, uint32_t tpa)
{
	eth(f, eth_dst, sha, 0x0806);
	put16(f, 1);
	put16(f, 0x0800);
	put8(f, 6);
	put8(f, 4);
	put16(f, op);
	putmem(f, sha, 6);
	putip(f, spa);
	putmem(f, tha, 6);
	putip(f, tpa);
}

struct iphdr_opts {
	uint8_t version, ihl, ttl, proto;
	uint16_t frag;		/* flags and offset field */
	uint32_t src, dst;
};

static struct iphdr_opts ip_default(uint8_t proto, uint32_t dst)
{
	struct iphdr_opts o = { 4, 5, 64, proto, 0, PEER_IP, dst };

	return o;
}

/* Starts an IPv4 header at f->n; ip_end fills in total length and checksum. */
static size_t ip_begin(struct buf *f, const struct iphdr_opts *o)
{
	size_t off = f->n;

	put8(f, (uint8_t)(o->version << 4 | (o->ihl & 0xf)));
	put8(f, 0);
	put16(f, 0);
	put16(f, 0x1234);
	put16(f, o->frag);
	put8(f, o->ttl);
	put8(f, o->proto);
	put16(f, 0);
	putip(f, o->src);
	putip(f, o->dst);
	for (int i = 5; i < o->ihl; i++) {
		put8(f, 1);	/* NOP options */
		put8(f, 1);
		put8(f, 1);
		put8(f, 1);
	}
	return off;
}

static void ip_end(struct buf *f, size_t off, size_t hlen)
{
	set16(f, off + 2, (uint16_t)(f->n - off));
	set16(f, off + 10, 0);
	set16(f, off + 10, ref_csum(f->b + off, hlen));
}

enum csum_mode { CSUM_OK, CSUM_NONE, CSUM_BAD };

static void mk_udp_ex(struct buf *f, const uint8_t *dst_mac, const struct iphdr_opts *o,
		      uint16_t sport, uint16_t dport, const void *data, size_t len,
		      enum csum_mode mode)
{
	size_t ipoff, uoff;

	eth(f, dst_mac, peer_mac, 0x0800);
	ipoff = ip_begin(f, o);
	uoff = f->n;
	put16(f, sport);
	put16(f, dport);
	put16(f, (uint16_t)(8 + len));
	put16(f, 0);
	putmem(f, data, len);
	if (mode != CSUM_NONE) {
		uint16_t c = ref_udp_csum(o->src, o->dst, f->b + uoff, (uint16_t)(8 + len));

		set16(f, uoff + 6, mode == CSUM_BAD ? (uint16_t)(c ^ 0x0101) : (c ? c : 0xffff));
	}
	ip_end(f, ipoff, (size_t)o->ihl * 4);
}

static void mk_udp(struct buf *f, uint32_t dst, uint16_t dport, const void *data, size_t len)
{
	struct iphdr_opts o = ip_default(17, dst);

	mk_udp_ex(f, our_mac, &o, 40000, dport, data, len, CSUM_OK);
}

static void mk_echo_ex(struct buf *f, const uint8_t *dst_mac, const struct iphdr_opts *o,
		       uint8_t type, uint16_t id, uint16_t seq, const void *data, size_t len)
{
	size_t ipoff, ioff;

	eth(f, dst_mac, peer_mac, 0x0800);
	ipoff = ip_begin(f, o);
	ioff = f->n;
	put8(f, type);
	put8(f, 0);
	put16(f, 0);
	put16(f, id);
	put16(f, seq);
	putmem(f, data, len);
	set16(f, ioff + 2, ref_csum(f->b + ioff, f->n - ioff));
	ip_end(f, ipoff, (size_t)o->ihl * 4);
}

static void mk_echo(struct buf *f, uint16_t id, uint16_t seq, const void *data, size_t len)
{
	struct iphdr_opts o = ip_default(1, OUR_IP);

	mk_echo_ex(f, our_mac, &o, 8, id, seq, data, len);
}

/* ---- the stack under test and what it sends ---- */

#define MAX_CAPTURE 8

struct harness {
	struct stack *s;
	int ntx;			/* tx calls seen */
	uint8_t frames[MAX_CAPTURE][1600];
	size_t lens[MAX_CAPTURE];
	int tx_rc;
	int nrx;			/* udp_rx calls seen */
	struct udp_dgram last;
	uint8_t last_data[2048];
	bool echo_back;			/* udp_rx answers with stack_udp_reply */
	int reply_rc;
};

static int cap_tx(void *ctx, const void *frame, size_t len)
{
	struct harness *h = ctx;

	if (len <= sizeof(h->frames[0]))
		memcpy(h->frames[h->ntx % MAX_CAPTURE], frame, len);
	h->lens[h->ntx % MAX_CAPTURE] = len;
	h->ntx++;
	return h->tx_rc;
}

static void cap_udp(void *app, const struct udp_dgram *d)
{
	struct harness *h = app;

	h->nrx++;
	h->last = *d;
	if (d->len <= sizeof(h->last_data))
		memcpy(h->last_data, d->data, d->len);
	h->last.data = h->last_data;
	if (h->echo_back)
		h->reply_rc = stack_udp_reply(h->s, d, d->data, d->len);
}

static const uint8_t *last_frame(const struct harness *h, size_t *len)
{
	int i = (h->ntx - 1) % MAX_CAPTURE;

	*len = h->lens[i];
	return h->frames[i];
}

static void setup(struct harness *h)
{
	struct stack_ops ops = { cap_tx, h, cap_udp, h };
	int rc;

	memset(h, 0, sizeof(*h));
	rc = stack_create(&h->s, our_mac, OUR_IP, NETMASK, &ops);
	CHECK_EQ(rc, 0);
	if (rc)
		exit(1);
}

static void teardown(struct harness *h)
{
	stack_destroy(h->s);
	h->s = NULL;
}

/* Exactly-sized heap copy, so a sanitizer flags any read beyond len. */
static void feed_raw(struct harness *h, const uint8_t *p, size_t len)
{
	uint8_t *copy = malloc(len ? len : 1);

	if (!copy)
		exit(2);
	if (len)
		memcpy(copy, p, len);
	stack_input(h->s, copy, len);
	free(copy);
}

static void feed(struct harness *h, const struct buf *f)
{
	feed_raw(h, f->b, f->n);
}

static struct stack_counters snap(const struct harness *h)
{
	return *stack_counters(h->s);
}

/* ---- counter bookkeeping ---- */

struct counter_field {
	const char *name;
	size_t off;
};

#define FIELD(n) { #n, offsetof(struct stack_counters, n) }

static const struct counter_field drop_fields[] = {
	FIELD(drop_short),	FIELD(drop_oversize),	FIELD(drop_foreign_mac),
	FIELD(drop_ethertype),	FIELD(drop_ip_bad),	FIELD(drop_ip_csum),
	FIELD(drop_ip_frag),	FIELD(drop_ip_foreign), FIELD(drop_proto),
	FIELD(drop_udp_bad),	FIELD(drop_udp_noport), FIELD(drop_icmp_bad),
	FIELD(drop_src_mac),	FIELD(drop_tx),
};

static uint64_t field(const struct stack_counters *c, size_t off)
{
	uint64_t v;

	memcpy(&v, (const uint8_t *)c + off, sizeof(v));
	return v;
}

#define OFF(n) offsetof(struct stack_counters, n)

/*
 * Feeds one frame that must be dropped under the counter at drop_off and under no other,
 * with nothing sent and nothing delivered.
 */
static void expect_drop(struct harness *h, const struct buf *f, size_t drop_off, int line)
{
	struct stack_counters before = snap(h), after;
	int ntx = h->ntx, nrx = h->nrx;

	feed(h, f);
	after = snap(h);
	for (size_t i = 0; i < sizeof(drop_fields) / sizeof(drop_fields[0]); i++) {
		uint64_t want = field(&before, drop_fields[i].off) + (drop_fields[i].off == drop_off);
		uint64_t got = field(&after, drop_fields[i].off);

		if (got == want) {
			passed++;
		} else {
			failed++;
			printf("FAIL line %d: %s went from %llu to %llu\n", line, drop_fields[i].name,
			       (unsigned long long)field(&before, drop_fields[i].off),
			       (unsigned long long)got);
		}
	}
	CHECK_EQ(after.rx_frames, before.rx_frames + 1);
	CHECK_EQ(after.rx_bytes, before.rx_bytes + f->n);
	CHECK_EQ(h->ntx, ntx);
	CHECK_EQ(h->nrx, nrx);
	CHECK_EQ(after.arp_rx, before.arp_rx);
	CHECK_EQ(after.udp_rx, before.udp_rx);
	CHECK_EQ(after.icmp_echo, before.icmp_echo);
}

#define EXPECT_DROP(h, f, counter) expect_drop((h), (f), OFF(counter), __LINE__)

/* Teaches the stack the peer's MAC with a request for our address. */
static void learn_peer(struct harness *h, const uint8_t *mac, uint32_t ip)
{
	struct buf f;

	arp(&f, bcast_mac, 1, mac, ip, zero_mac, OUR_IP);
	feed(h, &f);
}

/* ---- tests ---- */

static void test_create_args(void)
{
	struct harness h;
	struct stack_ops ops = { cap_tx, &h, cap_udp, &h };
	struct stack_ops no_tx = { NULL, NULL, cap_udp, &h };
	struct stack *s = (struct stack *)&h;

	CHECK_EQ(stack_create(NULL, our_mac, OUR_IP, NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, NETMASK, NULL), -EINVAL);
	CHECK(s == NULL);
	CHECK_EQ(stack_create(&s, NULL, OUR_IP, NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, NETMASK, &no_tx), -EINVAL);
	CHECK_EQ(stack_create(&s, mcast_mac, OUR_IP, NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, zero_mac, OUR_IP, NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, ip4(255, 0, 255, 0), &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, 0, NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, ip4(127, 0, 0, 1), NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, ip4(224, 0, 0, 1), NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, ip4(10, 0, 0, 0), NETMASK, &ops), -EINVAL);
	CHECK_EQ(stack_create(&s, our_mac, ip4(10, 0, 0, 255), NETMASK, &ops), -EINVAL);
	CHECK(s == NULL);

	CHECK_EQ(stack_create(&s, our_mac, ip4(10, 0, 0, 0), ip4(255, 255, 255, 254), &ops), 0);
	stack_destroy(s);
	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, ip4(255, 255, 255, 255), &ops), 0);
	stack_destroy(s);
	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, NETMASK, &ops), 0);
	CHECK(s != NULL);
	CHECK(stack_counters(s) != NULL);
	CHECK_EQ(stack_counters(s)->rx_frames, 0);
	stack_destroy(s);

	CHECK(stack_counters(NULL) == NULL);
	stack_input(NULL, NULL, 0);
	stack_destroy(NULL);
	CHECK_EQ(stack_udp_bind(NULL, 7), -EINVAL);
	CHECK_EQ(stack_udp_send(NULL, PEER_IP, 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_reply(NULL, NULL, "x", 1), -EINVAL);
}

static void test_arp_reply_bytes(void)
{
	struct harness h;
	struct buf req, want;
	const uint8_t *out;
	size_t len;

	setup(&h);
	arp(&req, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	feed(&h, &req);

	arp(&want, peer_mac, 2, our_mac, OUR_IP, peer_mac, PEER_IP);
	while (want.n < 60)
		put8(&want, 0);

	CHECK_EQ(h.ntx, 1);
	out = last_frame(&h, &len);
	CHECK_EQ(len, 60);
	CHECK(len == want.n && memcmp(out, want.b, want.n) == 0);
	CHECK_EQ(snap(&h).arp_rx, 1);
	CHECK_EQ(snap(&h).arp_tx, 1);
	CHECK_EQ(snap(&h).tx_frames, 1);
	CHECK_EQ(snap(&h).tx_bytes, 60);

	/* A request learns the sender: a send now needs no ARP. */
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 5000, 6000, "hi", 2), 0);
	CHECK_EQ(h.ntx, 2);
	out = last_frame(&h, &len);
	CHECK(memcmp(out, peer_mac, 6) == 0);
	CHECK_EQ(snap(&h).arp_unresolved, 0);

	/* A probe (sender 0.0.0.0) for our address is answered to its MAC. */
	arp(&req, bcast_mac, 1, peer_mac2, 0, zero_mac, OUR_IP);
	feed(&h, &req);
	CHECK_EQ(h.ntx, 3);
	out = last_frame(&h, &len);
	CHECK(memcmp(out, peer_mac2, 6) == 0);
	CHECK_EQ(rd16(out + 20), 2);
	CHECK_EQ(rdip(out + 38), 0);
	teardown(&h);
}

static void test_arp_not_for_us(void)
{
	struct harness h;
	struct buf f;

	setup(&h);
	/* Request for another host: counted, not answered, sender not learned. */
	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, ip4(10, 0, 0, 3));
	feed(&h, &f);
	CHECK_EQ(h.ntx, 0);
	CHECK_EQ(snap(&h).arp_rx, 1);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), -EHOSTUNREACH);
	CHECK_EQ(h.ntx, 1);	/* that was our ARP request */

	/* Reply for us learns; then a gratuitous ARP from the peer updates its MAC. */
	arp(&f, our_mac, 2, peer_mac, PEER_IP, our_mac, OUR_IP);
	feed(&h, &f);
	CHECK_EQ(h.ntx, 1);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), 0);
	arp(&f, bcast_mac, 1, peer_mac2, PEER_IP, zero_mac, PEER_IP);
	feed(&h, &f);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), 0);
	{
		size_t len;
		const uint8_t *out = last_frame(&h, &len);

		CHECK(memcmp(out, peer_mac2, 6) == 0);
	}

	/* Someone claiming our own address is not answered and changes nothing. */
	{
		int ntx = h.ntx;

		arp(&f, bcast_mac, 1, other_mac, OUR_IP, zero_mac, OUR_IP);
		feed(&h, &f);
		CHECK_EQ(h.ntx, ntx + 1);	/* answered like any request for us */
		arp(&f, bcast_mac, 2, other_mac, OUR_IP, zero_mac, OUR_IP);
		feed(&h, &f);
		CHECK_EQ(h.ntx, ntx + 1);
		CHECK_EQ(stack_udp_send(h.s, OUR_IP, 1, 2, "x", 1), -EINVAL);
		CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), 0);
		CHECK(memcmp(last_frame(&h, &(size_t){ 0 }), peer_mac2, 6) == 0);
	}
	teardown(&h);
}

static void test_arp_malformed(void)
{
	struct harness h;
	struct buf f;

	setup(&h);
	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	f.n -= 1;
	EXPECT_DROP(&h, &f, drop_short);

	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	set16(&f, 14, 6);	/* hardware type IEEE 802 */
	EXPECT_DROP(&h, &f, drop_proto);

	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	set16(&f, 16, 0x86dd);
	EXPECT_DROP(&h, &f, drop_proto);

	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	f.b[18] = 8;		/* hardware length */
	EXPECT_DROP(&h, &f, drop_proto);

	arp(&f, bcast_mac, 3, peer_mac, PEER_IP, zero_mac, OUR_IP);
	EXPECT_DROP(&h, &f, drop_proto);

	arp(&f, bcast_mac, 1, mcast_mac, PEER_IP, zero_mac, OUR_IP);
	memcpy(f.b + 6, peer_mac, 6);
	EXPECT_DROP(&h, &f, drop_proto);

	/* Trailing padding after a valid ARP packet is fine. */
	arp(&f, bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	while (f.n < 60)
		put8(&f, 0xee);
	feed(&h, &f);
	CHECK_EQ(h.ntx, 1);
	teardown(&h);
}

static void test_arp_storm_bounded(void)
{
	struct harness h;
	struct buf f;
	uint8_t mac[6] = { 0x02, 0x11, 0, 0, 0, 0 };

	setup(&h);
	/* Subnet /24 limits us to 253 neighbours; use a bigger set by repeating. */
	for (int round = 0; round < 40; round++) {
		for (int i = 2; i < 255; i++) {
			mac[5] = (uint8_t)i;
			arp(&f, bcast_mac, 1, mac, ip4(10, 0, 0, (uint8_t)i), zero_mac, OUR_IP);
			feed(&h, &f);
		}
	}
	CHECK_EQ(snap(&h).arp_rx, 40 * 253);
	CHECK_EQ(snap(&h).arp_tx, 40 * 253);
	/* The 64 most recent senders (10.0.0.191..254) are known, older ones evicted. */
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 254), 1, 2, "x", 1), 0);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 191), 1, 2, "x", 1), 0);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 190), 1, 2, "x", 1), -EHOSTUNREACH);
	teardown(&h);

	/* Refreshing an entry protects it from eviction; the oldest one goes instead. */
	setup(&h);
	for (int i = 2; i < 66; i++) {
		mac[5] = (uint8_t)i;
		arp(&f, bcast_mac, 1, mac, ip4(10, 0, 0, (uint8_t)i), zero_mac, OUR_IP);
		feed(&h, &f);
	}
	mac[5] = 2;
	arp(&f, bcast_mac, 1, mac, ip4(10, 0, 0, 2), zero_mac, OUR_IP);
	feed(&h, &f);
	mac[5] = 100;
	arp(&f, bcast_mac, 1, mac, ip4(10, 0, 0, 100), zero_mac, OUR_IP);
	feed(&h, &f);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 2), 1, 2, "x", 1), 0);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 100), 1, 2, "x", 1), 0);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 3), 1, 2, "x", 1), -EHOSTUNREACH);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 4), 1, 2, "x", 1), 0);
	teardown(&h);
}

/* Checks an outgoing IPv4 header; returns its total length. */
static size_t check_ip_out(const uint8_t *ip, uint8_t proto, uint32_t src, uint32_t dst)
{
	CHECK_EQ(ip[0], 0x45);
	CHECK_EQ(ref_csum(ip, 20), 0);
	CHECK_EQ(rd16(ip + 6) & 0x3fff, 0);	/* no MF, no offset */
	CHECK_EQ(ip[8], 64);
	CHECK_EQ(ip[9], proto);
	CHECK(rdip(ip + 12) == src);
	CHECK(rdip(ip + 16) == dst);
	return rd16(ip + 2);
}

static void check_echo_reply(struct harness *h, const struct buf *req, size_t req_ihl)
{
	const uint8_t *out, *rq_icmp = req->b + 14 + req_ihl * 4;
	size_t len, tot, icmp_len = rd16(req->b + 16) - req_ihl * 4;

	CHECK_EQ(h->ntx, 1);
	out = last_frame(h, &len);
	CHECK(memcmp(out, peer_mac, 6) == 0);
	CHECK(memcmp(out + 6, our_mac, 6) == 0);
	CHECK_EQ(rd16(out + 12), 0x0800);
	tot = check_ip_out(out + 14, 1, OUR_IP, PEER_IP);
	CHECK_EQ(tot, 20 + icmp_len);
	CHECK_EQ(len, 14 + tot < 60 ? 60 : 14 + tot);
	if (14 + tot > len)
		return;
	CHECK_EQ(out[34], 0);
	CHECK_EQ(out[35], 0);
	CHECK_EQ(ref_csum(out + 34, icmp_len), 0);
	CHECK(memcmp(out + 38, rq_icmp + 4, icmp_len - 4) == 0);	/* id, seq, payload */
	for (size_t i = 14 + tot; i < len; i++)
		CHECK_EQ(out[i], 0);
}

static void test_icmp_echo(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o;
	uint8_t payload[1472];

	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + 3);

	setup(&h);
	mk_echo(&f, 0xbeef, 42, payload, 37);	/* odd length */
	feed(&h, &f);
	check_echo_reply(&h, &f, 5);
	CHECK_EQ(snap(&h).icmp_echo, 1);
	teardown(&h);

	/* IP options in the request: the reply has none but the same ICMP message. */
	setup(&h);
	o = ip_default(1, OUR_IP);
	o.ihl = 7;
	mk_echo_ex(&f, our_mac, &o, 8, 1, 2, payload, 100);
	feed(&h, &f);
	check_echo_reply(&h, &f, 7);
	teardown(&h);

	/* Empty payload, Ethernet padding of junk: the reply covers the total length only. */
	setup(&h);
	mk_echo(&f, 7, 8, NULL, 0);
	while (f.n < 60)
		put8(&f, 0xaa);
	feed(&h, &f);
	check_echo_reply(&h, &f, 5);
	teardown(&h);

	/* Largest echo that fits a frame. */
	setup(&h);
	mk_echo(&f, 9, 10, payload, 1472);
	CHECK_EQ(f.n, 1514);
	feed(&h, &f);
	check_echo_reply(&h, &f, 5);
	teardown(&h);

	/* Ethernet broadcast carrying a unicast echo to us is still answered. */
	setup(&h);
	o = ip_default(1, OUR_IP);
	mk_echo_ex(&f, bcast_mac, &o, 8, 1, 1, payload, 8);
	feed(&h, &f);
	check_echo_reply(&h, &f, 5);
	teardown(&h);
}

static void test_icmp_drops(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o;

	setup(&h);
	mk_echo(&f, 1, 1, "abcdef", 6);
	f.b[14 + 20 + 8] ^= 0x40;	/* payload changed after checksumming */
	EXPECT_DROP(&h, &f, drop_icmp_bad);

	o = ip_default(1, OUR_IP);
	mk_echo_ex(&f, our_mac, &o, 13, 1, 1, "abcdefghijkl", 12);	/* timestamp */
	EXPECT_DROP(&h, &f, drop_proto);

	mk_echo_ex(&f, our_mac, &o, 0, 1, 1, "ab", 2);	/* an echo reply */
	EXPECT_DROP(&h, &f, drop_proto);

	o = ip_default(1, ip4(10, 0, 0, 255));
	mk_echo_ex(&f, bcast_mac, &o, 8, 1, 1, "ab", 2);
	EXPECT_DROP(&h, &f, drop_ip_foreign);

	o = ip_default(1, ip4(255, 255, 255, 255));
	mk_echo_ex(&f, bcast_mac, &o, 8, 1, 1, "ab", 2);
	EXPECT_DROP(&h, &f, drop_ip_foreign);

	/* ICMP message shorter than its 8-byte header. */
	o = ip_default(1, OUR_IP);
	eth(&f, our_mac, peer_mac, 0x0800);
	{
		size_t off = ip_begin(&f, &o);

		put8(&f, 8);
		put8(&f, 0);
		put16(&f, 0xf7ff);
		ip_end(&f, off, 20);
	}
	EXPECT_DROP(&h, &f, drop_short);

	/*
	 * A good request from a group or all-zero source MAC: a reply would go to every host
	 * of a group (or nowhere), so none is sent. The MAC is outside every checksum.
	 */
	mk_echo(&f, 1, 1, "abcdef", 6);
	memcpy(f.b + 6, bcast_mac, 6);
	EXPECT_DROP(&h, &f, drop_src_mac);
	memcpy(f.b + 6, mcast_mac, 6);
	EXPECT_DROP(&h, &f, drop_src_mac);
	memcpy(f.b + 6, zero_mac, 6);
	EXPECT_DROP(&h, &f, drop_src_mac);
	teardown(&h);
}

static void test_udp_deliver(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o;
	uint8_t big[1472];

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i ^ 0x5a);

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);
	mk_udp(&f, OUR_IP, 7, "hello", 5);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 1);
	CHECK(h.last.src_ip == PEER_IP);
	CHECK(h.last.dst_ip == OUR_IP);
	CHECK_EQ(h.last.src_port, 40000);
	CHECK_EQ(h.last.dst_port, 7);
	CHECK(memcmp(h.last.src_mac, peer_mac, 6) == 0);
	CHECK_EQ(h.last.len, 5);
	CHECK(memcmp(h.last_data, "hello", 5) == 0);
	CHECK_EQ(snap(&h).udp_rx, 1);
	CHECK_EQ(h.ntx, 0);

	/* No checksum is fine. */
	o = ip_default(17, OUR_IP);
	mk_udp_ex(&f, our_mac, &o, 1, 7, "abc", 3, CSUM_NONE);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 2);
	CHECK_EQ(h.last.len, 3);

	/* Empty datagram. */
	mk_udp(&f, OUR_IP, 7, NULL, 0);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 3);
	CHECK_EQ(h.last.len, 0);

	/* Limited and subnet broadcast. */
	o = ip_default(17, ip4(255, 255, 255, 255));
	mk_udp_ex(&f, bcast_mac, &o, 68, 7, "b1", 2, CSUM_OK);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 4);
	CHECK(h.last.dst_ip == ip4(255, 255, 255, 255));
	o = ip_default(17, ip4(10, 0, 0, 255));
	mk_udp_ex(&f, bcast_mac, &o, 68, 7, "b2", 2, CSUM_OK);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 5);
	CHECK(h.last.dst_ip == ip4(10, 0, 0, 255));

	/* Source 0.0.0.0 (a host without an address yet) to broadcast. */
	o = ip_default(17, ip4(255, 255, 255, 255));
	o.src = 0;
	mk_udp_ex(&f, bcast_mac, &o, 68, 7, "b3", 2, CSUM_OK);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 6);

	/* Ethernet padding after a short datagram is not data. */
	mk_udp(&f, OUR_IP, 7, "p", 1);
	while (f.n < 60)
		put8(&f, 0xcc);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 7);
	CHECK_EQ(h.last.len, 1);

	/* IP options are skipped; don't-fragment is not a fragment. */
	o = ip_default(17, OUR_IP);
	o.ihl = 8;
	o.frag = 0x4000;
	mk_udp_ex(&f, our_mac, &o, 9, 7, "opt", 3, CSUM_OK);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 8);
	CHECK_EQ(h.last.len, 3);
	CHECK(memcmp(h.last_data, "opt", 3) == 0);

	/* UDP length shorter than the IP payload: the datagram ends where UDP says. */
	mk_udp(&f, OUR_IP, 7, "ab", 2);
	put16(&f, 0xdead);
	ip_end(&f, 14, 20);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 9);
	CHECK_EQ(h.last.len, 2);

	/* The largest datagram in the largest frame. */
	mk_udp(&f, OUR_IP, 7, big, sizeof(big));
	CHECK_EQ(f.n, 1514);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 10);
	CHECK_EQ(h.last.len, 1472);
	CHECK(memcmp(h.last_data, big, 1472) == 0);

	CHECK_EQ(snap(&h).udp_rx, 10);
	CHECK_EQ(h.ntx, 0);
	teardown(&h);
}

static void test_ip_drops(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o;

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);

	mk_udp(&f, OUR_IP, 7, "data", 4);
	f.b[14 + 10] ^= 0x01;
	EXPECT_DROP(&h, &f, drop_ip_csum);

	o = ip_default(17, OUR_IP);
	o.frag = 0x2000;	/* MF */
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_frag);
	o.frag = 0x0010;	/* offset 128 */
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_frag);
	o.frag = 0x4001;	/* DF and an offset */
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_frag);

	o = ip_default(17, OUR_IP);
	o.version = 6;
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);

	o = ip_default(17, OUR_IP);
	o.ihl = 4;
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);

	o = ip_default(17, OUR_IP);
	o.ttl = 0;
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);

	/* Total length smaller than the header. */
	mk_udp(&f, OUR_IP, 7, "data", 4);
	set16(&f, 16, 19);
	set16(&f, 24, 0);
	set16(&f, 24, ref_csum(f.b + 14, 20));
	EXPECT_DROP(&h, &f, drop_ip_bad);

	/* Total length beyond the end of the frame: truncated. */
	mk_udp(&f, OUR_IP, 7, "data", 4);
	f.n -= 2;
	EXPECT_DROP(&h, &f, drop_short);

	/* Header length beyond the end of the frame. */
	eth(&f, our_mac, peer_mac, 0x0800);
	o = ip_default(17, OUR_IP);
	o.ihl = 15;
	ip_begin(&f, &o);
	f.n = 14 + 40;
	EXPECT_DROP(&h, &f, drop_short);

	/* Less than a minimal IP header. */
	mk_udp(&f, OUR_IP, 7, "data", 4);
	f.n = 14 + 19;
	EXPECT_DROP(&h, &f, drop_short);

	/* Not our address, in the subnet and outside it. */
	mk_udp(&f, ip4(10, 0, 0, 3), 7, "data", 4);
	EXPECT_DROP(&h, &f, drop_ip_foreign);
	mk_udp(&f, ip4(192, 168, 0, 1), 7, "data", 4);
	EXPECT_DROP(&h, &f, drop_ip_foreign);
	mk_udp(&f, ip4(224, 0, 0, 251), 7, "data", 4);
	EXPECT_DROP(&h, &f, drop_ip_foreign);

	/* Sources no host may use. */
	o = ip_default(17, OUR_IP);
	o.src = ip4(224, 0, 0, 1);
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);
	o.src = ip4(10, 0, 0, 255);
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);
	o.src = OUR_IP;
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	EXPECT_DROP(&h, &f, drop_ip_bad);

	/* TCP and other protocols. */
	o = ip_default(6, OUR_IP);
	eth(&f, our_mac, peer_mac, 0x0800);
	ip_end(&f, ip_begin(&f, &o), 20);
	EXPECT_DROP(&h, &f, drop_proto);
	teardown(&h);
}

static void test_udp_drops(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o = ip_default(17, OUR_IP);

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);

	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_BAD);
	EXPECT_DROP(&h, &f, drop_udp_bad);

	mk_udp(&f, OUR_IP, 7, "data", 4);
	set16(&f, 38, 13);	/* UDP length past the IP payload */
	EXPECT_DROP(&h, &f, drop_udp_bad);
	/* The same without a checksum, so the length check alone must catch it. */
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_NONE);
	set16(&f, 38, 13);
	EXPECT_DROP(&h, &f, drop_udp_bad);

	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_NONE);
	set16(&f, 38, 7);	/* UDP length under its header */
	EXPECT_DROP(&h, &f, drop_udp_bad);

	/* IP payload too short for a UDP header. */
	eth(&f, our_mac, peer_mac, 0x0800);
	{
		size_t off = ip_begin(&f, &o);

		put16(&f, 1);
		put16(&f, 7);
		ip_end(&f, off, 20);
	}
	EXPECT_DROP(&h, &f, drop_short);

	mk_udp(&f, OUR_IP, 8, "data", 4);
	EXPECT_DROP(&h, &f, drop_udp_noport);
	mk_udp(&f, OUR_IP, 0, "data", 4);
	EXPECT_DROP(&h, &f, drop_udp_noport);

	/* A checksum computed for another destination fails here. */
	o.dst = ip4(10, 0, 0, 9);
	mk_udp_ex(&f, our_mac, &o, 1, 7, "data", 4, CSUM_OK);
	memcpy(f.b + 30, &(uint32_t){ OUR_IP }, 4);
	set16(&f, 24, 0);
	set16(&f, 24, ref_csum(f.b + 14, 20));
	EXPECT_DROP(&h, &f, drop_udp_bad);
	teardown(&h);
}

static void test_eth_drops(void)
{
	struct harness h;
	struct buf f;
	uint8_t big[1500] = { 0 };

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);

	mk_udp(&f, OUR_IP, 7, "data", 4);
	f.n = 13;
	EXPECT_DROP(&h, &f, drop_short);
	f.n = 0;
	EXPECT_DROP(&h, &f, drop_short);
	stack_input(h.s, NULL, 100);
	CHECK_EQ(snap(&h).drop_short, 3);

	/* 1515 bytes: one more than the largest frame. */
	mk_udp(&f, OUR_IP, 7, big, 1472);
	put8(&f, 0);
	CHECK_EQ(f.n, 1515);
	EXPECT_DROP(&h, &f, drop_oversize);

	mk_udp(&f, OUR_IP, 7, "data", 4);
	memcpy(f.b, other_mac, 6);
	EXPECT_DROP(&h, &f, drop_foreign_mac);
	memcpy(f.b, mcast_mac, 6);
	EXPECT_DROP(&h, &f, drop_foreign_mac);

	mk_udp(&f, OUR_IP, 7, "data", 4);
	set16(&f, 12, 0x86dd);
	EXPECT_DROP(&h, &f, drop_ethertype);

	/* 802.1Q tag in front of an otherwise valid IPv4 frame. */
	{
		struct buf v;

		mk_udp(&f, OUR_IP, 7, "data", 4);
		v.n = 0;
		putmem(&v, f.b, 12);
		put16(&v, 0x8100);
		put16(&v, 5);
		putmem(&v, f.b + 12, f.n - 12);
		EXPECT_DROP(&h, &v, drop_ethertype);
	}

	/* A frame of exactly a header and nothing else. */
	eth(&f, our_mac, peer_mac, 0x0800);
	EXPECT_DROP(&h, &f, drop_short);
	eth(&f, our_mac, peer_mac, 0x0806);
	EXPECT_DROP(&h, &f, drop_short);
	teardown(&h);
}

/* Checks a UDP frame we sent; returns a pointer to its payload. */
static const uint8_t *check_udp_out(struct harness *h, const uint8_t *dst_mac, uint32_t dst,
				    uint16_t sport, uint16_t dport, const void *data,
				    size_t len)
{
	size_t flen, tot;
	const uint8_t *out = last_frame(h, &flen);
	const uint8_t *udp = out + 34;

	CHECK(memcmp(out, dst_mac, 6) == 0);
	CHECK(memcmp(out + 6, our_mac, 6) == 0);
	CHECK_EQ(rd16(out + 12), 0x0800);
	tot = check_ip_out(out + 14, 17, OUR_IP, dst);
	CHECK_EQ(tot, 28 + len);
	CHECK_EQ(flen, 42 + len < 60 ? 60 : 42 + len);
	CHECK_EQ(rd16(udp), sport);
	CHECK_EQ(rd16(udp + 2), dport);
	CHECK_EQ(rd16(udp + 4), 8 + len);
	CHECK(rd16(udp + 6) != 0);
	CHECK_EQ(ref_udp_csum(OUR_IP, dst, udp, (uint16_t)(8 + len)), 0);
	CHECK(len == 0 || memcmp(udp + 8, data, len) == 0);
	return udp + 8;
}

static void test_udp_send_arp(void)
{
	struct harness h;
	struct buf f, want;
	const uint8_t *out;
	size_t len;

	setup(&h);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 5000, 53, "query", 5), -EHOSTUNREACH);
	CHECK_EQ(snap(&h).arp_unresolved, 1);
	CHECK_EQ(snap(&h).arp_tx, 1);
	CHECK_EQ(snap(&h).udp_tx, 0);
	CHECK_EQ(h.ntx, 1);

	arp(&want, bcast_mac, 1, our_mac, OUR_IP, zero_mac, PEER_IP);
	while (want.n < 60)
		put8(&want, 0);
	out = last_frame(&h, &len);
	CHECK(len == want.n && memcmp(out, want.b, want.n) == 0);

	/* Retrying before the answer arrives asks again. */
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 5000, 53, "query", 5), -EHOSTUNREACH);
	CHECK_EQ(snap(&h).arp_unresolved, 2);
	CHECK_EQ(h.ntx, 2);

	arp(&f, our_mac, 2, peer_mac, PEER_IP, our_mac, OUR_IP);
	feed(&h, &f);
	CHECK_EQ(h.ntx, 2);	/* replies are not answered */

	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 5000, 53, "query", 5), 0);
	CHECK_EQ(h.ntx, 3);
	check_udp_out(&h, peer_mac, PEER_IP, 5000, 53, "query", 5);
	CHECK_EQ(snap(&h).udp_tx, 1);

	/* Largest payload; one byte more is refused without sending anything. */
	{
		static uint8_t big[1473];

		for (size_t i = 0; i < sizeof(big); i++)
			big[i] = (uint8_t)i;
		CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, big, 1472), 0);
		out = last_frame(&h, &len);
		CHECK_EQ(len, 1514);
		check_udp_out(&h, peer_mac, PEER_IP, 1, 2, big, 1472);
		CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, big, 1473), -EMSGSIZE);
	}
	CHECK_EQ(h.ntx, 4);

	/* Two sends differ in IP identification. */
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "a", 1), 0);
	out = last_frame(&h, &len);
	{
		uint16_t id1 = rd16(out + 18);

		CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "a", 1), 0);
		out = last_frame(&h, &len);
		CHECK(rd16(out + 18) != id1);
	}
	teardown(&h);
}

static void test_udp_send_errors(void)
{
	struct harness h;

	setup(&h);
	learn_peer(&h, peer_mac, PEER_IP);
	CHECK_EQ(h.ntx, 1);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 0, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, NULL, 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, OUR_IP, 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, 0, 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, ip4(224, 0, 0, 1), 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, ip4(127, 0, 0, 1), 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 0), 1, 2, "x", 1), -EINVAL);
	CHECK_EQ(stack_udp_send(h.s, ip4(192, 168, 1, 1), 1, 2, "x", 1), -ENETUNREACH);
	CHECK_EQ(h.ntx, 1);
	CHECK_EQ(snap(&h).arp_unresolved, 0);

	/* Zero-length datagram with no buffer is fine. */
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, NULL, 0), 0);
	check_udp_out(&h, peer_mac, PEER_IP, 1, 2, NULL, 0);

	/* Broadcasts need no ARP. */
	CHECK_EQ(stack_udp_send(h.s, ip4(255, 255, 255, 255), 68, 67, "dhcp", 4), 0);
	check_udp_out(&h, bcast_mac, ip4(255, 255, 255, 255), 68, 67, "dhcp", 4);
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 255), 9, 9, "sub", 3), 0);
	check_udp_out(&h, bcast_mac, ip4(10, 0, 0, 255), 9, 9, "sub", 3);
	CHECK_EQ(snap(&h).arp_unresolved, 0);

	/* The tx callback's error comes back and is counted. */
	h.tx_rc = -ENOBUFS;
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), -ENOBUFS);
	CHECK_EQ(snap(&h).drop_tx, 1);
	h.tx_rc = 1;	/* a callback breaking the contract still yields -errno */
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 1, 2, "x", 1), -EIO);
	CHECK_EQ(snap(&h).drop_tx, 2);
	CHECK_EQ(snap(&h).udp_tx, 3);
	teardown(&h);
}

/* A payload whose checksum sums to zero must go out as 0xffff, never 0 ("none"). */
static void test_udp_csum_zero(void)
{
	struct harness h;
	uint8_t udp[10] = { 0x13, 0x88, 0x00, 0x35, 0x00, 10, 0, 0, 0, 0 };
	uint16_t rest, w;
	const uint8_t *out;
	size_t len;

	rest = ref_sum(pseudo_sum(OUR_IP, PEER_IP, 10), udp, 10);
	w = (uint16_t)~rest;	/* adding it makes the sum 0xffff, so the checksum 0 */
	udp[8] = (uint8_t)(w >> 8);
	udp[9] = (uint8_t)w;

	setup(&h);
	learn_peer(&h, peer_mac, PEER_IP);
	CHECK_EQ(stack_udp_send(h.s, PEER_IP, 5000, 53, udp + 8, 2), 0);
	out = last_frame(&h, &len);
	CHECK_EQ(rd16(out + 40), 0xffff);
	teardown(&h);
}

static void test_udp_reply(void)
{
	struct harness h;
	struct buf f;
	struct iphdr_opts o;
	struct udp_dgram d;

	setup(&h);
	h.echo_back = true;
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);
	mk_udp(&f, OUR_IP, 7, "ping!", 5);
	feed(&h, &f);
	CHECK_EQ(h.nrx, 1);
	CHECK_EQ(h.reply_rc, 0);
	CHECK_EQ(h.ntx, 1);
	check_udp_out(&h, peer_mac, PEER_IP, 7, 40000, "ping!", 5);
	CHECK_EQ(snap(&h).arp_unresolved, 0);
	CHECK_EQ(snap(&h).udp_tx, 1);

	/* A reply to a broadcast comes from our own address. */
	o = ip_default(17, ip4(255, 255, 255, 255));
	mk_udp_ex(&f, bcast_mac, &o, 1234, 7, "all", 3, CSUM_OK);
	feed(&h, &f);
	CHECK_EQ(h.reply_rc, 0);
	check_udp_out(&h, peer_mac, PEER_IP, 7, 1234, "all", 3);
	h.echo_back = false;

	d = h.last;
	CHECK_EQ(stack_udp_reply(h.s, &d, "later", 5), 0);
	check_udp_out(&h, peer_mac, PEER_IP, 7, 1234, "later", 5);
	CHECK_EQ(stack_udp_reply(h.s, NULL, "x", 1), -EINVAL);
	d.src_port = 0;
	CHECK_EQ(stack_udp_reply(h.s, &d, "x", 1), -EINVAL);
	d = h.last;
	memcpy(d.src_mac, bcast_mac, 6);
	CHECK_EQ(stack_udp_reply(h.s, &d, "x", 1), -EINVAL);
	d = h.last;
	CHECK_EQ(stack_udp_reply(h.s, &d, "x", 1473), -EMSGSIZE);
	CHECK_EQ(h.ntx, 3);
	teardown(&h);
}

static void test_bind(void)
{
	struct harness h;
	struct stack_ops tx_only = { cap_tx, &h, NULL, NULL };
	struct stack *s;

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 0), -EINVAL);
	for (uint16_t p = 1; p <= 16; p++)
		CHECK_EQ(stack_udp_bind(h.s, (uint16_t)(p * 100)), 0);
	CHECK_EQ(stack_udp_bind(h.s, 100), -EADDRINUSE);
	CHECK_EQ(stack_udp_bind(h.s, 9999), -ENOSPC);
	teardown(&h);

	CHECK_EQ(stack_create(&s, our_mac, OUR_IP, NETMASK, &tx_only), 0);
	CHECK_EQ(stack_udp_bind(s, 7), -EINVAL);
	stack_destroy(s);
}

static void test_tx_failure(void)
{
	struct harness h;
	struct buf f;

	setup(&h);
	h.tx_rc = -ENOBUFS;
	mk_echo(&f, 1, 1, "x", 1);
	feed(&h, &f);
	CHECK_EQ(h.ntx, 1);
	CHECK_EQ(snap(&h).icmp_echo, 0);
	CHECK_EQ(snap(&h).drop_tx, 1);
	CHECK_EQ(snap(&h).tx_frames, 0);

	learn_peer(&h, peer_mac, PEER_IP);
	CHECK_EQ(snap(&h).arp_tx, 0);
	CHECK_EQ(snap(&h).drop_tx, 2);

	/* An ARP request that could not be sent still reports the destination unresolved. */
	CHECK_EQ(stack_udp_send(h.s, ip4(10, 0, 0, 5), 1, 2, "x", 1), -EHOSTUNREACH);
	CHECK_EQ(snap(&h).drop_tx, 3);
	teardown(&h);
}

/* ---- robustness: mutated and random frames, counted consistently ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)rng_state;
}

static uint64_t outcomes(const struct stack_counters *c)
{
	uint64_t n = c->arp_rx + c->icmp_echo + c->udp_rx;

	for (size_t i = 0; i < sizeof(drop_fields) / sizeof(drop_fields[0]); i++)
		n += field(c, drop_fields[i].off);
	return n;
}

static void test_robustness(void)
{
	struct harness h;
	struct buf seeds[5], f;
	struct iphdr_opts o = ip_default(17, OUR_IP);
	bool consistent = true;

	setup(&h);
	CHECK_EQ(stack_udp_bind(h.s, 7), 0);
	arp(&seeds[0], bcast_mac, 1, peer_mac, PEER_IP, zero_mac, OUR_IP);
	mk_echo(&seeds[1], 1, 2, "0123456789", 10);
	mk_udp(&seeds[2], OUR_IP, 7, "0123456789", 10);
	o.ihl = 6;
	mk_udp_ex(&seeds[3], our_mac, &o, 1, 7, "abc", 3, CSUM_NONE);
	arp(&seeds[4], our_mac, 2, peer_mac, PEER_IP, our_mac, OUR_IP);

	for (int iter = 0; iter < 200000; iter++) {
		uint64_t before = outcomes(stack_counters(h.s));
		int flips = 1 + (int)(rnd() % 4);

		f = seeds[rnd() % 5];
		for (int i = 0; i < flips; i++) {
			size_t at = rnd() % f.n;

			f.b[at] ^= (uint8_t)(1u << (rnd() % 8));
		}
		if (rnd() % 4 == 0)
			f.n = rnd() % (f.n + 1);
		else if (rnd() % 8 == 0)
			while (f.n < 60)
				put8(&f, (uint8_t)rnd());
		if (rnd() % 16 == 0) {
			f.n = rnd() % 1600;
			for (size_t i = 12; i < f.n; i++)
				f.b[i] = (uint8_t)rnd();
		}
		feed(&h, &f);
		/* Every frame ends in exactly one outcome (tx never fails here). */
		if (outcomes(stack_counters(h.s)) != before + 1)
			consistent = false;
	}
	CHECK(consistent);
	CHECK_EQ(stack_counters(h.s)->rx_frames, 200000);
	CHECK_EQ(stack_counters(h.s)->drop_tx, 0);
	teardown(&h);
}

int main(void)
{
	test_create_args();
	test_arp_reply_bytes();
	test_arp_not_for_us();
	test_arp_malformed();
	test_arp_storm_bounded();
	test_icmp_echo();
	test_icmp_drops();
	test_udp_deliver();
	test_ip_drops();
	test_udp_drops();
	test_eth_drops();
	test_udp_send_arp();
	test_udp_send_errors();
	test_udp_csum_zero();
	test_udp_reply();
	test_bind();
	test_tx_failure();
	test_robustness();

	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
