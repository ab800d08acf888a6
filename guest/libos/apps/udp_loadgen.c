/*
 * udp_loadgen: a UDP request/response load generator that measures an echo server.
 *
 * It owns its own sockets (one connected UDP socket per flow), one timerfd, one epoll
 * instance and the bookkeeping of the requests it has in flight. It sends only to the
 * single --dst/--port it is given and reads only the replies arriving on its own
 * connected sockets. It must not change any system-wide setting, write any file, or
 * grow memory with the length of the run: in-flight requests live in a ring sized once
 * from the arguments and latencies in a fixed histogram. Results go to stdout (one JSON
 * line with --json), diagnostics to stderr.
 *
 * Accounting, for the requests sent in the measured window (after --warmup):
 *   sent      requests that left through send()
 *   received  replies that matched an outstanding request before its timeout
 *   lost      requests that got no matching reply within --timeout-ms
 *             (so sent == received + lost once the run has drained)
 *   late      replies to requests already counted lost (a subset of lost)
 *   dup       second replies to requests already received
 *   bad       replies arriving after the warmup whose length, timestamp or padding does
 *             not match what was sent; they resolve nothing
 *   send_errors  requests the kernel refused for lack of buffer (EAGAIN/ENOBUFS) in open
 *             loop: not sent, but part of the offered load
 *
 * Exit status: 0 when it ran (whatever the loss), 1 on a runtime error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "args.h"

#define PROG "udp_loadgen"
#define arg_error(opt, what) args_error(PROG, (opt), (what))

#define NS_PER_SEC 1000000000ULL
#define NS_PER_MS 1000000ULL

#define HDR_SIZE 16 /* struct req_hdr on the wire */
#define MIN_SIZE HDR_SIZE
#define MAX_SIZE 1472 /* largest payload that fits one 1500-byte IPv4 packet */
#define RX_BUF_SIZE 2048 /* larger than MAX_SIZE so an oversized reply shows up as bad */
#define MAX_FLOWS 64
#define MAX_WINDOW 65536
#define MAX_RATE 10000000.0
#define MAX_DURATION 86400.0
#define MAX_TIMEOUT_MS 60000

/*
 * The ring of in-flight requests holds every sequence number from the oldest unresolved
 * request up to the newest; its size is chosen from the arguments within these bounds.
 * If more requests go out within one timeout than it has slots, a request still
 * outstanding is counted lost when its slot is reused (see ring_evict).
 */
#define RING_MIN (1u << 16)
#define RING_MAX (1u << 22)

/* Caps on the work done per loop pass, so sending and receiving take turns. */
#define SEND_BURST 256
#define MAX_BURST 1024
#define RECV_BURST 64
/* Closed loop only: how long to wait before retrying a send the kernel refused. */
#define RETRY_NS 100000ULL

#define EPOLL_TIMER_TAG MAX_FLOWS /* epoll data for the timerfd; flows use 0..MAX_FLOWS-1 */

/* Set by SIGINT/SIGTERM: stop sending, drain, and report what was measured so far. */
static volatile sig_atomic_t stop_requested;

struct options {
	struct in_addr dst;
	uint16_t port;
	unsigned int size;
	double rate; /* 0: closed loop */
	unsigned int burst; /* open loop: requests sent back to back at each due time */
	unsigned int window;
	double duration;
	double warmup;
	unsigned int flows;
	unsigned int timeout_ms;
	int json;
};

/* Native byte order: the echo server sends the bytes back untouched to the same host. */
struct req_hdr {
	uint64_t seq;
	uint64_t sent_ns;
};
_Static_assert(sizeof(struct req_hdr) == HDR_SIZE, "request header layout");

/*
 * Log-linear latency histogram in nanoseconds: values below 2*HIST_SUB are exact,
 * every power of two above is split into HIST_SUB buckets, so a bucket is at most
 * 1/128 of its value wide and its midpoint is within 0.4% of any value in it. Values
 * above HIST_TOP_NS share the last bucket; the exact maximum is kept separately.
 */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_TOP_NS (10 * NS_PER_SEC)
#define HIST_TOP_MSB 33 /* 2^33 <= 1e10 < 2^34 */
#define HIST_BUCKETS ((HIST_TOP_MSB - HIST_SUB_BITS + 2) * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t max_ns;
	uint64_t bucket[HIST_BUCKETS];
};

