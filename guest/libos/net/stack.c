/*
 * stack.c: the life cycle of a stack: checking its configuration, allocating it, freeing it,
 * and exposing its counters.
 *
 * This is the only place the stack allocates. It must not parse or send frames; that is the
 * job of the per-layer files.
 */
#include <errno.h>
#include <stdlib.h>

#include "stack_int.h"

static uint32_t be32_of(uint32_t net)
{
	const uint8_t *b = (const uint8_t *)&net;

	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* A mask with holes would make "on our subnet" ambiguous. */
static bool netmask_is_valid(uint32_t netmask)
{
	uint32_t host = ~be32_of(netmask);

	return (host & (host + 1)) == 0;
}

/*
 * Our own address must be one a neighbour could send to: not 0/8, loopback, multicast or
 * reserved, and (where the subnet has them) not the network or broadcast address.
 */
static bool host_ip_is_valid(uint32_t ip, uint32_t netmask)
{
	uint32_t h = be32_of(ip), host_mask = ~be32_of(netmask);
	uint8_t first = (uint8_t)(h >> 24);

	if (first == 0 || first == 127 || first >= 224)
		return false;
	if (host_mask <= 1)
		return true;
	return (h & host_mask) != 0 && (h & host_mask) != host_mask;
}

static uint32_t subnet_broadcast(uint32_t ip, uint32_t netmask)
{
	/* RFC 3021: a /31 has no broadcast address; a /32 has no neighbours at all. */
	if (be32_of(~netmask) <= 1)
		return IPV4_BROADCAST;
	return ip | ~netmask;
}

int stack_create(struct stack **out, const uint8_t mac[6], uint32_t ip, uint32_t netmask,
		 const struct stack_ops *ops)
{
	struct stack *s;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!mac || !ops || !ops->tx)
		return -EINVAL;
	if (mac_is_multicast(mac) || mac_is_zero(mac))
		return -EINVAL;
	if (!netmask_is_valid(netmask) || !host_ip_is_valid(ip, netmask))
		return -EINVAL;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	memcpy(s->mac, mac, MAC_LEN);
	s->ip = ip;
	s->netmask = netmask;
	s->bcast = subnet_broadcast(ip, netmask);
	s->ops = *ops;
	*out = s;
	return 0;
}

void stack_destroy(struct stack *s)
{
	free(s);
}

const struct stack_counters *stack_counters(const struct stack *s)
{
	return s ? &s->c : NULL;
}
