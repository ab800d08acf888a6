/*
 * udp.c: UDP: the bound-port table, delivering received datagrams to ops->udp_rx, and
 * building and sending datagrams.
 *
 * The port table is fixed-size and there is no per-port state beyond the number, so the
 * application sees every datagram through one callback and tells ports apart itself. It must
 * not queue or copy received data (d->data points into the caller's frame) and must not
 * choose a destination MAC itself: that is ip_resolve's job, or the caller's for a reply.
 */
#include <errno.h>

#include "stack_int.h"

/* The checksum covers a pseudo-header so a datagram delivered to the wrong host fails it. */
static uint16_t udp_csum(uint32_t src, uint32_t dst, const uint8_t *seg, size_t len)
{
	uint8_t pseudo[12];

	put_ip(pseudo, src);
	put_ip(pseudo + 4, dst);
	pseudo[8] = 0;
	pseudo[9] = IPV4_PROTO_UDP;
	put_be16(pseudo + 10, (uint16_t)len);
	return csum_finish(csum_add(csum_add(0, pseudo, sizeof(pseudo)), seg, len));
}

static bool udp_port_bound(const struct stack *s, uint16_t port)
{
	for (unsigned int i = 0; i < s->nports; i++)
		if (s->ports[i] == port)
			return true;
	return false;
}

/*
 * A UDP length shorter than the IP payload is accepted and the rest ignored, as other stacks
 * do; a longer one would make us read data that is not part of the datagram.
 */
void udp_input(struct stack *s, const uint8_t *src_mac, uint32_t src, uint32_t dst,
	       const uint8_t *seg, size_t len)
{
	struct udp_dgram d;
	size_t ulen;

	if (len < UDP_HDR_LEN) {
		s->c.drop_short++;
		return;
	}
	ulen = get_be16(seg + 4);
	if (ulen < UDP_HDR_LEN || ulen > len ||
	    (get_be16(seg + 6) != 0 && udp_csum(src, dst, seg, ulen) != 0)) {
		s->c.drop_udp_bad++;
		return;
	}
	d.dst_port = get_be16(seg + 2);
	if (!s->ops.udp_rx || !udp_port_bound(s, d.dst_port)) {
		s->c.drop_udp_noport++;
		return;
	}

	d.src_ip = src;
	d.dst_ip = dst;
	d.src_port = get_be16(seg);
	memcpy(d.src_mac, src_mac, MAC_LEN);
	d.data = seg + UDP_HDR_LEN;
	d.len = ulen - UDP_HDR_LEN;
	s->c.udp_rx++;
	s->ops.udp_rx(s->ops.app, &d);
}

int stack_udp_bind(struct stack *s, uint16_t port)
{
	if (!s || port == 0 || !s->ops.udp_rx)
		return -EINVAL;
	if (udp_port_bound(s, port))
		return -EADDRINUSE;
	if (s->nports == UDP_MAX_PORTS)
		return -ENOSPC;
	s->ports[s->nports++] = port;
	return 0;
}

static int udp_check_args(const struct stack *s, uint16_t dst_port, const void *data,
			  size_t len)
{
	if (!s || dst_port == 0 || (!data && len))
		return -EINVAL;
	if (len > UDP_MAX_PAYLOAD)
		return -EMSGSIZE;
	return 0;
}

static int udp_emit(struct stack *s, const uint8_t *dst_mac, uint32_t dst, uint16_t src_port,
		    uint16_t dst_port, const void *data, size_t len)
{
	uint8_t *ip = s->tx_buf + ETH_HDR_LEN;
	uint8_t *udp = ip + IPV4_HDR_LEN;
	uint16_t ulen = (uint16_t)(UDP_HDR_LEN + len);
	uint16_t csum;
	int rc;

	eth_put_header(s->tx_buf, dst_mac, s->mac, ETYPE_IPV4);
	ip_put_header(s, ip, IPV4_PROTO_UDP, dst, ulen);
	put_be16(udp, src_port);
	put_be16(udp + 2, dst_port);
	put_be16(udp + 4, ulen);
	put_be16(udp + 6, 0);
	if (len)
		memcpy(udp + UDP_HDR_LEN, data, len);
	csum = udp_csum(s->ip, dst, udp, ulen);
	/* 0 on the wire means "no checksum", so a sum that comes out 0 is sent as its other form. */
	put_be16(udp + 6, csum ? csum : 0xffff);

	rc = eth_tx(s, ETH_HDR_LEN + IPV4_HDR_LEN + ulen);
	if (rc == 0)
		s->c.udp_tx++;
	return rc;
}

int stack_udp_send(struct stack *s, uint32_t dst_ip, uint16_t src_port, uint16_t dst_port,
		   const void *data, size_t len)
{
	uint8_t mac[MAC_LEN];
	int rc;

	rc = udp_check_args(s, dst_port, data, len);
	if (rc)
		return rc;
	rc = ip_resolve(s, dst_ip, mac);
	if (rc)
		return rc;
	return udp_emit(s, mac, dst_ip, src_port, dst_port, data, len);
}

/*
 * The reply leaves from our own address even when the datagram came to a broadcast one, so
 * the peer can tell which host answered.
 */
int stack_udp_reply(struct stack *s, const struct udp_dgram *d, const void *data, size_t len)
{
	int rc;

	if (!d)
		return -EINVAL;
	rc = udp_check_args(s, d->src_port, data, len);
	if (rc)
		return rc;
	if (mac_is_multicast(d->src_mac) || mac_is_zero(d->src_mac))
		return -EINVAL;
	return udp_emit(s, d->src_mac, d->src_ip, d->dst_port, d->src_port, data, len);
}