enum req_state { REQ_FREE = 0, REQ_OUT, REQ_DONE, REQ_LOST };

/* Slot i holds the newest sequence number s with (s & mask) == i. */
struct ring {
	uint64_t mask;
	uint64_t *sent_ns;
	uint8_t *state;
};

struct stats {
	uint64_t sent, received, lost, late, dup, bad, send_errors;
};

struct run {
	const struct options *opt;
	int fds[MAX_FLOWS];
	int epfd;
	int tfd;
	uint64_t armed_ns; /* what the timerfd is set to; 0 when disarmed */

	uint64_t t0, warm_end, end; /* CLOCK_MONOTONIC ns; end moves earlier on a signal */
	uint64_t timeout_ns;
	double period_ns; /* open loop: time between scheduled sends */
	uint64_t open_k; /* open loop: index of the next scheduled send */

	struct ring ring;
	uint64_t next_seq; /* sequence number of the next request */
	uint64_t oldest; /* no request below this is still outstanding */
	uint64_t outstanding;
	uint64_t owed; /* closed loop: requests the window wants sent */
	uint64_t retry_at; /* closed loop: earliest retry after a refused send; 0 = none */
	int measuring; /* m_lo is valid */
	uint64_t m_lo; /* first sequence number of the measured window */

	struct stats st;
	struct hist hist;
	uint8_t tx[MAX_SIZE];
	uint8_t rx[RX_BUF_SIZE];
};

/* ---------- time ---------- */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* Arguments are checked to be finite and non-negative, so rounding by +0.5 is exact enough. */
static uint64_t secs_to_ns(double s)
{
	return (uint64_t)(s * (double)NS_PER_SEC + 0.5);
}

/* ---------- histogram ---------- */

static int msb64(uint64_t v)
{
	return 63 - __builtin_clzll(v);
}

static unsigned int hist_index(uint64_t v)
{
	int shift;

	if (v > HIST_TOP_NS)
		v = HIST_TOP_NS;
	if (v < 2 * HIST_SUB)
		return (unsigned int)v;
	shift = msb64(v) - HIST_SUB_BITS;
	return (unsigned int)((uint64_t)shift * HIST_SUB + (v >> shift));
}

/* Middle of the bucket's range: the estimate with the smallest worst-case error. */
static uint64_t hist_value(unsigned int idx)
{
	unsigned int shift;
	uint64_t low;

	if (idx < 2 * HIST_SUB)
		return idx;
	shift = idx / HIST_SUB - 1;
	low = (uint64_t)(idx - shift * HIST_SUB) << shift;
	return low + ((1ULL << shift) >> 1);
}

static void hist_add(struct hist *h, uint64_t v)
{
	h->bucket[hist_index(v)]++;
	h->count++;
	if (v > h->max_ns)
		h->max_ns = v;
}

/*
 * Value at a percentile given in per mille (500 = p50): the bucket holding the
 * ceil(count * permille / 1000)-th smallest value. Integer arithmetic keeps the rank
 * exact (no libm, no rounding surprises at small counts).
 */
static uint64_t hist_percentile(const struct hist *h, unsigned int permille)
{
	uint64_t rank, seen = 0, v;
	unsigned int i;

	if (h->count == 0)
		return 0;
	rank = (h->count * permille + 999) / 1000;
	if (rank < 1)
		rank = 1;
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank)
			break;
	}
	v = hist_value(i < HIST_BUCKETS ? i : HIST_BUCKETS - 1);
	return v > h->max_ns ? h->max_ns : v;
}

