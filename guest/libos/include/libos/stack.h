/*
 * libos/stack.h: a minimal per-core network stack (Ethernet, ARP, IPv4, ICMP echo, UDP).
 *
 * The stack is driven entirely by its caller: frames come in through stack_input, frames go
 * out through ops->tx, datagrams are handed up through ops->udp_rx. It owns no thread, no
 * timer and no global state, and it allocates memory only in stack_create, so a core can run
 * one without locks and a flood of traffic cannot make it grow.
 *
 * Deliberately missing: fragment reassembly, IP options (accepted, ignored), VLANs,
 * multicast, routing through a gateway, ARP entry expiry, TCP.
 *
 * Calling rules: ops->udp_rx may call stack_udp_reply and stack_udp_send on the same stack,
 * because the transmit buffer is free while a received datagram is being delivered. Neither
 * callback may call stack_input or stack_destroy, and ops->tx may not call into the stack at
 * all: the frame it is given lives in the stack's transmit buffer.
 */
#ifndef LIBOS_STACK_H
#define LIBOS_STACK_H

#include <stddef.h>
#include <stdint.h>

/*
 * Every received frame counts in rx_frames/rx_bytes and, if it is dropped, in exactly one
 * drop_* counter. A header that contradicts itself is "bad"; a frame that ends before what a
 * consistent header claims is "short".
 */
struct stack_counters {
	uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes;
	uint64_t drop_short;        /* shorter than the headers it carries claim */
	uint64_t drop_oversize;     /* longer than 1514 bytes (no FCS) */
	uint64_t drop_foreign_mac;  /* unicast to another MAC */
	uint64_t drop_ethertype;    /* neither IPv4 nor ARP */
	uint64_t drop_ip_bad;       /* version, IHL, total length, TTL 0; also martian sources */
	uint64_t drop_ip_csum;
	uint64_t drop_ip_frag;      /* fragments are not reassembled: MF set or offset != 0 */
	uint64_t drop_ip_foreign;   /* not addressed to us (nor broadcast) */
	uint64_t drop_proto;        /* IP protocol other than ICMP/UDP, ICMP other than echo request */
	uint64_t drop_udp_bad;      /* UDP length or (non-zero) checksum wrong */
	uint64_t drop_udp_noport;   /* no bound port */
	uint64_t drop_tx;           /* the tx callback refused a frame */
	uint64_t arp_rx, arp_tx, arp_unresolved;
	uint64_t icmp_echo;         /* echo requests answered */
	uint64_t udp_rx, udp_tx;
	uint64_t drop_icmp_bad;     /* echo request with a wrong ICMP checksum */
	uint64_t drop_src_mac;      /* echo request from a group or all-zero source MAC */
};

struct udp_dgram {
	uint32_t src_ip, dst_ip;       /* network byte order */
	uint16_t src_port, dst_port;   /* host byte order */
	uint8_t src_mac[6];
	const uint8_t *data;           /* valid only during the callback */
	size_t len;
};

struct stack_ops {
	/* Transmit one complete Ethernet frame (no FCS). Returns 0 or -errno. */
	int (*tx)(void *tx_ctx, const void *frame, size_t len);
	void *tx_ctx;
	/* A UDP datagram arrived on a bound port. */
	void (*udp_rx)(void *app, const struct udp_dgram *d);
	void *app;
};

struct stack;   /* opaque; one per core, never shared between threads */

/* ip and netmask in network byte order. Returns 0 or -errno (-EINVAL, -ENOMEM). */
int stack_create(struct stack **out, const uint8_t mac[6], uint32_t ip, uint32_t netmask,
		 const struct stack_ops *ops);
void stack_destroy(struct stack *s);
/* One received Ethernet frame. Never crashes, never reads outside [frame, frame+len). */
void stack_input(struct stack *s, const uint8_t *frame, size_t len);
/* Bind a UDP port (host order) so datagrams to it reach ops->udp_rx. 0 or -errno. */
int stack_udp_bind(struct stack *s, uint16_t port);
/* Send a datagram. dst_ip network order, ports host order. Returns 0, -EHOSTUNREACH when the
 * destination's MAC is not known yet (an ARP request is sent, arp_unresolved counted; the
 * caller retries), -EMSGSIZE beyond 1472 bytes of payload, or the tx callback's error.
 * Also -ENETUNREACH for a destination outside our subnet (there is no gateway) and -EINVAL
 * for one that cannot be a unicast neighbour (0, our own address, loopback, multicast).
 * 255.255.255.255 and the subnet broadcast go to the Ethernet broadcast address. */
int stack_udp_send(struct stack *s, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port,
		   const void *data, size_t len);
/* Same, replying to a datagram: uses d->src_mac directly, so no ARP lookup is needed. */
int stack_udp_reply(struct stack *s, const struct udp_dgram *d, const void *data, size_t len);
const struct stack_counters *stack_counters(const struct stack *s);

#endif /* LIBOS_STACK_H */
