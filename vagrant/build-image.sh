#!/usr/bin/env bash
# Build the nodemesh image from the repository (synced to /nodemesh) with buildah, import it into
# this node's containerd, and leave a docker-archive for the workers in /srv/nodemesh-dist.
set -euo pipefail
# shellcheck source=vagrant/lib.sh
source /nodemesh/vagrant/lib.sh
require IMAGE

apt_install buildah
dist=/srv/nodemesh-dist
mkdir -p "$dist"
log "building $IMAGE (daemonset/image/Dockerfile)"
cd /nodemesh
# chroot isolation and the host network for RUN steps: no container networking to set up for
# the build (apt-get and pip download from the VM's network)
buildah build --isolation chroot --network host --layers \
  --ignorefile daemonset/image/Dockerfile.dockerignore \
  -f daemonset/image/Dockerfile -t "$IMAGE" .
rm -f "$dist/nodemesh-image.tar"
buildah push "$IMAGE" "docker-archive:$dist/nodemesh-image.tar:$IMAGE"
(cd "$dist" && sha256sum nodemesh-image.tar > nodemesh-image.tar.sha256)
ctr -n k8s.io images import "$dist/nodemesh-image.tar"
ctr -n k8s.io images ls -q | grep -qx "$IMAGE" || die "$IMAGE is not in containerd after import"
log "image built and imported: $IMAGE"
