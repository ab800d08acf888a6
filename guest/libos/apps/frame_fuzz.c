/*
 * frame_fuzz: a robustness load for the echo server's own IPv4 stack. It throws
 * malformed Ethernet/ARP/IPv4/UDP frames, mixed with well-formed requests, at the
 * server's data NIC and counts what it sent; the server's behaviour (no crash, no
 * leak, echo path still answering) is judged elsewhere.
 *
 * It owns one AF_PACKET raw socket bound to --iface, one frame buffer and a seeded
 * pseudo-random generator: the same --seed and addresses give the same frames in the
 * same order, whatever the timing or the send errors, so a run that upsets the server
 * can be replayed. Except for the "random" kind, each frame carries exactly one
 * intended defect ("valid" ones and ARP storm requests none); all its other fields,
 * checksums included, are what a correct sender would put there, so the server's
 * reaction is to that defect. Every kind but "random" therefore meets one reaction in
 * a stack that checks what it should (tests/vm/test_bypass.py maps each to the counter
 * of the project's stack), and --kind sends only the kinds named, so a run can be
 * attributed to one kind.
 *
 * It must not send on any interface but --iface, read or answer any traffic (the
 * socket is bound with protocol 0 so the kernel never queues a frame to it), change
 * any system-wide setting or write any file. The only output on stdout is the
 * summary at the end (one JSON line with --json); a line on stderr at the start
 * gives the seed in case the run is killed before it finishes.
 *
 * Frames are paced against absolute deadlines (frame i is due at t0 + i / rate), so
 * a late wake-up is caught up and the average rate is exact. An ARP storm is one
 * back-to-back burst that takes as many deadline slots as it has frames.
 *
 * Exit status: 0 after sending everything or stopping on SIGINT/SIGTERM (send
 * errors are counted, not fatal), 1 if the socket cannot be opened or bound to the
 * interface, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "args.h"

#define PROG "frame_fuzz"
#define arg_error(opt, what) args_error(PROG, (opt), (what))

#define NS_PER_SEC 1000000000ULL
/* Longest single sleep, so a signal that lands just before a sleep is seen soon. */
#define MAX_SLEEP_NS 100000000ULL
/* Deadlines past this (about 31 years) are clamped; only absurd --rate/--count reach it. */
#define MAX_OFFSET_NS 1e18

#define MAC_LEN 6
#define ETH_HDR 14
#define IP_HDR 20 /* every crafted header is built with IHL 5 */
#define UDP_HDR 8
#define TCP_HDR 20
#define ICMP_HDR 8
#define GRE_HDR 4
#define ARP_BODY 28
#define L4_OFF (ETH_HDR + IP_HDR)
#define REQ_HDRS (L4_OFF + UDP_HDR) /* Ethernet + IPv4 + UDP headers of a request */

#define ETYPE_IPV4 0x0800
#define ETYPE_ARP 0x0806
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_GRE 47
#define PROTO_RESERVED 255
#define ICMP_ECHO_REQUEST 8
#define FRAG_DF 0x4000
#define FRAG_MF 0x2000
#define FRAG_OFFSET_MAX 0x1fff /* fragment offset field, in 8-byte units */
#define TTL_DEFAULT 64
#define IP_TOT_MAX 65535

#define FRAME_MAX 9216
#define RANDOM_LEN_MAX 1600
#define UDP_PAYLOAD_MAX 1472 /* largest payload in one 1500-byte IPv4 packet */
#define SMALL_PAYLOAD_MAX 512
/*
 * A truncated frame is cut from a request at least this long, so that it stays
 * short of its claimed length even where the link pads frames to 60 bytes.
 */
#define TRUNC_PAYLOAD_MIN 64
#define JUMBO_MIN 1515 /* one byte more than a 1500-MTU link carries */
#define JUMBO_MAX 9000
#define FRAG_DATA_MAX 1480 /* fragment data in a 1500-byte packet, a multiple of 8 */
#define FRAG_DATAGRAM_PAYLOAD_MAX 8000 /* UDP payload of a datagram sent as a first fragment */
#define BAD_PROTO_PAYLOAD_MAX 200
#define ICMP_EXTRA_MAX 56
#define EPHEMERAL_LO 49152
#define EPHEMERAL_HI 65535

#define ARP_BURST 50
/*
 * Kinds are drawn with these weights. An arp_storm draw produces ARP_BURST frames,
 * every other draw one frame, so weights of 1 against ARP_BURST give every kind
 * about the same share of the frames sent.
 */
#define FRAME_WEIGHT ARP_BURST
#define STORM_WEIGHT 1

#define COUNT_DEFAULT 20000
#define COUNT_MAX 1000000000000ULL
#define RATE_DEFAULT 2000.0
#define RATE_MAX 10000000.0
#define SEED_TIME_MASK ((1ULL << 53) - 1) /* exact as a JSON number in any parser */

/* Set by SIGINT/SIGTERM: stop sending and report what was sent so far. */
static volatile sig_atomic_t stop_requested;

enum kind {
	K_RANDOM,
	K_TRUNCATED,
	K_OVERSIZED,
	K_BAD_IP_LEN,
	K_BAD_IP_CSUM,
	K_BAD_UDP,
	K_FRAGMENT,
	K_FOREIGN_MAC,
	K_FOREIGN_IP,
	K_ARP_STORM,
	K_BAD_ARP,
	K_SHORT_ARP,
	K_BAD_PROTO,
	K_VALID,
	KIND_COUNT
};

struct kind_info {
	const char *name;
	uint32_t weight;
};

_Static_assert(KIND_COUNT <= 32, "--kind keeps the kinds in a 32-bit mask");

