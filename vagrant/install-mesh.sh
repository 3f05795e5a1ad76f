#!/usr/bin/env bash
# Install nodemesh from daemonset/ (kustomize, pinned to the image built by build-image.sh).
# The controller and the node pods on the workers start once the workers join; smoke.sh waits.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
export KUBECONFIG=/etc/kubernetes/admin.conf

kubectl apply -k /nodemesh/daemonset/
for crd in authorizationpolicies.security.nodemesh.io peerauthentications.security.nodemesh.io; do
  kubectl wait --for=condition=Established "crd/$crd" --timeout=60s
done
log "nodemesh applied (kubectl -n nodemesh-system get pods)"
