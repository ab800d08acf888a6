/*
 * icmp.c: ICMP, which here means answering echo requests (ping) sent to our own address.
 *
 * Every other ICMP type is dropped: the stack has no routes to update and no sockets to
 * report errors to. It must not answer anything ip.c accepted as a broadcast, nor a request
 * from a group or all-zero source MAC, and it must not send ICMP errors about other packets.
 */
#include "stack_int.h"

enum {
	ICMP_ECHO_REPLY = 0,
	ICMP_ECHO_REQUEST = 8,
};

/* The reply is the request with its type changed: same id, sequence and payload. */
static void icmp_echo_reply(struct stack *s, const uint8_t *dst_mac, uint32_t dst,
			    const uint8_t *msg, size_t len)
{
	uint8_t *ip = s->tx_buf + ETH_HDR_LEN;
	uint8_t *icmp = ip + IPV4_HDR_LEN;

	/* ip.c passes at most a frame's worth less a header; keep the copy safe regardless. */
	if (len > ETH_MAX_FRAME - ETH_HDR_LEN - IPV4_HDR_LEN) {
		s->c.drop_oversize++;
		return;
	}
	eth_put_header(s->tx_buf, dst_mac, s->mac, ETYPE_IPV4);
	ip_put_header(s, ip, IPV4_PROTO_ICMP, dst, len);
	memcpy(icmp, msg, len);
	icmp[0] = ICMP_ECHO_REPLY;
	icmp[1] = 0;
	put_be16(icmp + 2, 0);
	put_be16(icmp + 2, csum_finish(csum_add(0, icmp, len)));

	if (eth_tx(s, ETH_HDR_LEN + IPV4_HDR_LEN + len) == 0)
		s->c.icmp_echo++;
}

void icmp_input(struct stack *s, const uint8_t *src_mac, uint32_t src, const uint8_t *msg,
		size_t len)
{
	if (len < ICMP_HDR_LEN) {
		s->c.drop_short++;
		return;
	}
	if (msg[0] != ICMP_ECHO_REQUEST || msg[1] != 0) {
		s->c.drop_proto++;
		return;
	}
	/* A corrupted request must not be echoed: the sender would take it for a good reply. */
	if (csum_finish(csum_add(0, msg, len)) != 0) {
		s->c.drop_icmp_bad++;
		return;
	}
	/*
	 * The reply goes to the request's source MAC. A group address there would make every
	 * host of the group receive it (an amplifier, as for broadcast pings), and an all-zero
	 * one reaches nobody; stack_udp_reply refuses both the same way.
	 */
	if (mac_is_multicast(src_mac) || mac_is_zero(src_mac)) {
		s->c.drop_src_mac++;
		return;
	}
	icmp_echo_reply(s, src_mac, src, msg, len);
}
