/*
 * udp_echo: a UDP echo server on the kernel-bypass path. It drives a virtio-net
 * device through VFIO (vnet), one thread and one queue pair per core, each with
 * its own network stack instance, and answers every datagram to its port with
 * the same payload. ARP and ICMP echo are answered too.
 *
 * Modes: "poll" spins on its queues; "arm" arms an idle queue and sleeps on its
 * eventfd until the next arrival. Counters go to a JSON stats file once a second
 * and at exit, where the buffer accounting is also checked.
 *
 * It owns the device for its lifetime and gives it back reset on exit, also on
 * SIGTERM/SIGINT (a SIGKILL leaves it to vfio-pci's reset on release).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libos/stack.h"
#include "libos/vnet.h"

#define BURST 32
#define IDLE_POLLS_BEFORE_ARM 64

struct opts {
	const char *pci;
	const char *stats;
	uint32_t ip, mask;
	unsigned int queues, ring, port, stats_ms;
	struct vnet_config vcfg;
	bool arm, info;
	double duration;
};

struct worker {
	pthread_t thread;
	unsigned int q;
	struct vnet *v;
	struct stack *s;
	const struct opts *o;
	volatile sig_atomic_t *stop;
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static int die_usage(const char *opt, const char *what)
{
	fprintf(stderr, "udp_echo: %s: %s\n", opt, what);
	return 2;
}

static int parse_uint(const char *s, unsigned int lo, unsigned int hi, unsigned int *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
		return -EINVAL;
	*out = (unsigned int)v;
	return 0;
}

static int parse_cidr(const char *s, uint32_t *ip, uint32_t *mask)
{
	char buf[32], *slash;
	unsigned int bits = 24;
	struct in_addr a;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		if (parse_uint(slash + 1, 1, 32, &bits))
			return -EINVAL;
	}
	if (inet_pton(AF_INET, buf, &a) != 1)
		return -EINVAL;
	*ip = a.s_addr;
	*mask = htonl(bits == 32 ? 0xffffffffu : ~((1u << (32 - bits)) - 1));
	return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longs[] = {
		{ "pci", required_argument, 0, 'p' },      { "ip", required_argument, 0, 'i' },
		{ "queues", required_argument, 0, 'q' },   { "ring", required_argument, 0, 'r' },
		{ "scheme", required_argument, 0, 's' },   { "pool-buffers", required_argument, 0, 'b' },
		{ "buffer-size", required_argument, 0, 'z' }, { "stride", required_argument, 0, 't' },
		{ "mode", required_argument, 0, 'm' },     { "port", required_argument, 0, 'P' },
		{ "duration", required_argument, 0, 'd' }, { "stats", required_argument, 0, 'S' },
		{ "info", no_argument, 0, 'I' },           { "no-rss", no_argument, 0, 'R' },
		{ "rings-in-small-pages", no_argument, 0, 'G' },
		{ 0, 0, 0, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->queues = 1;
	o->port = 7;
	o->stats_ms = 1000;
	o->vcfg.rss = true;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (c) {
		case 'p':
			o->pci = optarg;
			break;
		case 'i':
			if (parse_cidr(optarg, &o->ip, &o->mask))
				return die_usage("--ip", "expected an IPv4 address with prefix, e.g. 10.77.0.1/24");
			break;
		case 'q':
			if (parse_uint(optarg, 1, 16, &o->queues))
				return die_usage("--queues", "use 1 to 16");
			break;
		case 'r':
			if (parse_uint(optarg, 16, 32768, &o->ring) || (o->ring & (o->ring - 1)))
				return die_usage("--ring", "use a power of two from 16 to 32768");
			break;
		case 's':
			if (!strcmp(optarg, "pool"))
				o->vcfg.scheme = VNET_RX_POOL;
			else if (!strcmp(optarg, "fixed"))
				o->vcfg.scheme = VNET_RX_FIXED;
			else
				return die_usage("--scheme", "use pool or fixed");
			break;
		case 'b':
			if (parse_uint(optarg, 1, 1 << 20, &o->vcfg.pool_buffers))
				return die_usage("--pool-buffers", "use 1 to 1048576");
			break;
		case 'z':
			if (parse_uint(optarg, 256, 1 << 20, &o->vcfg.buffer_size))
				return die_usage("--buffer-size", "use 256 to 1048576");
			break;
		case 't':
			if (parse_uint(optarg, 64, 1 << 16, &o->vcfg.stride))
				return die_usage("--stride", "use 64 to 65536");
			break;
		case 'm':
			if (!strcmp(optarg, "arm"))
				o->arm = true;
			else if (strcmp(optarg, "poll"))
				return die_usage("--mode", "use poll or arm");
			break;
		case 'P':
			if (parse_uint(optarg, 1, 65535, &o->port))
				return die_usage("--port", "use 1 to 65535");
			break;
		case 'd':
			o->duration = strtod(optarg, NULL);
			if (o->duration < 0)
				return die_usage("--duration", "use seconds >= 0 (0: until a signal)");
			break;
		case 'S':
			o->stats = optarg;
			break;
		case 'I':
			o->info = true;
			break;
		case 'R':
			o->vcfg.rss = false; /* the tap's own queue choice steers flows instead */
			break;
		case 'G':
			o->vcfg.small_page_rings = true; /* see PAGE_RING in net/vnet.c */
			break;
		default:
			return die_usage("options", "see the header of guest/libos/apps/udp_echo.c");
		}
	}
	if (!o->pci)
		return die_usage("--pci", "required: the PCI address bound to vfio-pci");
	if (!o->ip && !o->info)
		return die_usage("--ip", "required: the address to answer on, e.g. 10.77.0.1/24");
	o->vcfg.pci_addr = o->pci;
	o->vcfg.queue_pairs = o->queues;
	o->vcfg.ring_size = o->ring;
	return 0;
}

