/*
 * udp_echo_kernel: the kernel-stack baseline UDP echo server.
 *
 * It owns N UDP sockets bound to one port with SO_REUSEPORT (one per thread, so the
 * kernel spreads flows over threads by hashing), the threads that serve them and one
 * eventfd that tells them to stop. Each datagram is sent back to its sender unchanged,
 * in batches with recvmmsg/sendmmsg. It must not send anything but such echoes, change
 * any system-wide setting or write any file. The only output on stdout is one JSON line
 * {"received": N, "sent": N} at exit; a line on stderr says where it listens, so a
 * script can wait for it (and learn the port when --port 0 let the kernel choose).
 *
 * Datagrams larger than a receive buffer (9216 bytes, a jumbo frame) would come back
 * cut short; they are counted received and dropped instead of echoed altered.
 *
 * SIGINT and SIGTERM are blocked in every thread and collected by the main thread with
 * sigtimedwait, which also times --duration; no signal handler is needed.
 * Exit status: 0 after a normal stop, 1 on a runtime error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "args.h"

#define PROG "udp_echo_kernel"
#define arg_error(opt, what) args_error(PROG, (opt), (what))

#define NS_PER_SEC 1000000000ULL
#define MAX_THREADS 64
#define MAX_DURATION 31536000.0 /* a year; 0 means forever */
#define BATCH 32
#define BUF_SIZE 9216
/* Batches handled per wakeup before looking at the stop eventfd again. */
#define BURSTS_PER_WAKE 16

struct options {
	struct in_addr bind_addr;
	uint16_t port;
	unsigned int threads;
	double duration;
};

/* One per thread; the main thread reads the counters only after joining it. */
struct worker {
	pthread_t tid;
	int started;
	int fd;
	int stop_fd;
	int err; /* 0 or -errno that ended the thread */
	uint64_t received;
	uint64_t sent;
	uint8_t *bufs; /* BATCH buffers of BUF_SIZE */
	struct sockaddr_in peers[BATCH];
	struct iovec rx_iov[BATCH];
	struct mmsghdr rx[BATCH];
	struct iovec tx_iov[BATCH];
	struct mmsghdr tx[BATCH];
};

/* ---------- arguments ---------- */

static void usage(FILE *f)
{
	fprintf(f, "usage: " PROG " [--port N] [--threads N] [--duration S] [--bind IPV4]\n"
		   "  --port N       UDP port to serve, 0 = let the kernel choose (default 7)\n"
		   "  --threads N    threads, each with its own SO_REUSEPORT socket, 1..%d (default 1)\n"
		   "  --duration S   stop after S seconds, 0 = run until SIGINT/SIGTERM (default 0)\n"
		   "  --bind IPV4    local address to bind (default 0.0.0.0)\n",
		MAX_THREADS);
}

enum { OPT_PORT = 256, OPT_THREADS, OPT_DURATION, OPT_BIND, OPT_HELP };

static const struct option long_opts[] = {
	{ "port", required_argument, NULL, OPT_PORT },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "duration", required_argument, NULL, OPT_DURATION },
	{ "bind", required_argument, NULL, OPT_BIND },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static int set_option(struct options *opt, int c, const char *arg)
{
	uint64_t u;

	switch (c) {
	case OPT_PORT:
		if (args_uint(arg, 0, 65535, &u))
			return arg_error("--port", "must be an integer from 0 to 65535");
		opt->port = (uint16_t)u;
		return 0;
	case OPT_THREADS:
		if (args_uint(arg, 1, MAX_THREADS, &u))
			return arg_error("--threads", "must be an integer from 1 to 64");
		opt->threads = (unsigned int)u;
		return 0;
	case OPT_DURATION:
		if (args_decimal(arg, 0.0, MAX_DURATION, &opt->duration))
			return arg_error("--duration", "must be a number of seconds from 0 to 31536000");
		return 0;
	case OPT_BIND:
		if (inet_pton(AF_INET, arg, &opt->bind_addr) != 1)
			return arg_error("--bind", "not an IPv4 address");
		return 0;
	}
	return -EINVAL;
}

/* Returns 0 (*help set for --help) or -EINVAL after printing one line about the problem. */
static int parse_args(int argc, char **argv, struct options *opt, int *help)
{
	char name[64];
	int c, err;

	*help = 0;
	*opt = (struct options){ .bind_addr.s_addr = htonl(INADDR_ANY), .port = 7, .threads = 1,
				 .duration = 0.0 };
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
	}
	if (optind < argc)
		return arg_error(argv[optind], "unexpected argument");
	return 0;
}

