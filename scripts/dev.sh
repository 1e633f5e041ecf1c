#!/usr/bin/env bash
# Set up EasyRemote on a fresh machine and run something with it.
#   bash scripts/dev.sh demo    # gateway + node + client, with a gateway restart, and a report
#   bash scripts/dev.sh test    # lint (ruff), type checks (mypy), then the whole test suite
#   bash scripts/dev.sh lint    # ruff and mypy only
#   bash scripts/dev.sh bench   # benchmarks/bench_calls.py
# The virtual environment lives in .venv; the set-up is skipped when it is current.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
stamp=$venv/.installed

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e '.[test,lint,bench]'
    touch "$stamp"
  fi
  # The network-namespace fault tests need iptables and iproute2; install them when we may.
  if [ "$(id -u)" = 0 ] && { ! command -v iptables >/dev/null || ! command -v ip >/dev/null; } \
      && command -v apt-get >/dev/null; then
    echo "installing iptables and iproute2 for the network fault tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null) \
      || echo "could not install iptables; the namespace tests will say they were skipped" >&2
  fi
}

lint() {
  "$venv/bin/ruff" check .
  "$venv/bin/mypy"
}

command=${1:-test}
shift || true
setup
case "$command" in
  demo)  exec "$venv/bin/easyremote" demo "$@" ;;
  # Two worker processes, each taking whole test files (their gateways and event loops are per
  # file); TEST_WORKERS=0 runs everything in this process.
  test)  lint && exec "$venv/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  lint)  lint ;;
  bench) exec "$venv/bin/python" benchmarks/bench_calls.py "$@" ;;
  *)     echo "usage: bash scripts/dev.sh {demo|test|lint|bench} [args...]" >&2; exit 2 ;;
esac