/* ---------- argument parsing ---------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --dst IPV4 [--port N] [--size BYTES] [--rate PPS | --window N]\n"
		"       [--burst N] [--duration S] [--warmup S] [--flows N] [--timeout-ms N] [--json]\n"
		"  --dst IPV4       echo server address (required)\n"
		"  --port N         echo server UDP port (default 7)\n"
		"  --size BYTES     payload size, %d..%d (default 64)\n"
		"  --rate PPS       open loop at PPS requests/s; 0 = closed loop (default 0)\n"
		"  --burst N        open loop: send N requests back to back every N/PPS seconds,\n"
		"                   same average rate (default 1)\n"
		"  --window N       closed loop: requests outstanding (default 1)\n"
		"  --duration S     measured time in seconds (default 5)\n"
		"  --warmup S       unmeasured time before it (default 0.5)\n"
		"  --flows N        sockets with distinct source ports, 1..%d (default 1)\n"
		"  --timeout-ms N   a request unanswered this long is lost (default 200)\n"
		"  --json           print one JSON line instead of a summary\n",
		MIN_SIZE, MAX_SIZE, MAX_FLOWS);
}

enum { OPT_DST = 256, OPT_PORT, OPT_SIZE, OPT_RATE, OPT_BURST, OPT_WINDOW, OPT_DURATION,
       OPT_WARMUP, OPT_FLOWS, OPT_TIMEOUT, OPT_JSON, OPT_HELP };

static const struct option long_opts[] = {
	{ "dst", required_argument, NULL, OPT_DST },
	{ "port", required_argument, NULL, OPT_PORT },
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "rate", required_argument, NULL, OPT_RATE },
	{ "window", required_argument, NULL, OPT_WINDOW },
	{ "duration", required_argument, NULL, OPT_DURATION },
	{ "warmup", required_argument, NULL, OPT_WARMUP },
	{ "flows", required_argument, NULL, OPT_FLOWS },
	{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
	{ "burst", required_argument, NULL, OPT_BURST },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

/* Parse one option's value into opt; prints the one-line complaint itself. */
static int set_option(struct options *opt, int c, const char *arg)
{
	uint64_t u;

	switch (c) {
	case OPT_DST:
		if (inet_pton(AF_INET, arg, &opt->dst) != 1)
			return arg_error("--dst", "not an IPv4 address");
		return 0;
	case OPT_PORT:
		if (args_uint(arg, 1, 65535, &u))
			return arg_error("--port", "must be an integer from 1 to 65535");
		opt->port = (uint16_t)u;
		return 0;
	case OPT_SIZE:
		if (args_uint(arg, MIN_SIZE, MAX_SIZE, &u))
			return arg_error("--size", "must be an integer from 16 to 1472");
		opt->size = (unsigned int)u;
		return 0;
	case OPT_RATE:
		if (args_decimal(arg, 0.0, MAX_RATE, &opt->rate))
			return arg_error("--rate", "must be a number from 0 to 10000000");
		return 0;
	case OPT_BURST:
		if (args_uint(arg, 1, MAX_BURST, &u))
			return arg_error("--burst", "must be an integer from 1 to 1024");
		opt->burst = (unsigned int)u;
		return 0;
	case OPT_WINDOW:
		if (args_uint(arg, 1, MAX_WINDOW, &u))
			return arg_error("--window", "must be an integer from 1 to 65536");
		opt->window = (unsigned int)u;
		return 0;
	case OPT_DURATION:
		if (args_decimal(arg, 0.0, MAX_DURATION, &opt->duration) || opt->duration <= 0.0)
			return arg_error("--duration", "must be a number of seconds above 0, at most 86400");
		return 0;
	case OPT_WARMUP:
		if (args_decimal(arg, 0.0, MAX_DURATION, &opt->warmup))
			return arg_error("--warmup", "must be a number of seconds from 0 to 86400");
		return 0;
	case OPT_FLOWS:
		if (args_uint(arg, 1, MAX_FLOWS, &u))
			return arg_error("--flows", "must be an integer from 1 to 64");
		opt->flows = (unsigned int)u;
		return 0;
	case OPT_TIMEOUT:
		if (args_uint(arg, 1, MAX_TIMEOUT_MS, &u))
			return arg_error("--timeout-ms", "must be an integer from 1 to 60000");
		opt->timeout_ms = (unsigned int)u;
		return 0;
	case OPT_JSON:
		opt->json = 1;
		return 0;
	}
	return -EINVAL;
}

/* Returns 0 (*help set for --help) or -EINVAL after printing one line about the problem. */
static int parse_args(int argc, char **argv, struct options *opt, int *help)
{
	int c, err, have_dst = 0, window_given = 0, burst_given = 0;
	char name[64];

	*help = 0;
	*opt = (struct options){ .port = 7, .size = 64, .rate = 0.0, .burst = 1, .window = 1,
				 .duration = 5.0,
				 .warmup = 0.5, .flows = 1, .timeout_ms = 200, .json = 0 };
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", long_opts, NULL)) != -1) {
		if (c == OPT_HELP) {
			*help = 1;
			return 0;
		}
		if (c == ':')
			return arg_error(args_bad_option(long_opts, argv, name, sizeof(name)), "missing value");
		if (c == '?')
			return arg_error(args_bad_option(long_opts, argv, name, sizeof(name)), "unknown option");
		err = set_option(opt, c, optarg);
		if (err)
			return err;
		have_dst |= c == OPT_DST;
		window_given |= c == OPT_WINDOW;
		burst_given |= c == OPT_BURST;
	}
	if (optind < argc)
		return arg_error(argv[optind], "unexpected argument");
	if (!have_dst)
		return arg_error("--dst", "required");
	if (window_given && opt->rate > 0.0)
		return arg_error("--window", "only for closed loop (--rate 0)");
	if (burst_given && opt->rate <= 0.0)
		return arg_error("--burst", "only for open loop (--rate PPS)");
	return 0;
}

