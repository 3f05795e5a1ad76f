# Shared helpers for the provisioning scripts (sourced, not run).
# shellcheck shell=bash

log() { echo "nodemesh-vagrant: $*" >&2; }
die() { log "error: $*"; exit 1; }

# require VAR...: every variable must be set and non-empty (the Vagrantfile passes them)
require() {
  local v
  for v in "$@"; do
    [[ -n "${!v:-}" ]] || die "environment variable $v is not set (run through the Vagrantfile)"
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 3 s until it succeeds
wait_for() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
    sleep 3
  done
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
