#!/usr/bin/env bash
# A worker: fetch the image archive from the control plane, check it, import it into containerd,
# and join the cluster with the published join command (checked before use).
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require CONTROL_PLANE_IP DIST_PORT IMAGE

base="http://$CONTROL_PLANE_IP:$DIST_PORT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the control plane may still be building the image
wait_for 3600 "the control plane to publish $base/join.txt" \
  curl -fsS -o "$work/join.txt" "$base/join.txt"

log "fetching the image archive"
curl -fsS -o "$work/nodemesh-image.tar" "$base/nodemesh-image.tar"
curl -fsS -o "$work/nodemesh-image.tar.sha256" "$base/nodemesh-image.tar.sha256"
(cd "$work" && sha256sum --check --quiet nodemesh-image.tar.sha256) \
  || die "the image archive from $base does not match its checksum (truncated download?)"
ctr -n k8s.io images import "$work/nodemesh-image.tar"
ctr -n k8s.io images ls -q | grep -qx "$IMAGE" || die "$IMAGE is not in containerd after import"

if [[ -f /etc/kubernetes/kubelet.conf ]]; then
  log "already joined"
  exit 0
fi
# run only a join command of the expected shape, never whatever the server sent
read -r -a join < "$work/join.txt"
line="${join[*]}"
pattern='^kubeadm join [0-9.]+:6443 --token [a-z0-9]{6}\.[a-z0-9]{16} --discovery-token-ca-cert-hash sha256:[a-f0-9]{64}$'
[[ $line =~ $pattern ]] || die "unexpected join command from $base/join.txt: $line"
[[ ${join[2]} == "$CONTROL_PLANE_IP:6443" ]] || die "join command names ${join[2]}, not $CONTROL_PLANE_IP:6443"
log "joining the cluster"
kubeadm join "${join[2]}" --token "${join[4]}" --discovery-token-ca-cert-hash "${join[6]}" \
  --node-name="$(hostname)"
log "joined"
