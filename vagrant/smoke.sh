#!/usr/bin/env bash
# Smoke test of the mesh on the Vagrant cluster (run on the control plane as root; the Vagrantfile
# runs it after the last worker is up, `vagrant provision cp --provision-with smoke` again).
#
# Two enrolled pods on different workers (namespace nodemesh-smoke, labelled
# nodemesh.io/dataplane-mode=enabled; service accounts client and server), a request from the
# client to the server's Service, and then the proof that it went through the mesh: the
# destination node's ztunnel metrics (:15020/metrics on the node's address) count a connection
# from spiffe://cluster.local/ns/nodemesh-smoke/sa/client to
# spiffe://cluster.local/ns/nodemesh-smoke/sa/server over mutual TLS.
# KEEP=1 leaves the namespace in place afterwards.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require IMAGE
export KUBECONFIG=/etc/kubernetes/admin.conf
NS=nodemesh-smoke
TRUST_DOMAIN=cluster.local
SRC="spiffe://$TRUST_DOMAIN/ns/$NS/sa/client"
DST="spiffe://$TRUST_DOMAIN/ns/$NS/sa/server"

wait_for 900 "3 nodes to be registered" \
  bash -c '[[ $(kubectl get nodes --no-headers | wc -l) -ge 3 ]]'
kubectl wait --for=condition=Ready node --all --timeout=600s
kubectl -n nodemesh-system rollout status deployment/nodemesh-controller --timeout=600s
kubectl -n nodemesh-system rollout status daemonset/nodemesh-node --timeout=600s

read -r -a workers < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
  -o jsonpath='{.items[*].metadata.name}')
((${#workers[@]} >= 2)) || die "need two worker nodes, found: ${workers[*]:-none}"
server_node=${workers[0]}
client_node=${workers[1]}
log "server on $server_node, client on $client_node"

kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s
kubectl apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
  labels:
    nodemesh.io/dataplane-mode: enabled
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: $NS}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: $NS}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: $NS
  labels: {app: server}
spec:
  serviceAccountName: server
  nodeSelector: {kubernetes.io/hostname: $server_node}
  containers:
  - name: server
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0, --directory, /opt/nodemesh]
    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      tcpSocket: {port: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: $NS
spec:
  selector: {app: server}
  ports:
  - {name: http, port: 8080, targetPort: http}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: $NS
  labels: {app: client}
spec:
  serviceAccountName: client
  nodeSelector: {kubernetes.io/hostname: $client_node}
  containers:
  - name: client
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, infinity]
YAML
kubectl -n "$NS" wait --for=condition=Ready pod/server pod/client --timeout=300s
for pod in server client; do
  log "$pod: nodemesh.io/redirection=$(kubectl -n "$NS" get pod "$pod" \
    -o jsonpath='{.metadata.annotations.nodemesh\.io/redirection}')"
done

request() {
  kubectl -n "$NS" exec client -- python3 -c '
import sys, urllib.request
with urllib.request.urlopen("http://server:8080/", timeout=5) as r:
    sys.exit(0 if r.status == 200 else 1)'
}
wait_for 120 "a request from the client to the server through the mesh" request
log "request from client ($client_node) to server ($server_node): HTTP 200"

server_ip=$(kubectl get node "$server_node" \
  -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
metrics=$(mktemp)
trap 'rm -f "$metrics"' EXIT
seen() {
  curl -fsS --max-time 5 -o "$metrics" "http://$server_ip:15020/metrics" || return 1
  grep '^istio_tcp_connections_opened_total{' "$metrics" \
    | grep -F "source_principal=\"$SRC\"" | grep -F "destination_principal=\"$DST\"" \
    | grep -F 'connection_security_policy="mutual_tls"' \
    | grep -Eq ' [1-9][0-9]*(\.[0-9]+)?$'
}
wait_for 60 "the connection in $server_node's metrics ($SRC -> $DST, mutual_tls)" seen
log "$server_node ($server_ip:15020/metrics) counted the connection:"
grep '^istio_tcp_connections_opened_total{' "$metrics" | grep -F "source_principal=\"$SRC\"" >&2

if [[ ${KEEP:-0} != 1 ]]; then
  kubectl delete namespace "$NS" --wait=false
fi
log "smoke test passed"
