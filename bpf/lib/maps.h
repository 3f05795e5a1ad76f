/* Every map of the nodemesh programs, with the key and value layouts. Mirrored (layouts and
 * names) in node_agent/redirect/ebpf/consts.py. Maps are pinned by the loader under
 * /sys/fs/bpf/nodemesh/<node>/maps/<name>, so a node agent restart keeps them. */
#ifndef NODEMESH_MAPS_H
#define NODEMESH_MAPS_H

#include "consts.h"

/* An enrolled pod, keyed by the cookie of its network namespace. */
struct pod_info {
	__u32 ip;          /* the pod's IPv4 address, network byte order */
	__u32 host_probe;  /* the node's probe source, network byte order (if NM_POD_HOST_PROBE) */
	__u32 flags;
	__u32 pad;
};

/* Where an app's connection was going before connect4 sent it to 15001. */
struct orig_dst {
	__u32 ip;    /* network byte order */
	__u32 port;  /* host byte order */
};

/* The app side of a captured connection as the ztunnel's accepted socket sees its peer. */
struct flow_key {
	__u64 netns;
	__u32 ip;    /* network byte order */
	__u32 port;  /* host byte order */
};

/* One end of an app <-> ztunnel hop inside a pod (the app's captured connection to its own
 * 15001), as that end's socket sees it; the peer's key has local and remote swapped. */
struct hop_key {
	__u64 netns;
	__u32 local_ip;     /* network byte order */
	__u32 remote_ip;    /* network byte order */
	__u32 local_port;   /* host byte order */
	__u32 remote_port;  /* host byte order */
};

/* A ztunnel listener (15006, 15008) of an enrolled pod. */
struct listener_key {
	__u64 netns;
	__u32 port;  /* host byte order */
	__u32 pad;
};

/* enrolled pods: netns cookie -> pod_info (written by the agent) */
BPF_TABLE_PINNED("hash", __u64, struct pod_info, nm_pods, NM_MAX_PODS, NM_PIN_DIR "/nm_pods");
/* enrolled pods by address, for sk_lookup: pod IP (network order) -> netns cookie (agent) */
BPF_TABLE_PINNED("hash", __u32, __u64, nm_pod_ips, NM_MAX_PODS, NM_PIN_DIR "/nm_pod_ips");
/* connect4 -> sock_ops: app socket cookie -> original destination, until the SYN leaves */
BPF_TABLE_PINNED("lru_hash", __u64, struct orig_dst, nm_pending, NM_MAX_FLOWS, NM_PIN_DIR "/nm_pending");
/* sock_ops -> getsockopt: the app side of a captured connection -> original destination */
BPF_TABLE_PINNED("lru_hash", struct flow_key, struct orig_dst, nm_flows, NM_MAX_FLOWS, NM_PIN_DIR "/nm_flows");
/* BCC's BPF_SOCKHASH cannot be pinned and its table has no lookup (which sk_lookup needs):
 * the same declaration with both, in the form BCC's frontend rewrites. */
#define NM_SOCKHASH_PINNED(_name, _key_type, _max_entries, _pinned) \
struct _name##_table_t { \
	_key_type key; \
	__u64 leaf; \
	struct bpf_sock *(*lookup)(_key_type *); \
	int (*delete)(_key_type *); \
	int (*sock_hash_update)(void *, void *, __u64); \
	int (*msg_redirect_hash)(void *, void *, __u64); \
	__u32 max_entries; \
}; \
__attribute__((section("maps/sockhash:" _pinned))) \
struct _name##_table_t _name = {.max_entries = (_max_entries)}; \
BPF_ANNOTATE_KV_PAIR(_name, _key_type, __u64)

/* sock_ops -> sk_lookup: the ztunnel's listening sockets of enrolled pods */
NM_SOCKHASH_PINNED(nm_listeners, struct listener_key, NM_MAX_LISTENERS, NM_PIN_DIR "/nm_listeners");
/* sock_ops -> sk_msg (only with NM_SOCKMAP): both ends of every app <-> ztunnel hop */
NM_SOCKHASH_PINNED(nm_hops, struct hop_key, NM_MAX_FLOWS, NM_PIN_DIR "/nm_hops");
/* sk_msg: a hop end that once sent through TCP keeps doing so (redirecting later bytes could
 * overtake the earlier ones still queued at the peer): hop_key -> 1 */
BPF_TABLE_PINNED("lru_hash", struct hop_key, __u8, nm_hop_tcp, NM_MAX_FLOWS, NM_PIN_DIR "/nm_hop_tcp");

#endif