/* --- per-core worker ----------------------------------------------------------- */

static int tx_frame(void *ctx, const void *frame, size_t len)
{
	struct worker *w = ctx;

	return vnet_tx(w->v, w->q, frame, len);
}

static void on_udp(void *app, const struct udp_dgram *d)
{
	struct worker *w = app;

	stack_udp_reply(w->s, d, d->data, d->len);
}

static void on_frame(void *arg, const uint8_t *frame, size_t len)
{
	struct worker *w = arg;

	stack_input(w->s, frame, len);
}

static void pin(unsigned int q)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;

	if (ncpu < 1)
		return;
	CPU_ZERO(&set);
	CPU_SET(q % (unsigned int)ncpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	unsigned int idle = 0;

	pin(w->q);
	while (!*w->stop) {
		int n = vnet_rx_burst(w->v, w->q, BURST, on_frame, w);

		vnet_tx_flush(w->v, w->q);
		if (n > 0) {
			idle = 0;
			continue;
		}
		if (w->o->arm && ++idle >= IDLE_POLLS_BEFORE_ARM) {
			vnet_wait(w->v, w->q, 100); /* wakes for stop within 100 ms */
			idle = 0;
		} else {
			/* a polling core shares its vCPU with the rest of the guest (SSH, the
			 * stats writer): let them run when there is nothing to receive */
			sched_yield();
		}
	}
	return NULL;
}

/* --- stats ------------------------------------------------------------------------ */

static void sum_counters(struct worker *ws, unsigned int n, struct stack_counters *sum)
{
	unsigned int i, k;

	memset(sum, 0, sizeof(*sum));
	for (i = 0; i < n; i++) {
		const uint64_t *src = (const uint64_t *)stack_counters(ws[i].s);
		uint64_t *dst = (uint64_t *)sum;

		for (k = 0; k < sizeof(*sum) / sizeof(uint64_t); k++)
			dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
	}
}