/* ---------- request ring ---------- */

static uint64_t pow2_at_least(uint64_t v)
{
	uint64_t p = 1;

	while (p < v)
		p <<= 1;
	return p;
}

/*
 * Open loop: at most rate*timeout requests are unresolved and, since timeouts pass in
 * send order, the ring spans about that many; twice that leaves room for catch-up bursts.
 * Closed loop: one request held back by a loss keeps the span open while the rest of the
 * window goes on, so size for about 128k requests per second per window slot.
 */
static uint64_t ring_slots(const struct options *opt)
{
	double want;

	if (opt->rate > 0.0)
		want = 2.0 * opt->rate * opt->timeout_ms / 1000.0 + 1024.0;
	else
		want = 128.0 * opt->window * opt->timeout_ms;
	if (want < RING_MIN)
		want = RING_MIN;
	if (want > RING_MAX)
		want = RING_MAX;
	return pow2_at_least((uint64_t)want);
}

static int ring_init(struct ring *r, uint64_t slots)
{
	r->mask = slots - 1;
	r->sent_ns = calloc(slots, sizeof(*r->sent_ns));
	r->state = calloc(slots, sizeof(*r->state));
	if (!r->sent_ns || !r->state)
		return -ENOMEM;
	return 0;
}

static void ring_free(struct ring *r)
{
	free(r->sent_ns);
	free(r->state);
}

/* ---------- accounting ---------- */

static int is_measured(const struct run *r, uint64_t seq)
{
	return r->measuring && seq >= r->m_lo;
}

/* Open loop: when request k is due; a burst shares the due time of its first request. */
static uint64_t due_ns(const struct run *r, uint64_t k)
{
	return r->t0 + (uint64_t)((double)(k - k % r->opt->burst) * r->period_ns);
}

static int sending_done(const struct run *r, uint64_t now)
{
	if (r->opt->rate > 0.0)
		return due_ns(r, r->open_k) >= r->end;
	return now >= r->end;
}

/* A request is given up on: count it and, in closed loop, free its window place. */
static void mark_lost(struct run *r, uint64_t seq, uint64_t now)
{
	r->ring.state[seq & r->ring.mask] = REQ_LOST;
	r->outstanding--;
	if (is_measured(r, seq))
		r->st.lost++;
	if (r->opt->rate <= 0.0 && now < r->end)
		r->owed++;
}

/* Skip resolved requests at the tail; true when the oldest outstanding one has timed out. */
static int oldest_timed_out(struct run *r, uint64_t now)
{
	const struct ring *ring = &r->ring;

	while (r->oldest < r->next_seq && ring->state[r->oldest & ring->mask] != REQ_OUT)
		r->oldest++;
	return r->oldest < r->next_seq && ring->sent_ns[r->oldest & ring->mask] + r->timeout_ns <= now;
}

/* Walk from the oldest request, skipping resolved ones, and time out the expired. */
static void expire_requests(struct run *r, uint64_t now)
{
	const struct ring *ring = &r->ring;

	while (r->oldest < r->next_seq) {
		uint64_t i = r->oldest & ring->mask;

		if (ring->state[i] == REQ_OUT) {
			if (ring->sent_ns[i] + r->timeout_ns > now)
				break;
			mark_lost(r, r->oldest, now);
		}
		r->oldest++;
	}
}

/*
 * Sequence number seq is about to reuse the slot of seq - slots. If that request is
 * still outstanding (more requests went out within one timeout than the ring holds),
 * it is counted lost now rather than tracked further.
 */
