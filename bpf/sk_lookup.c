/* sk_lookup, attached to each enrolled pod's netns: a new inbound TCP connection to the pod is
 * handed to the ztunnel's 15008 (HBONE) or 15006 (everything else) listener of that pod.
 * Let through as is: loopback and the pod's own connections, the node's health-probe source and
 * pods not enrolled. Inbound IPv6 TCP (not over loopback) is dropped: the mesh is IPv4. While the ztunnel has no listener for an enrolled pod (before it acked the
 * pod, while it restarts) the connection is refused, as iptables' REDIRECT to a closed 15006
 * would: it never reaches the app around the mesh. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include "lib/helpers.h"

int nm_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP || ctx->ingress_ifindex == NM_LOOPBACK_IFINDEX)
		return SK_PASS;
	/* this program runs only in enrolled pods' netns: IPv6 from outside the pod cannot go
	 * through the (IPv4) mesh, and must not reach the app around it */
	if (ctx->family == 10 /* AF_INET6 */)
		return SK_DROP;
	if (ctx->family != 2 /* AF_INET */)
		return SK_PASS;
	__u32 ip = ctx->local_ip4;
	__u64 *netns = nm_pod_ips.lookup(&ip);
	if (!netns)
		return SK_PASS;
	__u64 cookie = *netns;
	struct pod_info *pod = nm_pods.lookup(&cookie);
	if (!pod)
		return SK_PASS;
	/* from the pod itself (to its own IP, over lo): in-pod traffic, as iptables' PREROUTING
	 * never sees it; ingress_ifindex alone does not tell, local routes report other devices */
	if (ctx->remote_ip4 == pod->ip || nm_is_loopback(ctx->remote_ip4))
		return SK_PASS;
	if ((pod->flags & NM_POD_HOST_PROBE) && ctx->remote_ip4 == pod->host_probe)
		return SK_PASS;
	struct listener_key key = {.netns = *netns,
				   .port = nm_inbound_listener(ctx->local_port)};
	struct bpf_sock *sk = nm_listeners.lookup(&key);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}