static void write_stats(const struct opts *o, struct vnet *v, struct worker *ws,
			const char *check)
{
	struct stack_counters c;
	char tmp[512];
	FILE *f;

	if (!o->stats)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", o->stats);
	f = fopen(tmp, "w");
	if (!f)
		return;
	sum_counters(ws, o->queues, &c);
	fprintf(f, "{\"mode\": \"%s\", \"scheme\": \"%s\", \"check\": \"%s\", \"stack\": {"
		   "\"rx_frames\": %llu, \"tx_frames\": %llu, \"udp_rx\": %llu, \"udp_tx\": %llu, "
		   "\"icmp_echo\": %llu, \"arp_rx\": %llu, \"arp_tx\": %llu, \"drop_short\": %llu, "
		   "\"drop_oversize\": %llu, \"drop_foreign_mac\": %llu, \"drop_ethertype\": %llu, "
		   "\"drop_ip_bad\": %llu, \"drop_ip_csum\": %llu, \"drop_ip_frag\": %llu, "
		   "\"drop_ip_foreign\": %llu, \"drop_proto\": %llu, \"drop_udp_bad\": %llu, "
		   "\"drop_udp_noport\": %llu, \"drop_icmp_bad\": %llu, \"drop_src_mac\": %llu, "
		   "\"drop_tx\": %llu}, \"device\": ",
		o->arm ? "arm" : "poll", o->vcfg.scheme == VNET_RX_POOL ? "pool" : "fixed", check,
		(unsigned long long)c.rx_frames, (unsigned long long)c.tx_frames,
		(unsigned long long)c.udp_rx, (unsigned long long)c.udp_tx,
		(unsigned long long)c.icmp_echo, (unsigned long long)c.arp_rx,
		(unsigned long long)c.arp_tx, (unsigned long long)c.drop_short,
		(unsigned long long)c.drop_oversize, (unsigned long long)c.drop_foreign_mac,
		(unsigned long long)c.drop_ethertype, (unsigned long long)c.drop_ip_bad,
		(unsigned long long)c.drop_ip_csum, (unsigned long long)c.drop_ip_frag,
		(unsigned long long)c.drop_ip_foreign, (unsigned long long)c.drop_proto,
		(unsigned long long)c.drop_udp_bad, (unsigned long long)c.drop_udp_noport,
		(unsigned long long)c.drop_icmp_bad, (unsigned long long)c.drop_src_mac,
		(unsigned long long)c.drop_tx);
	vnet_stats_json(v, f);
	fprintf(f, "}\n");
	fclose(f);
	rename(tmp, o->stats);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct stack_ops ops = { .tx = tx_frame, .udp_rx = on_udp };
	struct worker *ws;
	struct opts o;
	struct vnet *v;
	const char *why = "";
	char check[256] = "running";
	uint8_t mac[6];
	double start;
	unsigned int i;
	int ret;

	ret = parse_opts(argc, argv, &o);
	if (ret)
		return ret;
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	ret = vnet_open(&v, &o.vcfg, &why);
	if (ret) {
		fprintf(stderr, "udp_echo: %s: %s: %s\n", o.pci, why, strerror(-ret));
		return 1;
	}
	if (o.info) {
		vnet_stats_json(v, stdout);
		vnet_close(v);
		return 0;
	}
	vnet_mac(v, mac);
	ws = calloc(o.queues, sizeof(*ws));
	if (!ws) {
		vnet_close(v);
		return 1;
	}
	for (i = 0; i < o.queues; i++) {
		ws[i].q = i;
		ws[i].v = v;
		ws[i].o = &o;
		ws[i].stop = &stop_flag;
		ops.tx_ctx = &ws[i];
		ops.app = &ws[i];
		if (stack_create(&ws[i].s, mac, o.ip, o.mask, &ops) ||
		    stack_udp_bind(ws[i].s, (uint16_t)o.port)) {
			fprintf(stderr, "udp_echo: cannot create the network stack\n");
			return 1;
		}
	}
	for (i = 0; i < o.queues; i++)
		pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]);
	fprintf(stderr, "udp_echo: %s: %u queue pairs, %s buffers, %s mode, port %u\n", o.pci,
		o.queues, o.vcfg.scheme == VNET_RX_POOL ? "pool" : "fixed", o.arm ? "arm" : "poll",
		o.port);
	start = now_s();
	write_stats(&o, v, ws, "running");
	while (!stop_flag) {
		usleep(o.stats_ms * 1000);
		write_stats(&o, v, ws, "running");
		if (o.duration > 0 && now_s() - start >= o.duration)
			stop_flag = 1;
	}
	for (i = 0; i < o.queues; i++)
		pthread_join(ws[i].thread, NULL);
	/* quiescent now: the accounting must balance */
	{
		FILE *m = fmemopen(check, sizeof(check), "w");

		if (vnet_check(v, m) == 0 && m)
			fprintf(m, "ok");
		if (m)
			fclose(m);
		check[strcspn(check, "\n")] = '\0';
	}
	write_stats(&o, v, ws, check);
	fprintf(stderr, "udp_echo: accounting %s\n", check);
	for (i = 0; i < o.queues; i++)
		stack_destroy(ws[i].s);
	free(ws);
	vnet_close(v);
	return strcmp(check, "ok") ? 3 : 0;
}