static void ring_evict(struct run *r, uint64_t seq, uint64_t now)
{
	uint64_t slots = r->ring.mask + 1, old;

	if (seq < slots || r->oldest > seq - slots)
		return;
	old = seq - slots;
	if (r->ring.state[old & r->ring.mask] == REQ_OUT)
		mark_lost(r, old, now);
	r->oldest = old + 1;
}

/* ---------- payload ---------- */

/* Padding depends on the sequence number, so a reply carrying another request's body is bad. */
static uint8_t pad_byte(uint64_t seq, size_t i)
{
	uint64_t mix = (seq + 1) * 0x9E3779B97F4A7C15ULL;

	return (uint8_t)(mix >> ((i & 7) * 8)) ^ (uint8_t)i;
}

static void fill_request(uint8_t *buf, size_t size, uint64_t seq, uint64_t sent_ns)
{
	struct req_hdr h = { .seq = seq, .sent_ns = sent_ns };
	size_t i;

	memcpy(buf, &h, sizeof(h));
	for (i = sizeof(h); i < size; i++)
		buf[i] = pad_byte(seq, i);
}

static int padding_ok(const uint8_t *buf, size_t size, uint64_t seq)
{
	size_t i;

	for (i = HDR_SIZE; i < size; i++)
		if (buf[i] != pad_byte(seq, i))
			return 0;
	return 1;
}

/* ---------- sockets ---------- */

/* Errors a connected UDP socket reports for an earlier ICMP message, not for this call. */
static int is_icmp_error(int e)
{
	return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN;
}

/*
 * Replies arrive in bursts when the generator's vCPU is descheduled (under TCG for
 * tens of milliseconds): with the default ~200 KiB receive buffer the kernel drops
 * them (UDP RcvbufErrors) and the server would be blamed for the loss. The FORCE
 * variants pass rmem_max/wmem_max when running as root; the plain ones are the
 * fallback, capped by those limits.
 */
