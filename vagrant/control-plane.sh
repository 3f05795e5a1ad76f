#!/usr/bin/env bash
# The control plane: kubeadm init, kubectl for root and vagrant, flannel on the private network.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require NODE_IP POD_CIDR FLANNEL_VERSION NETWORK

if [[ ! -f /etc/kubernetes/admin.conf ]]; then
  log "kubeadm init (advertising $NODE_IP, pods $POD_CIDR)"
  kubeadm init --apiserver-advertise-address="$NODE_IP" --pod-network-cidr="$POD_CIDR" \
    --node-name="$(hostname)"
fi
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant:vagrant /home/vagrant/.kube
export KUBECONFIG=/etc/kubernetes/admin.conf

# flannel, told to use the private network: by default it takes the interface of the default
# route, where every VirtualBox node has the same NAT address. Its default pod network is
# 10.244.0.0/16, the POD_CIDR the Vagrantfile passes.
[[ $POD_CIDR == 10.244.0.0/16 ]] || die "flannel's manifest assumes POD_CIDR 10.244.0.0/16, got $POD_CIDR"
manifest=$(mktemp)
curl -fsSL -o "$manifest" \
  "https://github.com/flannel-io/flannel/releases/download/${FLANNEL_VERSION}/kube-flannel.yml"
python3 - "$manifest" "$NETWORK" <<'PY'
import re
import sys

path, network = sys.argv[1:]
with open(path) as f:
    text = f.read()
flag = re.compile(r"^( *)- --kube-subnet-mgr$", re.M)
if len(flag.findall(text)) != 1:
    sys.exit(f"{path}: expected one '- --kube-subnet-mgr' argument in flannel's manifest")
regex = "^" + re.escape(network + ".")
text = flag.sub(lambda m: f"{m.group(0)}\n{m.group(1)}- --iface-regex={regex}", text)
with open(path, "w") as f:
    f.write(text)
PY
kubectl apply -f "$manifest"
rm -f "$manifest"
wait_for 300 "the control-plane node to be Ready" \
  kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=10s
log "control plane ready"
