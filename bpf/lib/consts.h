/* Constants shared with Python: mirrored in node_agent/redirect/ebpf/consts.py and checked by
 * tests/unit/node_agent/test_ebpf_consts.py. Change both sides together. */
#ifndef NODEMESH_CONSTS_H
#define NODEMESH_CONSTS_H

#define NM_OUTBOUND_PORT 15001
#define NM_INBOUND_PORT 15006
#define NM_HBONE_PORT 15008
#define NM_ZTUNNEL_MARK 0x539
#define NM_SO_ORIGINAL_DST 80
#define NM_SOL_IP 0
#define NM_LOOPBACK_IFINDEX 1

#define NM_MAX_PODS 4096
#define NM_MAX_LISTENERS 8192
#define NM_MAX_FLOWS 65536

/* pod_info.flags */
#define NM_POD_HOST_PROBE 0x1 /* host_probe_ip is set: let its connections reach the app */

#endif