static const struct kind_info kinds[KIND_COUNT] = {
	[K_RANDOM] = { "random", FRAME_WEIGHT },
	[K_TRUNCATED] = { "truncated", FRAME_WEIGHT },
	[K_OVERSIZED] = { "oversized", FRAME_WEIGHT },
	[K_BAD_IP_LEN] = { "bad_ip_len", FRAME_WEIGHT },
	[K_BAD_IP_CSUM] = { "bad_ip_csum", FRAME_WEIGHT },
	[K_BAD_UDP] = { "bad_udp", FRAME_WEIGHT },
	[K_FRAGMENT] = { "fragment", FRAME_WEIGHT },
	[K_FOREIGN_MAC] = { "foreign_mac", FRAME_WEIGHT },
	[K_FOREIGN_IP] = { "foreign_ip", FRAME_WEIGHT },
	[K_ARP_STORM] = { "arp_storm", STORM_WEIGHT },
	[K_BAD_ARP] = { "bad_arp", FRAME_WEIGHT },
	[K_SHORT_ARP] = { "short_arp", FRAME_WEIGHT },
	[K_BAD_PROTO] = { "bad_proto", FRAME_WEIGHT },
	[K_VALID] = { "valid", FRAME_WEIGHT },
};

struct options {
	const char *iface;
	uint8_t dst_mac[MAC_LEN];
	uint32_t dst_ip, src_ip; /* host byte order, so /24 arithmetic is plain */
	uint16_t port;
	uint64_t count;
	double rate; /* frames per second; 0: as fast as the socket takes them */
	uint64_t seed;
	int seed_given;
	int json;
	uint32_t kinds; /* bit k: kind k may be drawn (--kind; all by default) */
};

/* splitmix64: tiny, fast, and every 64-bit seed (0 included) gives a good stream. */
struct rng {
	uint64_t s;
};

struct tally {
	uint64_t frames[KIND_COUNT]; /* attempted, sent or not */
	uint64_t errors[KIND_COUNT];
	uint64_t sent, send_errors;
	uint64_t err_msgsize, err_inval, err_other;
	int last_other_errno; /* shown in the summary: "other" usually has one cause (e.g. link down) */
};

struct fuzzer {
	const struct options *opt;
	int fd;
	uint8_t src_mac[MAC_LEN];
	struct rng rng;
	struct tally tally;
	uint8_t buf[FRAME_MAX];
};

