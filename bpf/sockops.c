/* cgroup/sock_ops: two moments the other programs cannot see.
 * TCP_CONNECT (source port now chosen): a connection connect4 (or connect6, for an IPv4-mapped
 * destination) captured is recorded by its app side (netns, ip, port) so the ztunnel's
 * getsockopt(SO_ORIGINAL_DST) can find it.
 * TCP_LISTEN: the ztunnel's 15006/15008 listeners of an enrolled pod go into nm_listeners for
 * sk_lookup.
 * ACTIVE/PASSIVE_ESTABLISHED (only with NM_SOCKMAP): both ends of a captured app -> 15001 hop
 * (the app's socket, whose flow TCP_CONNECT recorded, and the ztunnel's socket accepted on 15001
 * from it) go into nm_hops for sk_msg. Nothing else does: not the ztunnel's marked sockets to
 * other pods, not unenrolled pods or the node (no nm_pods entry), not the inbound listeners. */
#include <uapi/linux/bpf.h>
#include "lib/helpers.h"

int nm_sockops(struct bpf_sock_ops *skops)
{
	/* an AF_INET6 socket connect6 captured talks IPv4 (to ::ffff:<pod ip>:15001): its
	 * source is the IPv4-mapped ::ffff:a.b.c.d, and the ztunnel's accepted (IPv4) socket sees
	 * a.b.c.d as its peer */
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB && skops->family == 10 /* AF_INET6 */) {
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct orig_dst *orig = nm_pending.lookup(&cookie);
		if (!orig)
			return 1;
		if (skops->local_ip6[0] != 0 || skops->local_ip6[1] != 0 ||
		    skops->local_ip6[2] != bpf_htonl(0xffff))
			return 1;
		struct flow_key key = {.netns = bpf_get_netns_cookie(skops),
				       .ip = skops->local_ip6[3], .port = skops->local_port};
		struct orig_dst value = *orig;
		nm_flows.update(&key, &value);
		nm_pending.delete(&cookie);
		return 1;
	}
	if (skops->family != 2 /* AF_INET */)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct orig_dst *orig = nm_pending.lookup(&cookie);
		if (!orig)
			return 1;
		struct flow_key key = {.netns = netns, .ip = skops->local_ip4,
				       .port = skops->local_port};
		struct orig_dst value = *orig;
		nm_flows.update(&key, &value);
		nm_pending.delete(&cookie);
	} else if (skops->op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
		__u32 port = skops->local_port;
		if (port != NM_INBOUND_PORT && port != NM_HBONE_PORT)
			return 1;
		if (!nm_pods.lookup(&netns))
			return 1;
		struct listener_key key = {.netns = netns, .port = port};
		nm_listeners.sock_hash_update(skops, &key, BPF_ANY);
	}
#ifdef NM_SOCKMAP
	else if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
		 skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		struct hop_key hop = {.netns = netns,
				      .local_ip = skops->local_ip4, .remote_ip = skops->remote_ip4,
				      .local_port = skops->local_port,
				      .remote_port = bpf_ntohl(skops->remote_port)};
		if (hop.local_ip != hop.remote_ip || !nm_pods.lookup(&netns))
			return 1;
		/* the app's end connects to 15001, the ztunnel's end accepted on it */
		struct flow_key app = {.netns = netns, .ip = hop.local_ip, .port = hop.local_port};
		if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
			if (hop.remote_port != NM_OUTBOUND_PORT)
				return 1;
		} else {
			if (hop.local_port != NM_OUTBOUND_PORT)
				return 1;
			app.port = hop.remote_port;
		}
		if (!nm_flows.lookup(&app))
			return 1;
		nm_hops.sock_hash_update(skops, &hop, BPF_ANY);
	}
#endif
	return 1;
}
