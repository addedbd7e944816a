#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs and starts moto_server, builds
# the workspace once (dev profile), runs all Rust tests, the offline deploy check and a small
# end-to-end run of the local fleet. Stops what it started.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

started_moto=0
cleanup() {
  if [ "$started_moto" = 1 ]; then scripts/moto.sh stop; fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "local AWS (moto_server)"
if ! scripts/moto.sh url >/dev/null 2>&1 || ! curl -fsS "$(scripts/moto.sh url)/moto-api/" >/dev/null 2>&1; then
  scripts/moto.sh start
  started_moto=1
fi
export FLEET_TEST_AWS_ENDPOINT="$(scripts/moto.sh url)"

step "build (one dev-profile build for tests, benches' smoke runs and the demo)"
cargo build --workspace --all-targets --locked

step "Rust tests"
cargo test --workspace --locked

step "simulation of the fleet, small scenario (scripts/simulate.sh for the full ones)"
SIM_PROFILE=dev scripts/simulate.sh smoke

if [ -x deploy/check.sh ]; then
  step "offline deploy check"
  deploy/check.sh --with-mutations
fi

if [ -x scripts/run-local.sh ]; then
  step "local fleet, small size"
  scripts/run-local.sh --size small --profile dev --check
fi
