/* Helpers shared by the nodemesh programs. */
#ifndef NODEMESH_HELPERS_H
#define NODEMESH_HELPERS_H

#include "maps.h"

/* 127.0.0.0/8, in network byte order: in-pod loopback is never captured (as iptables' -o lo). */
static __always_inline int nm_is_loopback(__u32 ip_be)
{
	return (bpf_ntohl(ip_be) >> 24) == 127;
}

/* Map methods (nm_pods.lookup, ...) are only rewritten by BCC in the program's own file, so the
 * helpers here never touch a map: they take and return plain values. */

/* The listener a new inbound connection to ``port`` belongs to: HBONE keeps 15008, any other
 * port goes to the plaintext capture on 15006. */
static __always_inline __u32 nm_inbound_listener(__u32 port)
{
	return port == NM_HBONE_PORT ? NM_HBONE_PORT : NM_INBOUND_PORT;
}

/* The key of the other end of a hop: the same connection seen from the peer socket. */
static __always_inline struct hop_key nm_hop_peer(const struct hop_key *self)
{
	struct hop_key peer = {.netns = self->netns,
			       .local_ip = self->remote_ip, .remote_ip = self->local_ip,
			       .local_port = self->remote_port, .remote_port = self->local_port};
	return peer;
}

#endif
