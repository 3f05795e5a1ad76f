#!/usr/bin/env bash
# Installs everything nodemesh needs on a fresh Debian 12 machine (run as root), idempotently:
# Debian packages, kernel headers linked where BCC looks for them, and a virtualenv in .venv with
# the project installed (editable) and Debian's bcc module importable from it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iptables nftables kmod procps psmisc curl ca-certificates openssl iputils-ping
  iperf3 wrk tcpdump prometheus haproxy vagrant
  python3-bpfcc bpfcc-tools linux-headers-amd64
  python3 python3-venv python3-dev gcc make libc6-dev
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages with services (prometheus, haproxy) must not start them: we run our own
  # instances (the benchmark's sidecars are HAProxy processes it starts and stops itself).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# BCC compiles against kernel headers; this kernel ships none, Debian's split header packages are
# the closest. Link them where BCC looks (KERNEL-NOTES.md: BCC_KERNEL_SOURCE alone does not work).
kver=$(uname -r)
moddir=/lib/modules/$kver
hdr_amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
hdr_common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
if [[ -n "$hdr_amd64" && -n "$hdr_common" && ! -e "$moddir/build/include" ]]; then
  mkdir -p "$moddir"
  ln -sfn "$hdr_amd64" "$moddir/build"
  ln -sfn "$hdr_common" "$moddir/source"
fi

# The virtualenv. Prefer the interpreter on PATH when it is 3.11+, else Debian's.
PY=${NODEMESH_PYTHON:-}
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then
      PY=$(command -v "$cand"); break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: no Python >= 3.11 with venv found" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.nodemesh-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

# Debian's bcc is pure Python over libbcc.so: expose only that package to the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -d /usr/lib/python3/dist-packages/bcc ]]; then
  mkdir -p .venv/bcc-shim
  ln -sfn /usr/lib/python3/dist-packages/bcc .venv/bcc-shim/bcc
  echo "$(pwd)/.venv/bcc-shim" > "$site/nodemesh-bcc.pth"
fi
echo "setup: ready (.venv, $(.venv/bin/python --version))"
