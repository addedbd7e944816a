#!/usr/bin/env bash
# The deterministic simulation of the fleet (tests/src/sim; README "Simulation"): worker
# processes apply generated batches through SQS (moto), a simulated DynamoDB (SimTable) and
# the Pinecone emulator at its namespace limit, in scaled real time; each scenario prints one
# RESULT line (and a DETAIL line). Exits non-zero when an end state differs from the reference.
#
#   scripts/simulate.sh                 every scenario: big, restarts, mixed, faults, pacing
#   scripts/simulate.sh big mixed       the named ones (also: smoke, the small one of test.sh)
#
# pacing runs 1, 3 and 10 workers at once (pacing-1, pacing-3, pacing-10) and ends with a
# `PACING …` line: the namespace's update rate as % of its limit and the % answered 429.
# The build's time and the scenarios' are printed apart (BUILD and TOTAL lines).
#
#   SIM_PROFILE=release|dev  cargo profile of the binaries (default release: figures of CPU
#                            mean something only optimised; dev reuses the test build)
#   SIM_SCALE=K              time compression (default: each scenario's own)
#   SIM_SEED=N               seed of data, events and faults
#   SIM_WORKER_LOG=LEVEL     the workers' RUST_LOG (default warn; logs in target/simulate/<scenario>/)
#   SIM_TIMELINE=FILE        write the updates made by each tenth of a real second (to see stalls)
# moto: FLEET_TEST_AWS_ENDPOINT when set, else scripts/moto.sh (started here if needed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

started_moto=0
cleanup() {
  if [ "$started_moto" = 1 ]; then scripts/moto.sh stop; fi
}
trap cleanup EXIT

if [ -z "${FLEET_TEST_AWS_ENDPOINT:-}" ]; then
  if ! scripts/moto.sh url >/dev/null 2>&1 || ! curl -fsS "$(scripts/moto.sh url)/moto-api/" >/dev/null 2>&1; then
    scripts/moto.sh start
    started_moto=1
  fi
  export FLEET_TEST_AWS_ENDPOINT="$(scripts/moto.sh url)"
fi

case "${SIM_PROFILE:-release}" in
  release) build=(--release); dir=release ;;
  dev) build=(); dir=debug ;;
  *) echo "SIM_PROFILE must be release or dev" >&2; exit 64 ;;
esac
build_started=$SECONDS
cargo build "${build[@]}" --locked -p worker --bin worker -p fleet-tests --bin simulate
echo "BUILD real_s=$((SECONDS - build_started))"
bin="${CARGO_TARGET_DIR:-$root/target}/$dir"

# Reference end states are kept between runs of the same binaries (see --reference-cache).
args=(--worker-bin "$bin/worker" --work-dir "$root/target/simulate" --reference-cache "$root/target/simulate-references")
if [ -n "${SIM_SCALE:-}" ]; then args+=(--scale "$SIM_SCALE"); fi
if [ -n "${SIM_SEED:-}" ]; then args+=(--seed "$SIM_SEED"); fi
run_started=$SECONDS
status=0
"$bin/simulate" "${args[@]}" "$@" || status=$?
echo "TOTAL real_s=$((SECONDS - run_started)) (scenarios, without the build)"
exit "$status"