/* ---------- sockets ---------- */

/*
 * Every thread's socket binds the same address and port; SO_REUSEPORT makes the kernel
 * hash each flow to one of them. With port 0 the first bind picks the port and the
 * others follow it (*port is updated).
 */
static int open_socket(struct in_addr addr, uint16_t *port, int *fd_out)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(*port), .sin_addr = addr };
	socklen_t len = sizeof(sa);
	int one = 1, rcvbuf = 8 << 20, fd, err;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/*
	 * A server descheduled for tens of milliseconds (a busy host, TCG) finds a burst
	 * waiting: with the default ~200 KiB receive buffer the kernel drops part of it
	 * (UDP RcvbufErrors), which would read as the server's loss. 8 MiB as udp_loadgen
	 * does: FORCE passes rmem_max when root, the plain call is the capped fallback.
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	*port = ntohs(sa.sin_port);
	*fd_out = fd;
	return 0;
}

/* ---------- worker ---------- */

/* The kernel rewrites lengths and flags on every call, so they are reset before each. */
static void prepare_rx(struct worker *w)
{
	unsigned int i;

	for (i = 0; i < BATCH; i++) {
		w->rx_iov[i].iov_base = w->bufs + (size_t)i * BUF_SIZE;
		w->rx_iov[i].iov_len = BUF_SIZE;
		memset(&w->rx[i], 0, sizeof(w->rx[i]));
		w->rx[i].msg_hdr.msg_name = &w->peers[i];
		w->rx[i].msg_hdr.msg_namelen = sizeof(w->peers[i]);
		w->rx[i].msg_hdr.msg_iov = &w->rx_iov[i];
		w->rx[i].msg_hdr.msg_iovlen = 1;
	}
}

/* Build the reply batch from the n datagrams received; returns how many to send. */
static unsigned int prepare_tx(struct worker *w, unsigned int n)
{
	unsigned int i, m = 0;

	for (i = 0; i < n; i++) {
		if (w->rx[i].msg_hdr.msg_flags & MSG_TRUNC)
			continue;
		w->tx_iov[m].iov_base = w->rx_iov[i].iov_base;
		w->tx_iov[m].iov_len = w->rx[i].msg_len;
		memset(&w->tx[m], 0, sizeof(w->tx[m]));
		w->tx[m].msg_hdr.msg_name = &w->peers[i];
		w->tx[m].msg_hdr.msg_namelen = w->rx[i].msg_hdr.msg_namelen;
		w->tx[m].msg_hdr.msg_iov = &w->tx_iov[m];
		w->tx[m].msg_hdr.msg_iovlen = 1;
		m++;
	}
	return m;
}

/* Failures that concern one datagram or a full queue: drop that echo, keep serving. */
static int is_per_datagram_error(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == ECONNREFUSED ||
	       e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN || e == EPERM ||
	       e == EINVAL || e == EMSGSIZE || e == EACCES;
}

/*
 * sendmmsg stops at the first failing message; that one is skipped (its echo is
 * dropped) and the rest of the batch still goes out.
 */
static int send_batch(struct worker *w, unsigned int m)
{
	unsigned int off = 0;
	int k;

	while (off < m) {
		k = sendmmsg(w->fd, w->tx + off, m - off, 0);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (!is_per_datagram_error(errno))
				return -errno;
			off++;
			continue;
		}
		w->sent += (uint64_t)k;
		off += (unsigned int)k;
	}
	return 0;
}

/* Echo what is queued on the socket, a batch at a time, without blocking on receive. */
static int echo_burst(struct worker *w)
{
	unsigned int round;
	int n, err;

	for (round = 0; round < BURSTS_PER_WAKE; round++) {
		prepare_rx(w);
		n = recvmmsg(w->fd, w->rx, BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR || is_per_datagram_error(errno))
				continue;
			return -errno;
		}
		w->received += (uint64_t)n;
		err = send_batch(w, prepare_tx(w, (unsigned int)n));
		if (err)
			return err;
		if (n < BATCH)
			return 0; /* queue drained */
	}
	return 0;
}

/*
 * Sleep in poll until a datagram or the stop eventfd arrives. The eventfd is never
 * read, so once written it wakes every thread and keeps them awake until they exit.
 */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pollfd pfd[2] = { { .fd = w->fd, .events = POLLIN },
				 { .fd = w->stop_fd, .events = POLLIN } };

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			w->err = -errno;
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents & (POLLIN | POLLERR)) {
			w->err = echo_burst(w);
			if (w->err)
				break;
		}
	}
	/* Tell the main thread a worker has ended on its own, so it does not wait forever. */
	if (w->err)
		kill(getpid(), SIGUSR1);
	return NULL;
}

