/* cgroup/connect4: an enrolled pod's outgoing TCP connection goes to its own 15001 listener, and
 * the original destination is remembered (by socket cookie) for sock_ops.
 * Never captured: sockets of other netns (the node, unenrolled pods), the ztunnel's own sockets
 * (SO_MARK 0x539), non-TCP sockets, loopback and the pod's own address. Always allows. */
#include <uapi/linux/bpf.h>
#include <linux/net.h>
#include "lib/helpers.h"

int nm_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct pod_info *pod = nm_pods.lookup(&netns);
	if (!pod)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->mark == NM_ZTUNNEL_MARK)
		return 1;
	__u32 dst = ctx->user_ip4;
	if (nm_is_loopback(dst) || dst == pod->ip)
		return 1;
	struct orig_dst orig = {.ip = dst, .port = bpf_ntohs((__u16)ctx->user_port)};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	nm_pending.update(&cookie, &orig);
	ctx->user_ip4 = pod->ip;
	ctx->user_port = bpf_htons(NM_OUTBOUND_PORT);
	return 1;
}
