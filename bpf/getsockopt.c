/* cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) in enrolled pods as conntrack
 * does in iptables mode, so the ztunnel reads it the same way in both modes: on a socket accepted
 * on 15001, the destination connect4 rewrote; on one sk_lookup steered (its local address was
 * never rewritten), its own local address. Any other call keeps the kernel's answer. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include "lib/helpers.h"

int nm_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != NM_SOL_IP || ctx->optname != NM_SO_ORIGINAL_DST)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->family != 2 /* AF_INET */)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!nm_pods.lookup(&netns))
		return 1;
	struct flow_key key = {.netns = netns, .ip = sk->dst_ip4, .port = bpf_ntohs(sk->dst_port)};
	struct orig_dst local = {.ip = sk->src_ip4, .port = sk->src_port};
	struct orig_dst *orig = nm_flows.lookup(&key);
	if (!orig) {
		if (local.port == NM_OUTBOUND_PORT)
			return 1; /* captured before our time (or the entry aged out): no answer */
		orig = &local;
	}
	struct sockaddr_in *sin = ctx->optval;
	if ((void *)(sin + 1) > ctx->optval_end)
		return 1;
	sin->sin_family = 2;
	sin->sin_port = bpf_htons((__u16)orig->port);
	sin->sin_addr.s_addr = orig->ip;
	/* two 4-byte stores: the verifier refuses the 8-byte store clang would merge them into */
	*(volatile __s32 *)&ctx->optlen = sizeof(*sin);
	*(volatile __s32 *)&ctx->retval = 0;
	return 1;
}
