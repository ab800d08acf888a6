/*
 * stack_int.h: the layout of struct stack and the calls between the layers of the stack.
 *
 * Only the files in guest/libos/net include this. Each layer gets a pointer and a length
 * already checked against the frame; a layer must never look before its pointer or past
 * its length, which is what keeps stack_input safe on arbitrary bytes.
 *
 * Nothing declared here may allocate or keep state outside struct stack.
 */
#ifndef LIBOS_NET_STACK_INT_H
#define LIBOS_NET_STACK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <libos/stack.h>

enum {
	MAC_LEN = 6,
	ETH_HDR_LEN = 14,
	ETH_MIN_FRAME = 60,	/* without FCS; shorter frames are padded on transmit */
	ETH_MAX_FRAME = 1514,	/* without FCS */
	ETYPE_IPV4 = 0x0800,
	ETYPE_ARP = 0x0806,

	ARP_PKT_LEN = 28,
	ARP_CACHE_SIZE = 64,

	IPV4_HDR_LEN = 20,
	IPV4_PROTO_ICMP = 1,
	IPV4_PROTO_UDP = 17,
	IPV4_DEFAULT_TTL = 64,

	ICMP_HDR_LEN = 8,

	UDP_HDR_LEN = 8,
	UDP_MAX_PAYLOAD = ETH_MAX_FRAME - ETH_HDR_LEN - IPV4_HDR_LEN - UDP_HDR_LEN,
	UDP_MAX_PORTS = 16,
};

#define IPV4_BROADCAST 0xffffffffu

struct arp_entry {
	uint32_t ip;		/* network order; 0 marks a free slot */
	uint8_t mac[MAC_LEN];
	uint64_t stamp;		/* arp_clock when last written; the smallest is replaced first */
};

struct stack {
	uint8_t mac[MAC_LEN];
	uint32_t ip, netmask;	/* network order */
	uint32_t bcast;		/* subnet broadcast, or 255.255.255.255 for /31 and /32 */
	struct stack_ops ops;
	struct stack_counters c;
	uint16_t ip_id;
	uint64_t arp_clock;
	struct arp_entry arp[ARP_CACHE_SIZE];
	uint16_t ports[UDP_MAX_PORTS];
	unsigned int nports;
	/* Every outgoing frame is built here, so sending never allocates. */
	uint8_t tx_buf[ETH_MAX_FRAME];
};

/* Wire fields are read byte by byte: frames carry no alignment promise. */
static inline uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* Addresses stay in network order end to end, so they are copied, never swapped. */
static inline uint32_t get_ip(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline void put_ip(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, sizeof(v));
}

static inline bool mac_is_multicast(const uint8_t *m)
{
	return m[0] & 1;
}

static inline bool mac_is_zero(const uint8_t *m)
{
	return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0;
}

extern const uint8_t mac_broadcast[MAC_LEN];

/* eth.c */
void eth_put_header(uint8_t *frame, const uint8_t *dst, const uint8_t *src, uint16_t type);
int eth_tx(struct stack *s, size_t len);

/* arp.c */
void arp_input(struct stack *s, const uint8_t *pkt, size_t len);
bool arp_lookup(const struct stack *s, uint32_t ip, uint8_t mac[MAC_LEN]);
int arp_request(struct stack *s, uint32_t ip);

/* ip.c */
uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len);
uint16_t csum_finish(uint64_t sum);
bool ip_is_broadcast(const struct stack *s, uint32_t ip);
bool ip_is_neighbour(const struct stack *s, uint32_t ip);
void ip_input(struct stack *s, const uint8_t *src_mac, const uint8_t *pkt, size_t len);
void ip_put_header(struct stack *s, uint8_t *p, uint8_t proto, uint32_t dst,
		   size_t payload_len);
int ip_resolve(struct stack *s, uint32_t dst, uint8_t mac[MAC_LEN]);

/* icmp.c */
void icmp_input(struct stack *s, const uint8_t *src_mac, uint32_t src, const uint8_t *msg,
		size_t len);

/* udp.c */
void udp_input(struct stack *s, const uint8_t *src_mac, uint32_t src, uint32_t dst,
	       const uint8_t *seg, size_t len);

#endif /* LIBOS_NET_STACK_INT_H */
