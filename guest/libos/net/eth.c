/*
 * eth.c: the Ethernet layer: the entry point for received frames and the single exit for
 * transmitted ones.
 *
 * It decides whether a frame is ours at all and which layer gets its payload; everything it
 * hands on has been checked to lie inside the frame. It must not look past the Ethernet
 * header: protocol checks belong to the layer that owns the protocol. Every frame the stack
 * sends leaves through eth_tx, so that padding and the tx counters are kept in one place.
 */
#include <errno.h>

#include "stack_int.h"

const uint8_t mac_broadcast[MAC_LEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* Multicast other than broadcast is not joined, so it counts as foreign like any other MAC. */
static bool eth_is_for_us(const struct stack *s, const uint8_t *dst)
{
	return memcmp(dst, s->mac, MAC_LEN) == 0 || memcmp(dst, mac_broadcast, MAC_LEN) == 0;
}

void stack_input(struct stack *s, const uint8_t *frame, size_t len)
{
	const uint8_t *payload;
	size_t plen;

	if (!s)
		return;
	if (!frame)
		len = 0;
	s->c.rx_frames++;
	s->c.rx_bytes += len;

	if (len < ETH_HDR_LEN) {
		s->c.drop_short++;
		return;
	}
	if (len > ETH_MAX_FRAME) {
		s->c.drop_oversize++;
		return;
	}
	if (!eth_is_for_us(s, frame)) {
		s->c.drop_foreign_mac++;
		return;
	}

	payload = frame + ETH_HDR_LEN;
	plen = len - ETH_HDR_LEN;
	switch (get_be16(frame + 12)) {
	case ETYPE_IPV4:
		ip_input(s, frame + MAC_LEN, payload, plen);
		break;
	case ETYPE_ARP:
		arp_input(s, payload, plen);
		break;
	default:
		/* Includes 802.1Q: a tagged frame would need a VLAN the stack does not have. */
		s->c.drop_ethertype++;
		break;
	}
}

void eth_put_header(uint8_t *frame, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
	memcpy(frame, dst, MAC_LEN);
	memcpy(frame + MAC_LEN, src, MAC_LEN);
	put_be16(frame + 2 * MAC_LEN, type);
}

/*
 * Sends the first len bytes of s->tx_buf. Short frames are padded here rather than left to
 * the device, so the bytes on the wire never depend on what an earlier frame left behind.
 */
int eth_tx(struct stack *s, size_t len)
{
	int rc;

	if (len < ETH_MIN_FRAME) {
		memset(s->tx_buf + len, 0, ETH_MIN_FRAME - len);
		len = ETH_MIN_FRAME;
	}
	rc = s->ops.tx(s->ops.tx_ctx, s->tx_buf, len);
	if (rc != 0) {
		s->c.drop_tx++;
		/* Keep the "0 or -errno" contract even if a callback returns something else. */
		return rc < 0 ? rc : -EIO;
	}
	s->c.tx_frames++;
	s->c.tx_bytes += len;
	return 0;
}