/* ---------- main thread ---------- */

static void block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, set, NULL);
}

/*
 * Wait for SIGINT/SIGTERM, a failed worker's SIGUSR1, or the end of the duration (0: no
 * end). Which one it was does not matter: the workers' own errors are collected at join.
 */
static int wait_for_stop(const sigset_t *set, double duration)
{
	struct timespec now, left;
	uint64_t end_ns = 0, now_ns;
	int sig;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (duration > 0.0)
		end_ns = (uint64_t)now.tv_sec * NS_PER_SEC + (uint64_t)now.tv_nsec +
			 (uint64_t)(duration * (double)NS_PER_SEC + 0.5);
	for (;;) {
		if (!end_ns) {
			sig = sigwaitinfo(set, NULL);
		} else {
			clock_gettime(CLOCK_MONOTONIC, &now);
			now_ns = (uint64_t)now.tv_sec * NS_PER_SEC + (uint64_t)now.tv_nsec;
			if (now_ns >= end_ns)
				return 0;
			left.tv_sec = (time_t)((end_ns - now_ns) / NS_PER_SEC);
			left.tv_nsec = (long)((end_ns - now_ns) % NS_PER_SEC);
			sig = sigtimedwait(set, NULL, &left);
		}
		if (sig > 0)
			return 0;
		if (errno != EINTR && errno != EAGAIN)
			return -errno;
	}
}

static int start_workers(struct worker *ws, const struct options *opt, int stop_fd, uint16_t *port)
{
	unsigned int i;
	int err;

	for (i = 0; i < opt->threads; i++) {
		ws[i].fd = -1;
		ws[i].stop_fd = stop_fd;
	}
	for (i = 0; i < opt->threads; i++) {
		ws[i].bufs = malloc((size_t)BATCH * BUF_SIZE);
		if (!ws[i].bufs)
			return -ENOMEM;
		err = open_socket(opt->bind_addr, port, &ws[i].fd);
		if (err)
			return err;
	}
	for (i = 0; i < opt->threads; i++) {
		err = pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]);
		if (err)
			return -err;
		ws[i].started = 1;
	}
	return 0;
}

/* Wake every worker, wait for it, and release what it held. */
static int stop_workers(struct worker *ws, unsigned int n, int stop_fd, uint64_t *rx, uint64_t *tx)
{
	uint64_t one = 1;
	unsigned int i;
	int err = 0;

	if (write(stop_fd, &one, sizeof(one)) != sizeof(one))
		err = -errno;
	for (i = 0; i < n; i++) {
		if (ws[i].started) {
			pthread_join(ws[i].tid, NULL);
			*rx += ws[i].received;
			*tx += ws[i].sent;
			if (ws[i].err && !err)
				err = ws[i].err;
		}
		if (ws[i].fd >= 0)
			close(ws[i].fd);
		free(ws[i].bufs);
	}
	return err;
}

int main(int argc, char **argv)
{
	struct options opt;
	struct worker *ws;
	uint64_t received = 0, sent = 0;
	sigset_t set;
	uint16_t port;
	int stop_fd, err, err2, help;
	char addr[INET_ADDRSTRLEN];

	err = parse_args(argc, argv, &opt, &help);
	if (err)
		return 2;
	if (help) {
		usage(stdout);
		return 0;
	}
	/* Before any thread exists, so all of them inherit the mask. */
	block_signals(&set);
	ws = calloc(opt.threads, sizeof(*ws));
	stop_fd = eventfd(0, EFD_CLOEXEC);
	if (!ws || stop_fd < 0) {
		fprintf(stderr, PROG ": setup: %s\n", strerror(ws ? errno : ENOMEM));
		return 1;
	}
	port = opt.port;
	err = start_workers(ws, &opt, stop_fd, &port);
	if (!err) {
		inet_ntop(AF_INET, &opt.bind_addr, addr, sizeof(addr));
		fprintf(stderr, PROG ": listening on %s:%u with %u thread(s)\n", addr, port, opt.threads);
		err = wait_for_stop(&set, opt.duration);
	}
	err2 = stop_workers(ws, opt.threads, stop_fd, &received, &sent);
	close(stop_fd);
	free(ws);
	if (!err)
		err = err2;
	if (err) {
		fprintf(stderr, PROG ": runtime error: %s\n", strerror(-err));
		return 1;
	}
	printf("{\"received\": %llu, \"sent\": %llu}\n", (unsigned long long)received,
	       (unsigned long long)sent);
	fflush(stdout);
	return 0;
}