static const uint8_t broadcast_mac[MAC_LEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* ---------- time ---------- */

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* Sleeps until the deadline in short steps; returns -1 if a stop was requested meanwhile. */
static int wait_until(uint64_t deadline)
{
	struct timespec ts;
	uint64_t now, wake;

	for (;;) {
		if (stop_requested)
			return -1;
		now = mono_ns();
		if (now >= deadline)
			return 0;
		wake = deadline - now > MAX_SLEEP_NS ? now + MAX_SLEEP_NS : deadline;
		ts.tv_sec = (time_t)(wake / NS_PER_SEC);
		ts.tv_nsec = (long)(wake % NS_PER_SEC);
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	}
}

/* Deadline of frame i, computed from t0 each time so rounding never accumulates. */
static uint64_t deadline_ns(uint64_t t0, uint64_t i, double rate)
{
	double off = (double)i * (double)NS_PER_SEC / rate;

	if (off > MAX_OFFSET_NS)
		off = MAX_OFFSET_NS;
	return t0 + (uint64_t)off;
}

/* ---------- random numbers ---------- */

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in [0, n) by multiply-shift; the bias (< n / 2^32) is irrelevant for fuzzing. */
static uint32_t rng_below(struct rng *r, uint32_t n)
{
	return (uint32_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi], both inclusive; callers guarantee lo <= hi. */
static uint32_t rng_range(struct rng *r, uint32_t lo, uint32_t hi)
{
	return lo + (uint32_t)(((rng_next(r) >> 32) * ((uint64_t)hi - lo + 1)) >> 32);
}

static uint16_t rng16(struct rng *r)
{
	return (uint16_t)(rng_next(r) >> 48);
}

static void rng_fill(struct rng *r, uint8_t *p, size_t n)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (i % 8 == 0)
			v = rng_next(r);
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

/* A random locally administered unicast MAC: never multicast, never a vendor-assigned one. */
static void rng_local_mac(struct rng *r, uint8_t mac[MAC_LEN])
{
	rng_fill(r, mac, MAC_LEN);
	mac[0] = (uint8_t)((mac[0] & 0xfc) | 0x02);
}

/* Host part 1..254 of the /24 around base, never equal to avoid. */
static uint32_t rng_host_in_24(struct rng *r, uint32_t base, uint32_t avoid)
{
	uint32_t ip;

	do
		ip = (base & 0xffffff00u) | rng_range(r, 1, 254);
	while (ip == avoid);
	return ip;
}

/* A unicast address outside 0/8, 127/8 and the multicast/reserved space 224/3. */
static uint32_t rng_unicast_ip(struct rng *r)
{
	uint32_t ip, first;

	do {
		ip = (uint32_t)(rng_next(r) >> 32);
		first = ip >> 24;
	} while (first == 0 || first == 127 || first >= 224);
	return ip;
}

/* ---------- wire helpers ---------- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* One's complement sum of big-endian 16-bit words; only the last chunk may be odd. */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n)
{
	while (n > 1) {
		sum += get16(p);
		p += 2;
		n -= 2;
	}
	if (n)
		sum += (uint64_t)p[0] << 8;
	return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/*
 * In one's complement 0x0000 and 0xffff are both zero, so a checksum field holding
 * either verifies the same way: a "wrong" value must avoid the other zero too.
 */
static int csum_same(uint16_t a, uint16_t b)
{
	return a == b || ((a == 0 || a == 0xffff) && (b == 0 || b == 0xffff));
}

/* Transport checksum over the IPv4 pseudo-header and len bytes at l4. */
static uint16_t l4_csum(uint32_t src, uint32_t dst, uint8_t proto, const uint8_t *l4, size_t len)
{
	uint8_t ph[12];

	put32(ph, src);
	put32(ph + 4, dst);
	ph[8] = 0;
	ph[9] = proto;
	put16(ph + 10, (uint16_t)len);
	return csum_fold(csum_add(csum_add(0, ph, sizeof(ph)), l4, len));
}

static void put_eth(uint8_t *f, const uint8_t dst[MAC_LEN], const uint8_t src[MAC_LEN],
		    uint16_t type)
{
	memcpy(f, dst, MAC_LEN);
	memcpy(f + MAC_LEN, src, MAC_LEN);
	put16(f + 2 * MAC_LEN, type);
}

/* The checksum always covers 20 bytes, even when a defect makes IHL say otherwise. */
static void ip_recsum(uint8_t *ip)
{
	put16(ip + 10, 0);
	put16(ip + 10, csum_fold(csum_add(0, ip, IP_HDR)));
}

static void put_ip(uint8_t *ip, uint16_t tot_len, uint16_t id, uint16_t frag, uint8_t proto,
		   uint32_t src, uint32_t dst)
{
	ip[0] = 0x45; /* version 4, IHL 5 */
	ip[1] = 0;
	put16(ip + 2, tot_len);
	put16(ip + 4, id);
	put16(ip + 6, frag);
	ip[8] = TTL_DEFAULT;
	ip[9] = proto;
	put32(ip + 12, src);
	put32(ip + 16, dst);
	ip_recsum(ip);
}

/* A valid UDP checksum is never sent as 0, which would mean "no checksum". */
static void udp_fill_csum(uint8_t *udp, uint32_t src, uint32_t dst, size_t len)
{
	uint16_t c;

	put16(udp + 6, 0);
	c = l4_csum(src, dst, PROTO_UDP, udp, len);
	put16(udp + 6, c ? c : 0xffff);
}

/* ---------- frame builders: each returns the frame length in f->buf ---------- */

/* Ethernet and IPv4 headers from this host to dst_ip; the caller fills l4_len bytes after them. */
static uint8_t *build_ip_frame(struct fuzzer *f, const uint8_t dst_mac[MAC_LEN], uint32_t dst_ip,
			       uint8_t proto, uint16_t frag, size_t l4_len)
{
	put_eth(f->buf, dst_mac, f->src_mac, ETYPE_IPV4);
	put_ip(f->buf + ETH_HDR, (uint16_t)(IP_HDR + l4_len), rng16(&f->rng), frag, proto,
	       f->opt->src_ip, dst_ip);
	return f->buf + L4_OFF;
}

/* A well-formed UDP request to the server's port with a random payload. */
static size_t build_request(struct fuzzer *f, const uint8_t dst_mac[MAC_LEN], uint32_t dst_ip,
			    size_t payload)
{
	size_t udp_len = UDP_HDR + payload;
	uint8_t *udp = build_ip_frame(f, dst_mac, dst_ip, PROTO_UDP, 0, udp_len);

	put16(udp, (uint16_t)rng_range(&f->rng, EPHEMERAL_LO, EPHEMERAL_HI));
	put16(udp + 2, f->opt->port);
	put16(udp + 4, (uint16_t)udp_len);
	rng_fill(&f->rng, udp + UDP_HDR, payload);
	udp_fill_csum(udp, f->opt->src_ip, dst_ip, udp_len);
	return L4_OFF + udp_len;
}

static size_t build_server_request(struct fuzzer *f, size_t payload)
{
	return build_request(f, f->opt->dst_mac, f->opt->dst_ip, payload);
}

/*
 * Random length and bytes. Three frames in four still go to the server's MAC, so they
 * get past a learning bridge or a NIC's unicast filter; the rest are random throughout
 * (multicast and broadcast destinations included).
 */
static size_t build_random(struct fuzzer *f)
{
	size_t len = rng_below(&f->rng, RANDOM_LEN_MAX + 1);

	rng_fill(&f->rng, f->buf, len);
	if (len >= MAC_LEN && rng_below(&f->rng, 4) != 0)
		memcpy(f->buf, f->opt->dst_mac, MAC_LEN);
	return len;
}

/* A request cut short: half the cuts fall inside the IPv4/UDP headers, half in the payload. */
static size_t build_truncated(struct fuzzer *f)
{
	size_t full = build_server_request(f, rng_range(&f->rng, TRUNC_PAYLOAD_MIN, UDP_PAYLOAD_MAX));

	if (rng_below(&f->rng, 2))
		return rng_range(&f->rng, ETH_HDR, REQ_HDRS - 1);
	return rng_range(&f->rng, REQ_HDRS, (uint32_t)full - 1);
}

/*
 * Either a jumbo frame with consistent headers (too big for a 1500-byte link, so the
 * kernel usually refuses it), or a normal frame whose IPv4 total length claims more
 * than the frame carries. The UDP length agrees with the claim, and the UDP checksum
 * is 0 (none) because it would cover bytes that are not there.
 */
static size_t build_oversized(struct fuzzer *f)
{
	size_t full;
	uint32_t claim;
	uint8_t *ip = f->buf + ETH_HDR, *udp = f->buf + L4_OFF;

	if (rng_below(&f->rng, 2))
		return build_server_request(f, rng_range(&f->rng, JUMBO_MIN, JUMBO_MAX) - REQ_HDRS);
	full = build_server_request(f, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
	claim = rng_range(&f->rng, (uint32_t)(full - ETH_HDR) + 1, IP_TOT_MAX);
	put16(ip + 2, (uint16_t)claim);
	ip_recsum(ip);
	put16(udp + 4, (uint16_t)(claim - IP_HDR));
	put16(udp + 6, 0);
	return full;
}

/* Total length below the header size, IHL below 5, or a version other than 4. */
static size_t build_bad_ip_len(struct fuzzer *f)
{
	size_t full = build_server_request(f, rng_below(&f->rng, SMALL_PAYLOAD_MAX + 1));
	uint8_t *ip = f->buf + ETH_HDR;
	uint32_t version;

	switch (rng_below(&f->rng, 3)) {
	case 0:
		put16(ip + 2, (uint16_t)rng_below(&f->rng, IP_HDR));
		break;
	case 1:
		ip[0] = (uint8_t)(0x40 | rng_below(&f->rng, 5));
		break;
	default:
		version = rng_below(&f->rng, 15); /* 0..14, then skip 4: 0..3, 5..15 */
		if (version >= 4)
			version++;
		ip[0] = (uint8_t)(version << 4 | 5);
		break;
	}
	ip_recsum(ip);
	return full;
}

static size_t build_bad_ip_csum(struct fuzzer *f)
{
	size_t full = build_server_request(f, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
	uint8_t *ip = f->buf + ETH_HDR;
	uint16_t good = get16(ip + 10), bad;

	do
		bad = rng16(&f->rng);
	while (csum_same(bad, good));
	put16(ip + 10, bad);
	return full;
}

/*
 * UDP length larger than the IP payload or below the UDP header (checksum 0, since
 * the length it would cover is the defect), or a wrong non-zero checksum.
 */
static size_t build_bad_udp(struct fuzzer *f)
{
	size_t full = build_server_request(f, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
	uint8_t *udp = f->buf + L4_OFF;
	uint32_t actual = (uint32_t)(full - L4_OFF);
	uint16_t good, bad;

	switch (rng_below(&f->rng, 3)) {
	case 0:
		put16(udp + 4, (uint16_t)rng_range(&f->rng, actual + 1, IP_TOT_MAX));
		put16(udp + 6, 0);
		break;
	case 1:
		put16(udp + 4, (uint16_t)rng_below(&f->rng, UDP_HDR));
		put16(udp + 6, 0);
		break;
	default:
		good = get16(udp + 6);
		do
			bad = rng16(&f->rng);
		while (bad == 0 || csum_same(bad, good));
		put16(udp + 6, bad);
		break;
	}
	return full;
}

/*
 * The first fragment of a larger UDP datagram: the whole datagram is built (so its
 * UDP length and checksum are right for the whole), then only its first multiple of
 * 8 bytes is sent, with MF set.
 */
static size_t build_first_fragment(struct fuzzer *f)
{
	size_t payload = rng_range(&f->rng, 1, FRAG_DATAGRAM_PAYLOAD_MAX);
	size_t datagram = UDP_HDR + payload, most, data;
	uint8_t *ip = f->buf + ETH_HDR;

	build_server_request(f, payload);
	most = datagram - 1 < FRAG_DATA_MAX ? datagram - 1 : FRAG_DATA_MAX;
	data = 8 * (size_t)rng_range(&f->rng, 1, (uint32_t)(most / 8));
	put16(ip + 2, (uint16_t)(IP_HDR + data));
	put16(ip + 6, FRAG_MF);
	ip_recsum(ip);
	return L4_OFF + data;
}

/*
 * A later fragment with random data at a non-zero offset. With past_end the
 * fragment ends beyond the 65535-byte limit of a datagram (the old "ping of death").
 */
static size_t build_later_fragment(struct fuzzer *f, int more, int past_end)
{
	uint32_t data, lo, hi, off;
	uint8_t *l4;

	/* Only the last fragment may have a length that is not a multiple of 8. */
	data = more ? 8 * rng_range(&f->rng, 1, FRAG_DATA_MAX / 8) :
		      rng_range(&f->rng, 1, FRAG_DATA_MAX);
	hi = (IP_TOT_MAX - IP_HDR - data) / 8; /* last offset that still fits */
	lo = 1;
	if (past_end) {
		lo = hi + 1;
		hi = FRAG_OFFSET_MAX;
	}
	off = rng_range(&f->rng, lo, hi);
	l4 = build_ip_frame(f, f->opt->dst_mac, f->opt->dst_ip, PROTO_UDP,
			    (uint16_t)((more ? FRAG_MF : 0) | off), data);
	rng_fill(&f->rng, l4, data);
	return L4_OFF + data;
}

static size_t build_fragment(struct fuzzer *f)
{
	size_t full;
	uint8_t *ip = f->buf + ETH_HDR;

	switch (rng_below(&f->rng, 5)) {
	case 0:
		return build_first_fragment(f);
	case 1:
		return build_later_fragment(f, 1, 0);
	case 2:
		return build_later_fragment(f, 0, 0);
	case 3:
		return build_later_fragment(f, 0, 1);
	default:
		/* A complete request flagged both "don't fragment" and "more fragments". */
		full = build_server_request(f, rng_below(&f->rng, SMALL_PAYLOAD_MAX + 1));
		put16(ip + 6, FRAG_DF | FRAG_MF);
		ip_recsum(ip);
		return full;
	}
}

static size_t build_foreign_mac(struct fuzzer *f)
{
	uint8_t mac[MAC_LEN];

	do
		rng_local_mac(&f->rng, mac);
	while (memcmp(mac, f->opt->dst_mac, MAC_LEN) == 0);
	return build_request(f, mac, f->opt->dst_ip, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
}

/*
 * Another host of the server's /24 (a neighbour) or any unicast address elsewhere; never
 * the /24's own network or broadcast address, which a server may accept as its own.
 */
static size_t build_foreign_ip(struct fuzzer *f)
{
	uint32_t ip, net = f->opt->dst_ip & 0xffffff00u;

	if (rng_below(&f->rng, 2)) {
		ip = rng_host_in_24(&f->rng, f->opt->dst_ip, f->opt->dst_ip);
	} else {
		do
			ip = rng_unicast_ip(&f->rng);
		while (ip == f->opt->dst_ip || ip == net || ip == (net | 0xff));
	}
	return build_request(f, f->opt->dst_mac, ip, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
}

/* TCP SYN, GRE, protocol 255, or an ICMP message other than an echo request. */
static size_t build_bad_proto(struct fuzzer *f)
{
	const struct options *o = f->opt;
	uint32_t n, type;
	uint8_t *l4;

	switch (rng_below(&f->rng, 4)) {
	case 0: /* a plain SYN to the echo port, checksum right: the only fault is that it is TCP */
		l4 = build_ip_frame(f, o->dst_mac, o->dst_ip, PROTO_TCP, 0, TCP_HDR);
		memset(l4, 0, TCP_HDR);
		put16(l4, (uint16_t)rng_range(&f->rng, EPHEMERAL_LO, EPHEMERAL_HI));
		put16(l4 + 2, o->port);
		put32(l4 + 4, (uint32_t)rng_next(&f->rng));
		l4[12] = (TCP_HDR / 4) << 4;
		l4[13] = 0x02; /* SYN */
		put16(l4 + 14, 65535);
		put16(l4 + 16, l4_csum(o->src_ip, o->dst_ip, PROTO_TCP, l4, TCP_HDR));
		return L4_OFF + TCP_HDR;
	case 1: /* GRE carrying random bytes labelled IPv4 */
		n = rng_range(&f->rng, IP_HDR, BAD_PROTO_PAYLOAD_MAX);
		l4 = build_ip_frame(f, o->dst_mac, o->dst_ip, PROTO_GRE, 0, GRE_HDR + n);
		put16(l4, 0);
		put16(l4 + 2, ETYPE_IPV4);
		rng_fill(&f->rng, l4 + GRE_HDR, n);
		return L4_OFF + GRE_HDR + n;
	case 2:
		n = rng_below(&f->rng, BAD_PROTO_PAYLOAD_MAX + 1);
		l4 = build_ip_frame(f, o->dst_mac, o->dst_ip, PROTO_RESERVED, 0, n);
		rng_fill(&f->rng, l4, n);
		return L4_OFF + n;
	default:
		n = ICMP_HDR + rng_below(&f->rng, ICMP_EXTRA_MAX + 1);
		type = rng_below(&f->rng, 255); /* 0..254, then skip 8: 0..7, 9..255 */
		if (type >= ICMP_ECHO_REQUEST)
			type++;
		l4 = build_ip_frame(f, o->dst_mac, o->dst_ip, PROTO_ICMP, 0, n);
		rng_fill(&f->rng, l4, n);
		l4[0] = (uint8_t)type;
		l4[1] = (uint8_t)rng_below(&f->rng, 16);
		put16(l4 + 2, 0);
		put16(l4 + 2, csum_fold(csum_add(0, l4, n)));
		return L4_OFF + n;
	}
}

/*
 * A broadcast ARP request for the server's address from a random MAC and a random
 * address in the /24 of --src-ip (never the server's own, which would be a conflict
 * announcement rather than a request).
 */
static size_t build_arp_request(struct fuzzer *f)
{
	uint8_t mac[MAC_LEN];
	uint8_t *arp = f->buf + ETH_HDR;

	rng_local_mac(&f->rng, mac);
	put_eth(f->buf, broadcast_mac, mac, ETYPE_ARP);
	put16(arp, ARPHRD_ETHER);
	put16(arp + 2, ETYPE_IPV4);
	arp[4] = MAC_LEN;
	arp[5] = 4;
	put16(arp + 6, ARPOP_REQUEST);
	memcpy(arp + 8, mac, MAC_LEN);
	put32(arp + 14, rng_host_in_24(&f->rng, f->opt->src_ip, f->opt->dst_ip));
	memset(arp + 18, 0, MAC_LEN);
	put32(arp + 24, f->opt->dst_ip);
	return ETH_HDR + ARP_BODY;
}

/*
 * A request with one thing wrong in its fields, sent to the server's MAC only (no need
 * to broadcast junk); "short_arp" is the same request cut short of its 28-byte body.
 */
static size_t build_bad_arp(struct fuzzer *f)
{
	uint8_t *arp = f->buf + ETH_HDR;
	uint16_t v;

	build_arp_request(f);
	memcpy(f->buf, f->opt->dst_mac, MAC_LEN);
	switch (rng_below(&f->rng, 4)) {
	case 0: /* hardware type other than Ethernet */
		do
			v = rng16(&f->rng);
		while (v == ARPHRD_ETHER);
		put16(arp, v);
		break;
	case 1: /* protocol type other than IPv4 */
		do
			v = rng16(&f->rng);
		while (v == ETYPE_IPV4);
		put16(arp + 2, v);
		break;
	case 2: /* address lengths that do not match the types */
		do {
			arp[4] = (uint8_t)rng_below(&f->rng, 256);
			arp[5] = (uint8_t)rng_below(&f->rng, 256);
		} while (arp[4] == MAC_LEN && arp[5] == 4);
		break;
	default: /* an operation that is neither request nor reply */
		do
			v = rng16(&f->rng);
		while (v == ARPOP_REQUEST || v == ARPOP_REPLY);
		put16(arp + 6, v);
		break;
	}
	return ETH_HDR + ARP_BODY;
}

static size_t build_short_arp(struct fuzzer *f)
{
	build_arp_request(f);
	memcpy(f->buf, f->opt->dst_mac, MAC_LEN);
	return ETH_HDR + rng_below(&f->rng, ARP_BODY);
}

static size_t build_one(struct fuzzer *f, enum kind k)
{
	switch (k) {
	case K_RANDOM:
		return build_random(f);
	case K_TRUNCATED:
		return build_truncated(f);
	case K_OVERSIZED:
		return build_oversized(f);
	case K_BAD_IP_LEN:
		return build_bad_ip_len(f);
	case K_BAD_IP_CSUM:
		return build_bad_ip_csum(f);
	case K_BAD_UDP:
		return build_bad_udp(f);
	case K_FRAGMENT:
		return build_fragment(f);
	case K_FOREIGN_MAC:
		return build_foreign_mac(f);
	case K_FOREIGN_IP:
		return build_foreign_ip(f);
	case K_BAD_PROTO:
		return build_bad_proto(f);
	case K_ARP_STORM: /* multi-frame, see emit_arp_storm; one request if asked here */
		return build_arp_request(f);
	case K_BAD_ARP:
		return build_bad_arp(f);
	case K_SHORT_ARP:
		return build_short_arp(f);
	case K_VALID:
	default:
		return build_server_request(f, rng_below(&f->rng, UDP_PAYLOAD_MAX + 1));
	}
}

/* ---------- sending ---------- */

/*
 * The kernel refuses frames shorter than an Ethernet header (EINVAL) or longer than
 * MTU + header (EMSGSIZE); those are expected and only counted.
 */
static void transmit(struct fuzzer *f, enum kind k, size_t len)
{
	struct tally *t = &f->tally;
	ssize_t n = send(f->fd, f->buf, len, 0);
	int err = n < 0 ? errno : EIO; /* EIO stands for a short send, which packet sockets never do */

	t->frames[k]++;
	if (n >= 0 && (size_t)n == len) {
		t->sent++;
		return;
	}
	t->errors[k]++;
	t->send_errors++;
	if (err == EMSGSIZE) {
		t->err_msgsize++;
	} else if (err == EINVAL) {
		t->err_inval++;
	} else {
		t->err_other++;
		t->last_other_errno = err;
	}
}

/* ARP_BURST requests back to back, within budget. */
static uint64_t emit_arp_storm(struct fuzzer *f, uint64_t budget)
{
	uint64_t n = 0;

	while (n < ARP_BURST && n < budget && !stop_requested) {
		transmit(f, K_ARP_STORM, build_arp_request(f));
		n++;
	}
	return n;
}

/* Sends the frames of one draw; returns how many it used of the budget (0 only after a stop). */
static uint64_t emit(struct fuzzer *f, enum kind k, uint64_t budget)
{
	if (k == K_ARP_STORM)
		return emit_arp_storm(f, budget);
	transmit(f, k, build_one(f, k));
	return 1;
}

static uint32_t kind_weight(const struct options *o, int k)
{
	return (o->kinds >> k) & 1 ? kinds[k].weight : 0;
}

/* A kind among those enabled (at least one is: parse_args makes sure), by weight. */
static enum kind pick_kind(const struct options *o, struct rng *r)
{
	uint32_t total = 0, x;
	int k;

	for (k = 0; k < KIND_COUNT; k++)
		total += kind_weight(o, k);
	x = rng_below(r, total);
	for (k = 0; k < KIND_COUNT - 1; k++) {
		if (x < kind_weight(o, k))
			break;
		x -= kind_weight(o, k);
	}
	return (enum kind)k;
}

/* Sends up to --count frames on schedule; a stop request ends it early. */
static void run(struct fuzzer *f)
{
	const struct options *o = f->opt;
	uint64_t done = 0, t0 = mono_ns(), used;

	while (done < o->count && !stop_requested) {
		if (o->rate > 0.0 && wait_until(deadline_ns(t0, done, o->rate)) < 0)
			break;
		used = emit(f, pick_kind(o, &f->rng), o->count - done);
		if (used == 0)
			break;
		done += used;
	}
}

/* ---------- socket ---------- */

static int fail_iface(const char *iface, const char *what, int err)
{
	fprintf(stderr, PROG ": %s: %s: %s\n", iface, what, strerror(err));
	return -1;
}

/*
 * Protocol 0 at socket() and bind() makes a send-only socket: the kernel never
 * queues a received frame to it, so nothing piles up unread.
 */
static int open_socket(const char *iface, uint8_t mac[MAC_LEN])
{
	struct sockaddr_ll sll;
	struct ifreq ifr;
	int fd, err;

	fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail_iface(iface, "cannot open packet socket", errno);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", iface);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		err = errno;
		close(fd);
		return fail_iface(iface, "cannot find interface", err);
	}
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = 0;
	sll.sll_ifindex = ifr.ifr_ifindex;
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
		err = errno;
		close(fd);
		return fail_iface(iface, "cannot read hardware address", err);
	}
	if (ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
		close(fd);
		fprintf(stderr, PROG ": %s: not an Ethernet interface\n", iface);
		return -1;
	}
	memcpy(mac, ifr.ifr_hwaddr.sa_data, MAC_LEN);
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		err = errno;
		close(fd);
		return fail_iface(iface, "cannot bind packet socket", err);
	}
	return fd;
}

/* ---------- argument parsing ---------- */

enum {
	OPT_IFACE = 256,
	OPT_DST_MAC,
	OPT_DST_IP,
	OPT_SRC_IP,
	OPT_PORT,
	OPT_COUNT,
	OPT_RATE,
	OPT_SEED,
	OPT_KIND,
	OPT_JSON,
	OPT_HELP,
};

static const struct option long_opts[] = {
	{ "iface", required_argument, NULL, OPT_IFACE },
	{ "dst-mac", required_argument, NULL, OPT_DST_MAC },
	{ "dst-ip", required_argument, NULL, OPT_DST_IP },
	{ "src-ip", required_argument, NULL, OPT_SRC_IP },
	{ "port", required_argument, NULL, OPT_PORT },
	{ "count", required_argument, NULL, OPT_COUNT },
	{ "rate", required_argument, NULL, OPT_RATE },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "kind", required_argument, NULL, OPT_KIND },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Exactly six colon-separated pairs of hex digits. */
static int parse_mac(const char *s, uint8_t mac[MAC_LEN])
{
	int i, hi, lo;

	for (i = 0; i < MAC_LEN; i++, s += 3) {
		hi = hex_digit(s[0]);
		lo = hi < 0 ? -1 : hex_digit(s[1]);
		if (lo < 0 || s[2] != (i == MAC_LEN - 1 ? '\0' : ':'))
			return -EINVAL;
		mac[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* Dotted quad only (inet_pton also refuses shorthand like "10.1"); result in host order. */
static int parse_ipv4(const char *s, uint32_t *out)
{
	struct in_addr a;

	if (inet_pton(AF_INET, s, &a) != 1)
		return -EINVAL;
	*out = ntohl(a.s_addr);
	return 0;
}

static int ip_is_unicast(uint32_t ip)
{
	return ip != 0 && ip != 0xffffffffu && (ip >> 28) != 0xe;
}

static int set_ipv4(const char *name, const char *s, uint32_t *out)
{
	if (parse_ipv4(s, out))
		return arg_error(name, "not an IPv4 address (A.B.C.D)");
	if (!ip_is_unicast(*out))
		return arg_error(name, "not a unicast address");
	return 0;
}

/* A comma-separated list of kind names, each known; replaces the default "all". */
static int parse_kinds(const char *val, uint32_t *out)
{
	const char *p = val;
	size_t n;
	int k;

	*out = 0;
	while (*p) {
		n = strcspn(p, ",");
		for (k = 0; k < KIND_COUNT; k++)
			if (strlen(kinds[k].name) == n && !strncmp(p, kinds[k].name, n))
				break;
		if (k == KIND_COUNT)
			return -EINVAL;
		*out |= 1u << k;
		p += n;
		if (*p == ',')
			p++;
	}
	return *out ? 0 : -EINVAL;
}

static int set_option(struct options *o, int c, const char *val)
{
	uint64_t v;

	switch (c) {
	case OPT_IFACE:
		if (val[0] == '\0' || strlen(val) >= IFNAMSIZ)
			return arg_error("--iface", "not an interface name (1 to 15 characters)");
		o->iface = val;
		return 0;
	case OPT_DST_MAC:
		if (parse_mac(val, o->dst_mac))
			return arg_error("--dst-mac", "not a MAC address (XX:XX:XX:XX:XX:XX)");
		if (o->dst_mac[0] & 1)
			return arg_error("--dst-mac", "not a unicast address");
		if (!memcmp(o->dst_mac, "\0\0\0\0\0\0", MAC_LEN))
			return arg_error("--dst-mac", "all-zero address");
		return 0;
	case OPT_DST_IP:
		return set_ipv4("--dst-ip", val, &o->dst_ip);
	case OPT_SRC_IP:
		return set_ipv4("--src-ip", val, &o->src_ip);
	case OPT_PORT:
		if (args_uint(val, 1, 65535, &v))
			return arg_error("--port", "must be an integer 1..65535");
		o->port = (uint16_t)v;
		return 0;
	case OPT_COUNT:
		if (args_uint(val, 0, COUNT_MAX, &o->count))
			return arg_error("--count", "must be an integer 0..1000000000000");
		return 0;
	case OPT_RATE:
		if (args_decimal(val, 0.0, RATE_MAX, &o->rate))
			return arg_error("--rate", "must be a number 0..10000000 (0 = as fast as possible)");
		return 0;
	case OPT_SEED:
		if (args_uint(val, 0, UINT64_MAX, &o->seed))
			return arg_error("--seed", "must be an integer 0..18446744073709551615");
		o->seed_given = 1;
		return 0;
	case OPT_KIND:
		if (parse_kinds(val, &o->kinds)) {
			char what[512];
			size_t off = 0;
			int k;

			off += (size_t)snprintf(what, sizeof(what), "a comma-separated list of:");
			for (k = 0; k < KIND_COUNT && off < sizeof(what); k++)
				off += (size_t)snprintf(what + off, sizeof(what) - off, "%s %s",
							k ? "," : "", kinds[k].name);
			return arg_error("--kind", what);
		}
		return 0;
	case OPT_JSON:
		o->json = 1;
		return 0;
	default:
		return arg_error("?", "internal error: unhandled option");
	}
}

/* Returns 0 (*help set for --help) or -EINVAL after printing one line about the problem. */
static int parse_args(int argc, char **argv, struct options *o, int *help)
{
	int c, err, have = 0;
	char name[64];
	enum { HAVE_IFACE = 1, HAVE_DST_MAC = 2, HAVE_DST_IP = 4, HAVE_SRC_IP = 8 };

	*help = 0;
	*o = (struct options){ .port = 7, .count = COUNT_DEFAULT, .rate = RATE_DEFAULT,
			       .kinds = (1u << KIND_COUNT) - 1 };
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		if (c == OPT_HELP) {
			*help = 1;
			return 0;
		}
		if (c == ':')
			return arg_error(args_bad_option(long_opts, argv, name, sizeof(name)), "missing value");
		/* glibc reports a value given to a flag as '?' too, but with optopt set to it */
		if (c == '?')
			return arg_error(args_bad_option(long_opts, argv, name, sizeof(name)),
					 optopt >= OPT_IFACE ? "takes no value" :
							       "unknown or ambiguous option");
		err = set_option(o, c, optarg);
		if (err)
			return err;
		have |= c == OPT_IFACE ? HAVE_IFACE : c == OPT_DST_MAC ? HAVE_DST_MAC :
			c == OPT_DST_IP ? HAVE_DST_IP : c == OPT_SRC_IP ? HAVE_SRC_IP : 0;
	}
	if (optind < argc)
		return arg_error(argv[optind], "unexpected argument");
	if (!(have & HAVE_IFACE))
		return arg_error("--iface", "required");
	if (!(have & HAVE_DST_MAC))
		return arg_error("--dst-mac", "required");
	if (!(have & HAVE_DST_IP))
		return arg_error("--dst-ip", "required");
	if (!(have & HAVE_SRC_IP))
		return arg_error("--src-ip", "required");
	return 0;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PROG " --iface NAME --dst-mac MAC --dst-ip IPV4 --src-ip IPV4\n"
		"       [--port N] [--count N] [--rate PPS] [--seed N] [--kind K[,K...]] [--json]\n"
		"  --iface NAME     interface to send on (the only one used)\n"
		"  --dst-mac MAC    the server's MAC, XX:XX:XX:XX:XX:XX\n"
		"  --dst-ip IPV4    the server's address\n"
		"  --src-ip IPV4    this host's address, put in the headers\n"
		"  --port N         the server's UDP port (default 7)\n"
		"  --count N        frames to send in total (default %d)\n"
		"  --rate PPS       frames per second; 0 = as fast as possible (default %.0f)\n"
		"  --seed N         random seed (default: from the clock; printed either way)\n"
		"  --kind K[,K...]  send only these kinds of frame (default: all; see the table\n"
		"                   in the summary for their names)\n"
		"  --json           print one JSON line at the end instead of a summary\n",
		COUNT_DEFAULT, RATE_DEFAULT);
}

/* ---------- reporting ---------- */

static void print_json(const struct fuzzer *f)
{
	const struct tally *t = &f->tally;
	int k;

	printf("{\"seed\": %llu, \"sent\": %llu, \"send_errors\": %llu, \"by_kind\": {",
	       (unsigned long long)f->opt->seed, (unsigned long long)t->sent,
	       (unsigned long long)t->send_errors);
	for (k = 0; k < KIND_COUNT; k++)
		printf("%s\"%s\": %llu", k ? ", " : "", kinds[k].name,
		       (unsigned long long)t->frames[k]);
	printf("}, \"sent_by_kind\": {");
	for (k = 0; k < KIND_COUNT; k++)
		printf("%s\"%s\": %llu", k ? ", " : "", kinds[k].name,
		       (unsigned long long)(t->frames[k] - t->errors[k]));
	printf("}}\n");
}

static void print_human(const struct fuzzer *f, double secs)
{
	const struct tally *t = &f->tally;
	uint64_t total = t->sent + t->send_errors;
	int k;

	printf(PROG ": seed %llu on %s\n", (unsigned long long)f->opt->seed, f->opt->iface);
	if (stop_requested)
		printf("stopped by a signal after %llu of %llu frames\n", (unsigned long long)total,
		       (unsigned long long)f->opt->count);
	printf("sent %llu frames, %llu send errors (EMSGSIZE %llu, EINVAL %llu, other %llu%s%s)\n",
	       (unsigned long long)t->sent, (unsigned long long)t->send_errors,
	       (unsigned long long)t->err_msgsize, (unsigned long long)t->err_inval,
	       (unsigned long long)t->err_other, t->err_other ? ", last: " : "",
	       t->err_other ? strerror(t->last_other_errno) : "");
	printf("%.3f s, %.1f frames/s attempted\n", secs, secs > 0.0 ? (double)total / secs : 0.0);
	printf("  %-12s %12s %12s\n", "kind", "frames", "send_errors");
	for (k = 0; k < KIND_COUNT; k++)
		printf("  %-12s %12llu %12llu\n", kinds[k].name, (unsigned long long)t->frames[k],
		       (unsigned long long)t->errors[k]);
}

/* ---------- main ---------- */

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* Clock and pid mixed, then cut to 53 bits so the printed seed survives any JSON reader. */
static uint64_t time_seed(void)
{
	struct rng r = { clock_ns(CLOCK_REALTIME) ^ (mono_ns() << 20) ^ (uint64_t)getpid() };

	return rng_next(&r) & SEED_TIME_MASK;
}

int main(int argc, char **argv)
{
	struct fuzzer f = { 0 };
	struct options opt;
	uint64_t t0;
	int help;

	if (parse_args(argc, argv, &opt, &help))
		return 2;
	if (help) {
		usage(stdout);
		return 0;
	}
	if (!opt.seed_given)
		opt.seed = time_seed();
	f.opt = &opt;
	f.rng.s = opt.seed;
	f.fd = open_socket(opt.iface, f.src_mac);
	if (f.fd < 0)
		return 1;
	args_on_stop_signals(on_stop_signal);
	fprintf(stderr,
		PROG ": %s: %llu frames to %02x:%02x:%02x:%02x:%02x:%02x %u.%u.%u.%u:%u at %.6g frames/s, seed %llu\n",
		opt.iface, (unsigned long long)opt.count, opt.dst_mac[0], opt.dst_mac[1],
		opt.dst_mac[2], opt.dst_mac[3], opt.dst_mac[4], opt.dst_mac[5],
		(unsigned)(opt.dst_ip >> 24), (unsigned)(opt.dst_ip >> 16) & 0xff,
		(unsigned)(opt.dst_ip >> 8) & 0xff, (unsigned)opt.dst_ip & 0xff, (unsigned)opt.port,
		opt.rate, (unsigned long long)opt.seed);
	t0 = mono_ns();
	run(&f);
	if (opt.json)
		print_json(&f);
	else
		print_human(&f, (double)(mono_ns() - t0) / (double)NS_PER_SEC);
	close(f.fd);
	return 0;
}
