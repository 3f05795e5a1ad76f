/* sk_msg on nm_hops (attached only with NM_SOCKMAP): a message sent on one end of an app <->
 * ztunnel hop is put straight into the peer socket's receive queue, skipping TCP/IP for that
 * in-pod hop. Only sockets sock_ops put into nm_hops reach this program. When the peer is not in
 * the map yet (it is added when the server side's handshake completes), the message goes through
 * TCP, and so does every later message of that end, so bytes are never reordered. Always passes. */
#include <uapi/linux/bpf.h>
#include "lib/helpers.h"

int nm_sk_msg(struct sk_msg_md *msg)
{
	if (msg->family != 2 /* AF_INET */)
		return SK_PASS;
	struct hop_key self = {.netns = bpf_get_netns_cookie(msg),
			       .local_ip = msg->local_ip4, .remote_ip = msg->remote_ip4,
			       .local_port = msg->local_port,
			       .remote_port = bpf_ntohl(msg->remote_port)};
	if (nm_hop_tcp.lookup(&self))
		return SK_PASS;
	struct hop_key peer = nm_hop_peer(&self);
	if (nm_hops.msg_redirect_hash(msg, &peer, BPF_F_INGRESS) == SK_PASS)
		return SK_PASS;
	__u8 one = 1;
	nm_hop_tcp.update(&self, &one);
	return SK_PASS;
}
