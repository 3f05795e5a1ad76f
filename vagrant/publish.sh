#!/usr/bin/env bash
# Serve the workers what they need from the control plane, on the private network only: the join
# command (a fresh bootstrap token valid 2 hours) and the image archive with its checksum. The
# server stops by itself after 3 hours; `vagrant provision cp --provision-with publish` restarts it.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require NODE_IP DIST_PORT
export KUBECONFIG=/etc/kubernetes/admin.conf

dist=/srv/nodemesh-dist
[[ -s $dist/nodemesh-image.tar && -s $dist/nodemesh-image.tar.sha256 ]] \
  || die "$dist has no image archive: run build-image.sh first"
kubeadm token create --ttl 2h --print-join-command > "$dist/join.tmp"
mv "$dist/join.tmp" "$dist/join.txt"
systemctl stop nodemesh-dist.service 2>/dev/null || true
systemctl reset-failed nodemesh-dist.service 2>/dev/null || true
systemd-run --unit=nodemesh-dist --property=RuntimeMaxSec=3h \
  python3 -m http.server "$DIST_PORT" --bind "$NODE_IP" --directory "$dist"
wait_for 30 "the dist server on $NODE_IP:$DIST_PORT" \
  curl -fsS -o /dev/null "http://$NODE_IP:$DIST_PORT/join.txt"
log "serving the join command and the image on http://$NODE_IP:$DIST_PORT/"
