/*
 * arp.c: ARP for Ethernet/IPv4: answering requests for our address, the neighbour cache,
 * and sending requests when a destination is unknown.
 *
 * The cache is a fixed array replaced oldest-first, so a storm of ARP traffic can churn it
 * but never grow it. It must not decide which destinations are worth resolving (ip.c does)
 * and must not hold entries for addresses that are not unicast neighbours on our subnet.
 */
#include <errno.h>

#include "stack_int.h"

enum {
	ARP_HTYPE_ETHER = 1,
	ARP_OP_REQUEST = 1,
	ARP_OP_REPLY = 2,

	/* Offsets inside the 28-byte Ethernet/IPv4 ARP packet. */
	ARP_OFF_HTYPE = 0,
	ARP_OFF_PTYPE = 2,
	ARP_OFF_HLEN = 4,
	ARP_OFF_PLEN = 5,
	ARP_OFF_OP = 6,
	ARP_OFF_SHA = 8,
	ARP_OFF_SPA = 14,
	ARP_OFF_THA = 18,
	ARP_OFF_TPA = 24,
};

static const uint8_t mac_zero[MAC_LEN];

static bool arp_format_ok(const uint8_t *pkt)
{
	return get_be16(pkt + ARP_OFF_HTYPE) == ARP_HTYPE_ETHER &&
	       get_be16(pkt + ARP_OFF_PTYPE) == ETYPE_IPV4 && pkt[ARP_OFF_HLEN] == MAC_LEN &&
	       pkt[ARP_OFF_PLEN] == sizeof(uint32_t);
}

/*
 * Slot of ip, or ARP_CACHE_SIZE when absent. Free slots hold 0, so 0 must never be found
 * or a lookup of it would return a free slot's zero MAC.
 */
static size_t arp_index(const struct stack *s, uint32_t ip)
{
	size_t i;

	if (ip == 0)
		return ARP_CACHE_SIZE;
	for (i = 0; i < ARP_CACHE_SIZE; i++)
		if (s->arp[i].ip == ip)
			break;
	return i;
}

/* A free slot if there is one, else the entry written longest ago. */
static struct arp_entry *arp_victim(struct stack *s)
{
	struct arp_entry *oldest = &s->arp[0];

	for (size_t i = 0; i < ARP_CACHE_SIZE; i++) {
		if (s->arp[i].ip == 0)
			return &s->arp[i];
		if (s->arp[i].stamp < oldest->stamp)
			oldest = &s->arp[i];
	}
	return oldest;
}

/*
 * Known senders are refreshed from any ARP packet, so a neighbour that changes its MAC is
 * followed; new ones are only added when they talk to us, so that ARP chatter between other
 * hosts cannot push out the neighbours we actually use.
 */
static void arp_learn(struct stack *s, const uint8_t *sha, uint32_t spa, bool may_add)
{
	struct arp_entry *e;
	size_t i;

	if (!ip_is_neighbour(s, spa))
		return;
	i = arp_index(s, spa);
	if (i < ARP_CACHE_SIZE) {
		e = &s->arp[i];
	} else {
		if (!may_add)
			return;
		e = arp_victim(s);
		e->ip = spa;
	}
	memcpy(e->mac, sha, MAC_LEN);
	e->stamp = ++s->arp_clock;
}

static int arp_send(struct stack *s, uint16_t op, const uint8_t *eth_dst, const uint8_t *tha,
		    uint32_t tpa)
{
	uint8_t *p = s->tx_buf + ETH_HDR_LEN;
	int rc;

	eth_put_header(s->tx_buf, eth_dst, s->mac, ETYPE_ARP);
	put_be16(p + ARP_OFF_HTYPE, ARP_HTYPE_ETHER);
	put_be16(p + ARP_OFF_PTYPE, ETYPE_IPV4);
	p[ARP_OFF_HLEN] = MAC_LEN;
	p[ARP_OFF_PLEN] = sizeof(uint32_t);
	put_be16(p + ARP_OFF_OP, op);
	memcpy(p + ARP_OFF_SHA, s->mac, MAC_LEN);
	put_ip(p + ARP_OFF_SPA, s->ip);
	memcpy(p + ARP_OFF_THA, tha, MAC_LEN);
	put_ip(p + ARP_OFF_TPA, tpa);

	rc = eth_tx(s, ETH_HDR_LEN + ARP_PKT_LEN);
	if (rc == 0)
		s->c.arp_tx++;
	return rc;
}

void arp_input(struct stack *s, const uint8_t *pkt, size_t len)
{
	const uint8_t *sha;
	uint32_t spa, tpa;
	uint16_t op;

	if (len < ARP_PKT_LEN) {
		s->c.drop_short++;
		return;
	}
	op = get_be16(pkt + ARP_OFF_OP);
	sha = pkt + ARP_OFF_SHA;
	if (!arp_format_ok(pkt) || (op != ARP_OP_REQUEST && op != ARP_OP_REPLY) ||
	    mac_is_multicast(sha) || mac_is_zero(sha)) {
		s->c.drop_proto++;
		return;
	}
	s->c.arp_rx++;

	spa = get_ip(pkt + ARP_OFF_SPA);
	tpa = get_ip(pkt + ARP_OFF_TPA);
	arp_learn(s, sha, spa, tpa == s->ip);
	/* Probes (sender 0.0.0.0) are answered too: that is how a duplicate address is noticed. */
	if (op == ARP_OP_REQUEST && tpa == s->ip)
		arp_send(s, ARP_OP_REPLY, sha, sha, spa);
}

bool arp_lookup(const struct stack *s, uint32_t ip, uint8_t mac[MAC_LEN])
{
	size_t i = arp_index(s, ip);

	if (i == ARP_CACHE_SIZE)
		return false;
	memcpy(mac, s->arp[i].mac, MAC_LEN);
	return true;
}

int arp_request(struct stack *s, uint32_t ip)
{
	return arp_send(s, ARP_OP_REQUEST, mac_broadcast, mac_zero, ip);
}