static void widen_buffers(int fd)
{
	int bytes = 8 << 20;

	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

static int open_flow(const struct options *opt, int epfd, unsigned int idx, int *fd_out)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(opt->port),
				  .sin_addr = opt->dst };
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = idx };
	int fd, err;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	widen_buffers(fd);
	/* connect() binds a fresh ephemeral source port per socket: one flow each for RSS. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	*fd_out = fd;
	return 0;
}

static int open_timer(int epfd, int *fd_out)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = EPOLL_TIMER_TAG };
	int fd, err;

	fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	*fd_out = fd;
	return 0;
}

/* Absolute deadlines: a late wakeup does not push every later deadline back. */
static int arm_timer(struct run *r, uint64_t at_ns)
{
	struct itimerspec its = { 0 };

	if (at_ns == r->armed_ns)
		return 0;
	its.it_value.tv_sec = (time_t)(at_ns / NS_PER_SEC);
	its.it_value.tv_nsec = (long)(at_ns % NS_PER_SEC);
	if (timerfd_settime(r->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		return -errno;
	r->armed_ns = at_ns;
	return 0;
}

/* ---------- sending ---------- */

/*
 * Send request next_seq on its flow. Returns 0 when sent, -EAGAIN when the kernel had
 * no room for it (nothing consumed), or another -errno on a real failure.
 */
static int send_request(struct run *r)
{
	uint64_t seq = r->next_seq, now;
	int fd = r->fds[seq % r->opt->flows];
	int tries;
	ssize_t n = -1;

	for (tries = 0; tries < 2; tries++) {
		now = mono_ns();
		fill_request(r->tx, r->opt->size, seq, now);
		n = send(fd, r->tx, r->opt->size, 0);
		if (n >= 0)
			break;
		/* A pending ICMP error is reported once, by this call, which then sent nothing. */
		if (!is_icmp_error(errno) && errno != EINTR)
			break;
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || is_icmp_error(errno))
			return -EAGAIN;
		return -errno;
	}
	ring_evict(r, seq, now);
	r->ring.sent_ns[seq & r->ring.mask] = now;
	r->ring.state[seq & r->ring.mask] = REQ_OUT;
	r->outstanding++;
	r->next_seq++;
	return 0;
}

static void start_measuring(struct run *r)
{
	if (!r->measuring) {
		r->measuring = 1;
		r->m_lo = r->next_seq;
	}
}

/* Open loop: send every request whose scheduled time has come, up to a burst. */
static int send_open_loop(struct run *r, uint64_t now)
{
	unsigned int n;
	int err;

	for (n = 0; n < SEND_BURST; n++) {
		uint64_t due = due_ns(r, r->open_k);
		int measured = due >= r->warm_end;

		if (due >= r->end || due > now)
			break;
		if (measured)
			start_measuring(r);
		err = send_request(r);
		if (err && err != -EAGAIN)
			return err;
		if (measured) {
			if (err)
				r->st.send_errors++;
			else
				r->st.sent++;
		}
		r->open_k++;
	}
	return 0;
}

/* Closed loop: fill the window back up; a refused send is retried shortly. */
static int send_closed_loop(struct run *r, uint64_t now)
{
	unsigned int n;
	int err;

	if (now >= r->end || (r->retry_at && now < r->retry_at))
		return 0;
	r->retry_at = 0;
	for (n = 0; n < SEND_BURST && r->owed > 0; n++) {
		if (now >= r->warm_end)
			start_measuring(r);
		err = send_request(r);
		if (err == -EAGAIN) {
			r->retry_at = now + RETRY_NS;
			return 0;
		}
		if (err)
			return err;
		if (r->measuring)
			r->st.sent++;
		r->owed--;
	}
	return 0;
}

/* ---------- receiving ---------- */

static void handle_reply(struct run *r, size_t len, uint64_t now)
{
	const struct ring *ring = &r->ring;
	int counts = now >= r->warm_end;
	struct req_hdr h;
	uint64_t i;

	if (len != r->opt->size) {
		r->st.bad += counts;
		return;
	}
	memcpy(&h, r->rx, sizeof(h));
	if (h.seq >= r->next_seq) {
		r->st.bad += counts;
		return;
	}
	/* Older than the ring remembers: it was resolved long ago, by a timeout or eviction. */
	if (r->next_seq - h.seq > ring->mask + 1) {
		r->st.late += is_measured(r, h.seq);
		return;
	}
	i = h.seq & ring->mask;
	if (ring->sent_ns[i] != h.sent_ns || !padding_ok(r->rx, len, h.seq)) {
		r->st.bad += counts;
		return;
	}
	switch (ring->state[i]) {
	case REQ_OUT:
		ring->state[i] = REQ_DONE;
		r->outstanding--;
		if (is_measured(r, h.seq)) {
			r->st.received++;
			hist_add(&r->hist, now - h.sent_ns);
		}
		if (r->opt->rate <= 0.0 && now < r->end)
			r->owed++;
		break;
	case REQ_LOST:
		r->st.late += is_measured(r, h.seq);
		break;
	case REQ_DONE:
		r->st.dup += is_measured(r, h.seq);
		break;
	}
}

/* Read what one flow has queued, up to limit datagrams. */
static int drain_flow(struct run *r, int fd, unsigned int limit)
{
	unsigned int n;
	ssize_t len;

	for (n = 0; n < limit; n++) {
		/* MSG_TRUNC returns the real length, so an oversized reply is seen as such. */
		len = recv(fd, r->rx, sizeof(r->rx), MSG_TRUNC);
		if (len < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR || is_icmp_error(errno))
				continue;
			return -errno;
		}
		handle_reply(r, (size_t)len, mono_ns());
	}
	return 0;
}

/*
 * Before counting anything lost: replies may be sitting unread only because this process
 * was not running (a busy host deschedules it). Reading them first keeps the generator's
 * own stalls out of the loss count; their latency still shows the delay.
 */
static int drain_all_flows(struct run *r)
{
	unsigned int i;
	int err;

	for (i = 0; i < r->opt->flows; i++) {
		err = drain_flow(r, r->fds[i], UINT32_MAX);
		if (err)
			return err;
	}
	return 0;
}

static void clear_timer(struct run *r)
{
	uint64_t expirations;

	if (read(r->tfd, &expirations, sizeof(expirations)) == sizeof(expirations))
		r->armed_ns = 0;
}

/* ---------- main loop ---------- */

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* The next moment something is due: a send, a retry, a timeout or the end. */
static uint64_t next_wake(const struct run *r, uint64_t now)
{
	uint64_t wake = UINT64_MAX;

	if (!sending_done(r, now)) {
		if (r->opt->rate > 0.0)
			wake = due_ns(r, r->open_k);
		else if (r->owed > 0)
			wake = r->retry_at ? r->retry_at : now;
		else
			wake = r->end;
	}
	if (r->outstanding > 0 && r->oldest < r->next_seq)
		wake = min_u64(wake, r->ring.sent_ns[r->oldest & r->ring.mask] + r->timeout_ns);
	return wake;
}

