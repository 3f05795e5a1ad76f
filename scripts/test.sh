#!/usr/bin/env bash
# Runs the test tiers in order: lint (ruff, mypy --strict, import contracts), unit, fuzz (hypothesis
# harnesses over every network- and user-facing parser, bounded in time), netns (root), e2e (root,
# whole local clusters). With arguments, only those tiers. Every tier must run: the
# root tiers fail (never skip) when not root, and a tier that collects no test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
tiers=("$@")
((${#tiers[@]})) || tiers=(lint unit fuzz netns e2e)

failed=()
run_pytest() {
  local tier=$1; shift
  pytest "tests/$tier" -p no:cacheprovider "$@"
  local rc=$?
  if ((rc == 5)); then echo "test.sh: tier '$tier' collected no tests" >&2; rc=1; fi
  return $rc
}

for tier in "${tiers[@]}"; do
  echo "=== tier: $tier ==="
  case $tier in
    lint)
      ruff check . && ruff format --check meshapi && mypy && lint-imports || failed+=(lint) ;;
    unit)
      run_pytest unit -q || failed+=(unit) ;;
    fuzz)
      # the statistics line of each harness says how many inputs it ran
      run_pytest fuzz -q --hypothesis-show-statistics --timeout=900 || failed+=(fuzz) ;;
    netns|e2e)
      if [[ $(id -u) != 0 ]]; then echo "test.sh: tier '$tier' needs root" >&2; failed+=("$tier"); continue; fi
      # a crashed earlier run may have left a local cluster behind; tests need the names free.
      # Under the cluster lock: another run's e2e session (or a benchmark) may own the cluster now
      flock /run/lock/nodemesh-local-cluster.lock .venv/bin/meshctl local down >/dev/null 2>&1 || true
      run_pytest "$tier" -q --timeout=600 || failed+=("$tier") ;;
    *) echo "test.sh: unknown tier '$tier'" >&2; failed+=("$tier") ;;
  esac
done

if ((${#failed[@]})); then
  echo "test.sh: FAILED tiers: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all tiers passed: ${tiers[*]}"
