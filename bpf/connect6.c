/* cgroup/connect6: the IPv6 side of connect4, for an enrolled pod's TCP sockets of family
 * AF_INET6. The mesh carries IPv4 (pods are redirected by their IPv4 address):
 * - to an IPv4-mapped address (::ffff:a.b.c.d, what a dual-stack socket uses for an IPv4
 *   destination, Java's default): captured exactly as connect4 captures a.b.c.d, to the pod's
 *   own 15001 (::ffff:<pod ip>), the original destination remembered for sock_ops;
 * - to ::1 and to mapped loopback or the pod's own address: let through, as connect4 does;
 * - to any other IPv6 address: refused (the connect fails with EPERM), so that no connection
 *   leaves an enrolled pod around the mesh in plaintext on a dual-stack network.
 * Sockets of other netns, the ztunnel's own (SO_MARK 0x539) and non-TCP sockets are left alone. */
#include <uapi/linux/bpf.h>
#include <linux/net.h>
#include "lib/helpers.h"

int nm_connect6(struct bpf_sock_addr *ctx)
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
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1))
		return 1; /* ::1 */
	if (w0 != 0 || w1 != 0 || w2 != bpf_htonl(0xffff))
		return 0; /* IPv6 proper: refused */
	if (nm_is_loopback(w3) || w3 == pod->ip)
		return 1;
	struct orig_dst orig = {.ip = w3, .port = bpf_ntohs((__u16)ctx->user_port)};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	nm_pending.update(&cookie, &orig);
	ctx->user_ip6[3] = pod->ip;
	ctx->user_port = bpf_htons(NM_OUTBOUND_PORT);
	return 1;
}