static int wait_events(struct run *r, uint64_t now)
{
	struct epoll_event ev[MAX_FLOWS + 1];
	uint64_t wake = next_wake(r, now);
	int n, i, err, timeout = -1;

	if (wake <= now)
		timeout = 0; /* behind schedule: only collect what is ready */
	else if ((err = arm_timer(r, wake)) < 0)
		return err;
	n = epoll_wait(r->epfd, ev, MAX_FLOWS + 1, timeout);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (i = 0; i < n; i++) {
		if (ev[i].data.u32 == EPOLL_TIMER_TAG) {
			clear_timer(r);
			continue;
		}
		err = drain_flow(r, r->fds[ev[i].data.u32], RECV_BURST);
		if (err)
			return err;
	}
	return 0;
}

/*
 * A signal ends the measured window now (during warmup: an empty one); what is in
 * flight still gets its timeout, so the counts stay consistent.
 */
static void check_stop(struct run *r, uint64_t now)
{
	if (!stop_requested || now >= r->end)
		return;
	if (now < r->warm_end)
		r->warm_end = now;
	r->end = now;
}

static void start_clock(struct run *r)
{
	const struct options *opt = r->opt;

	r->timeout_ns = opt->timeout_ms * NS_PER_MS;
	r->period_ns = opt->rate > 0.0 ? (double)NS_PER_SEC / opt->rate : 0.0;
	r->t0 = mono_ns();
	r->warm_end = r->t0 + secs_to_ns(opt->warmup);
	r->end = r->warm_end + secs_to_ns(opt->duration);
	r->owed = opt->rate > 0.0 ? 0 : opt->window;
}

static int run_loop(struct run *r)
{
	uint64_t now;
	int err;

	start_clock(r);
	for (;;) {
		now = mono_ns();
		check_stop(r, now);
		if (oldest_timed_out(r, now)) {
			err = drain_all_flows(r);
			if (err)
				return err;
			expire_requests(r, now);
		}
		err = r->opt->rate > 0.0 ? send_open_loop(r, now) : send_closed_loop(r, now);
		if (err)
			return err;
		if (sending_done(r, now) && r->outstanding == 0)
			return 0;
		err = wait_events(r, now);
		if (err)
			return err;
	}
}

/* ---------- setup and report ---------- */

/* Only marks every descriptor closed, so run_close is safe whatever run_init reached. */
static void run_reset(struct run *r, const struct options *opt)
{
	unsigned int i;

	r->opt = opt;
	r->epfd = -1;
	r->tfd = -1;
	for (i = 0; i < MAX_FLOWS; i++)
		r->fds[i] = -1;
}

static int run_init(struct run *r, const struct options *opt)
{
	unsigned int i;
	int err;

	err = ring_init(&r->ring, ring_slots(opt));
	if (err)
		return err;
	r->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (r->epfd < 0)
		return -errno;
	err = open_timer(r->epfd, &r->tfd);
	for (i = 0; !err && i < opt->flows; i++)
		err = open_flow(opt, r->epfd, i, &r->fds[i]);
	return err;
}

static void run_close(struct run *r)
{
	unsigned int i;

	for (i = 0; i < MAX_FLOWS; i++)
		if (r->fds[i] >= 0)
			close(r->fds[i]);
	if (r->tfd >= 0)
		close(r->tfd);
	if (r->epfd >= 0)
		close(r->epfd);
	ring_free(&r->ring);
}

struct report {
	double duration_s, offered_pps, achieved_pps;
	double p50_us, p90_us, p99_us, max_us;
};

static void make_report(const struct run *r, struct report *rep)
{
	const struct hist *h = &r->hist;

	rep->duration_s = r->end > r->warm_end ? (double)(r->end - r->warm_end) / (double)NS_PER_SEC : 0.0;
	/* Offered counts what the generator tried to send, refused sends included. */
	rep->offered_pps = rep->duration_s > 0 ?
				   (double)(r->st.sent + r->st.send_errors) / rep->duration_s : 0.0;
	rep->achieved_pps = rep->duration_s > 0 ? (double)r->st.received / rep->duration_s : 0.0;
	rep->p50_us = (double)hist_percentile(h, 500) / 1000.0;
	rep->p90_us = (double)hist_percentile(h, 900) / 1000.0;
	rep->p99_us = (double)hist_percentile(h, 990) / 1000.0;
	rep->max_us = (double)h->max_ns / 1000.0;
}

