/* cgroup/sock_ops: two moments the other programs cannot see.
 * TCP_CONNECT (source port now chosen): a connection connect4 captured is recorded by its app
 * side (netns, ip, port) so the ztunnel's getsockopt(SO_ORIGINAL_DST) can find it.
 * TCP_LISTEN: the ztunnel's 15006/15008 listeners of an enrolled pod go into nm_listeners for
 * sk_lookup. */
#include <uapi/linux/bpf.h>
#include "lib/helpers.h"

int nm_sockops(struct bpf_sock_ops *skops)
{
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
	return 1;
}
