#!/usr/bin/env bash
# Every node: kernel settings for Kubernetes, containerd (Debian's), kubelet/kubeadm/kubectl from
# the Kubernetes package repository (pinned minor version), the running kernel's headers for BCC.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require KUBERNETES_MINOR NODE_IP

log "common setup on $(hostname) ($NODE_IP)"
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab

cat > /etc/modules-load.d/kubernetes.conf <<'CONF'
overlay
br_netfilter
CONF
modprobe overlay
modprobe br_netfilter
cat > /etc/sysctl.d/90-kubernetes.conf <<'CONF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
CONF
sysctl --quiet --system

apt-get update -qq
apt_install ca-certificates curl gpg apt-transport-https containerd iptables rsync python3

# containerd: the systemd cgroup driver, as kubelet uses (kubeadm's default)
mkdir -p /etc/containerd
containerd config default > /etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
grep -q 'SystemdCgroup = true' /etc/containerd/config.toml \
  || die "could not enable SystemdCgroup in /etc/containerd/config.toml"
systemctl restart containerd

keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_MINOR}/deb/"
mkdir -p /etc/apt/keyrings
curl -fsSL "${repo}Release.key" | gpg --dearmor --yes -o "$keyring"
echo "deb [signed-by=$keyring] $repo /" > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
# conntrack and socat: kubeadm's preflight checks and kubectl port-forward need them
apt_install kubelet kubeadm kubectl conntrack socat
apt-mark hold kubelet kubeadm kubectl >/dev/null

# the kubelet advertises the private-network address (eth0 is the provider's NAT network)
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" > /etc/default/kubelet
systemctl enable --now kubelet

# BCC compiles the agent's BPF programs against the running kernel's headers, which the
# DaemonSet mounts from /lib/modules and /usr/src. If the box's kernel is older than the archive's
# headers, the agent's auto mode falls back to iptables and says why.
if ! apt_install "linux-headers-$(uname -r)"; then
  log "warning: no linux-headers-$(uname -r) in the archive: eBPF redirection will fall back" \
      "to iptables (upgrade the kernel and reboot to get eBPF)"
fi
# the agent pins its BPF objects on the host's BPF filesystem (systemd mounts it)
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
log "common setup done"