/* With no reply measured a latency is unknown, which JSON says as null. */
static void json_latency(const char *name, double v, int have, int last)
{
	if (have)
		printf("\"%s\": %.1f%s", name, v, last ? "" : ", ");
	else
		printf("\"%s\": null%s", name, last ? "" : ", ");
}

static void print_json(const struct run *r, const struct report *rep)
{
	const struct stats *s = &r->st;
	int have = r->hist.count > 0;

	printf("{\"mode\": \"%s\", \"dst\": \"%s\", \"port\": %u, \"size\": %u, \"flows\": %u, ",
	       r->opt->rate > 0.0 ? "open" : "closed", inet_ntoa(r->opt->dst), r->opt->port,
	       r->opt->size, r->opt->flows);
	if (r->opt->rate > 0.0)
		printf("\"rate\": %.3f, \"burst\": %u, ", r->opt->rate, r->opt->burst);
	else
		printf("\"window\": %u, ", r->opt->window);
	printf("\"sent\": %llu, \"received\": %llu, \"lost\": %llu, \"late\": %llu, \"bad\": %llu, "
	       "\"dup\": %llu, \"send_errors\": %llu, ",
	       (unsigned long long)s->sent, (unsigned long long)s->received, (unsigned long long)s->lost,
	       (unsigned long long)s->late, (unsigned long long)s->bad, (unsigned long long)s->dup,
	       (unsigned long long)s->send_errors);
	printf("\"duration_s\": %.3f, \"offered_pps\": %.1f, \"achieved_pps\": %.1f, ", rep->duration_s,
	       rep->offered_pps, rep->achieved_pps);
	json_latency("p50_us", rep->p50_us, have, 0);
	json_latency("p90_us", rep->p90_us, have, 0);
	json_latency("p99_us", rep->p99_us, have, 0);
	json_latency("max_us", rep->max_us, have, 1);
	printf("}\n");
}

static void print_summary(const struct run *r, const struct report *rep)
{
	const struct stats *s = &r->st;

	if (r->opt->rate > 0.0)
		printf("open loop at %.1f pps", r->opt->rate);
	else
		printf("closed loop, window %u", r->opt->window);
	printf(", %u flow(s), %u-byte payload to %s:%u\n", r->opt->flows, r->opt->size,
	       inet_ntoa(r->opt->dst), r->opt->port);
	printf("  sent %llu  received %llu  lost %llu  late %llu  bad %llu  dup %llu  send errors %llu\n",
	       (unsigned long long)s->sent, (unsigned long long)s->received, (unsigned long long)s->lost,
	       (unsigned long long)s->late, (unsigned long long)s->bad, (unsigned long long)s->dup,
	       (unsigned long long)s->send_errors);
	printf("  over %.3f s: offered %.1f pps, achieved %.1f pps\n", rep->duration_s, rep->offered_pps,
	       rep->achieved_pps);
	if (r->hist.count)
		printf("  latency us: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", rep->p50_us, rep->p90_us,
		       rep->p99_us, rep->max_us);
	else
		printf("  latency: no replies measured\n");
}

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}


int main(int argc, char **argv)
{
	struct options opt;
	struct report rep;
	struct run *r;
	int err, help;

	err = parse_args(argc, argv, &opt, &help);
	if (err)
		return 2;
	if (help) {
		usage(stdout);
		return 0;
	}
	/* Pacing wants wakeups near the deadline; the default 50 us slack would bunch sends. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	r = calloc(1, sizeof(*r));
	if (!r) {
		fprintf(stderr, PROG ": out of memory\n");
		return 1;
	}
	run_reset(r, &opt);
	err = args_on_stop_signals(on_stop_signal);
	if (!err)
		err = run_init(r, &opt);
	if (!err)
		err = run_loop(r);
	if (err) {
		fprintf(stderr, PROG ": runtime error: %s\n", strerror(-err));
		run_close(r);
		free(r);
		return 1;
	}
	make_report(r, &rep);
	if (opt.json)
		print_json(r, &rep);
	else
		print_summary(r, &rep);
	fflush(stdout);
	run_close(r);
	free(r);
	return 0;
}
