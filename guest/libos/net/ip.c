/*
 * ip.c: IPv4: validating received headers, handing payloads to ICMP and UDP, writing the
 * header of every packet we send, choosing the Ethernet destination of a send, and the
 * Internet checksum they all share.
 *
 * It passes up exactly [header end, total length): Ethernet padding and anything past the
 * total length never reach the upper layers. It must not reassemble fragments, act on
 * options or forward anything; such packets are dropped or their options skipped.
 */
#include <errno.h>

#include "stack_int.h"

enum {
	IP_FLAG_MF = 0x2000,
	IP_FLAG_DF = 0x4000,
	IP_FRAG_OFFSET = 0x1fff,
};

uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += get_be16(p + i);
	if (i < len)
		sum += (uint64_t)p[i] << 8;
	return sum;
}

uint16_t csum_finish(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint8_t ip_first_octet(uint32_t ip)
{
	return ((const uint8_t *)&ip)[0];
}

/* Not "this network", loopback, multicast, reserved or the limited broadcast. */
static bool ip_is_unicast(uint32_t ip)
{
	uint8_t first = ip_first_octet(ip);

	return first != 0 && first != 127 && first < 224;
}

static bool ip_on_subnet(const struct stack *s, uint32_t ip)
{
	return ((ip ^ s->ip) & s->netmask) == 0;
}

bool ip_is_broadcast(const struct stack *s, uint32_t ip)
{
	return ip == IPV4_BROADCAST || ip == s->bcast;
}

/* An address ARP may resolve: a unicast host on our subnet other than ourselves. */
bool ip_is_neighbour(const struct stack *s, uint32_t ip)
{
	if (!ip_is_unicast(ip) || ip == s->ip || ip_is_broadcast(s, ip) || !ip_on_subnet(s, ip))
		return false;
	/* Where the subnet has a network address (prefixes up to /30), nobody owns it. */
	return s->bcast == IPV4_BROADCAST || (ip & ~s->netmask) != 0;
}

/*
 * Sources nobody can legitimately send from; answering them would reflect traffic to a
 * group or to ourselves. 0.0.0.0 stays allowed: hosts without an address yet use it.
 */
static bool ip_src_is_martian(const struct stack *s, uint32_t src)
{
	return (src != 0 && !ip_is_unicast(src)) || src == s->ip || ip_is_broadcast(s, src);
}

/*
 * Checks the header of the packet at p (len bytes up to the end of the frame). Returns the
 * counter the packet must be dropped under, or NULL with *hlen and *tlen set.
 */
static uint64_t *ip_check_header(struct stack *s, const uint8_t *p, size_t len, size_t *hlen,
				 size_t *tlen)
{
	if (len < IPV4_HDR_LEN)
		return &s->c.drop_short;
	if ((p[0] >> 4) != 4 || (p[0] & 0xf) < 5)
		return &s->c.drop_ip_bad;
	*hlen = (size_t)(p[0] & 0xf) * 4;
	if (*hlen > len)
		return &s->c.drop_short;
	if (csum_finish(csum_add(0, p, *hlen)) != 0)
		return &s->c.drop_ip_csum;
	*tlen = get_be16(p + 2);
	if (*tlen < *hlen)
		return &s->c.drop_ip_bad;
	if (*tlen > len)
		return &s->c.drop_short;
	if (p[8] == 0)
		return &s->c.drop_ip_bad;
	if (get_be16(p + 6) & (IP_FLAG_MF | IP_FRAG_OFFSET))
		return &s->c.drop_ip_frag;
	return NULL;
}

/* Broadcasts are accepted for UDP only: echoing a broadcast ping is an amplifier. */
static uint64_t *ip_check_addresses(struct stack *s, uint32_t src, uint32_t dst, uint8_t proto)
{
	if (ip_src_is_martian(s, src))
		return &s->c.drop_ip_bad;
	if (dst == s->ip)
		return NULL;
	if (ip_is_broadcast(s, dst) && proto == IPV4_PROTO_UDP)
		return NULL;
	return &s->c.drop_ip_foreign;
}

void ip_input(struct stack *s, const uint8_t *src_mac, const uint8_t *pkt, size_t len)
{
	size_t hlen = 0, tlen = 0;
	uint32_t src, dst;
	uint64_t *drop;
	uint8_t proto;

	drop = ip_check_header(s, pkt, len, &hlen, &tlen);
	if (!drop) {
		src = get_ip(pkt + 12);
		dst = get_ip(pkt + 16);
		proto = pkt[9];
		drop = ip_check_addresses(s, src, dst, proto);
	}
	if (drop) {
		(*drop)++;
		return;
	}

	switch (proto) {
	case IPV4_PROTO_ICMP:
		icmp_input(s, src_mac, src, pkt + hlen, tlen - hlen);
		break;
	case IPV4_PROTO_UDP:
		udp_input(s, src_mac, src, dst, pkt + hlen, tlen - hlen);
		break;
	default:
		s->c.drop_proto++;
		break;
	}
}

/*
 * Writes a 20-byte header without options. DF is set because everything we send fits one
 * frame on our own subnet, and a router fragmenting it would hand the peer fragments that a
 * stack like this one drops.
 */
void ip_put_header(struct stack *s, uint8_t *p, uint8_t proto, uint32_t dst,
		   size_t payload_len)
{
	p[0] = 0x45;
	p[1] = 0;
	put_be16(p + 2, (uint16_t)(IPV4_HDR_LEN + payload_len));
	put_be16(p + 4, s->ip_id++);
	put_be16(p + 6, IP_FLAG_DF);
	p[8] = IPV4_DEFAULT_TTL;
	p[9] = proto;
	put_be16(p + 10, 0);
	put_ip(p + 12, s->ip);
	put_ip(p + 16, dst);
	put_be16(p + 10, csum_finish(csum_add(0, p, IPV4_HDR_LEN)));
}

/*
 * The Ethernet destination for dst. There is no gateway, so only our subnet is reachable;
 * a cache miss sends one ARP request per call and leaves the retrying to the caller.
 */
int ip_resolve(struct stack *s, uint32_t dst, uint8_t mac[MAC_LEN])
{
	if (ip_is_broadcast(s, dst)) {
		memcpy(mac, mac_broadcast, MAC_LEN);
		return 0;
	}
	if (!ip_is_unicast(dst) || dst == s->ip)
		return -EINVAL;
	if (!ip_on_subnet(s, dst))
		return -ENETUNREACH;
	if (!ip_is_neighbour(s, dst))
		return -EINVAL;
	if (arp_lookup(s, dst, mac))
		return 0;
	s->c.arp_unresolved++;
	arp_request(s, dst);
	return -EHOSTUNREACH;
}
