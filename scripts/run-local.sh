#!/usr/bin/env bash
# The whole fleet on one machine: moto (SQS + DynamoDB), the OpenAI and Pinecone emulators, a
# seeded table, the producer ticking like a scheduler, two workers until the queue is idle, then
# `producer status` and a summary. Stops everything it started.
#
#   scripts/run-local.sh [--size small|medium|large] [--seed N] [--profile release|dev] [--check]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

size=medium seed=42 profile=release check=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --check) check="--check"; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$size" in small|medium|large) ;; *) echo "--size must be small, medium or large" >&2; exit 64 ;; esac
case "$profile" in release) bindir=target/release ;; dev) bindir=target/debug ;; *) echo "--profile must be release or dev" >&2; exit 64 ;; esac

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
work="$(mktemp -d)"
pids=()
started_moto=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$started_moto" = 1 ]; then scripts/moto.sh stop; fi
  rm -rf "$work"
}
trap cleanup EXIT

t0=$(date +%s.%N)
say "building ($profile)"
if [ "$profile" = release ]; then cargo build --release --locked --workspace --bins; else cargo build --locked --workspace --bins; fi

say "starting moto_server"
if ! curl -fsS "$(scripts/moto.sh url 2>/dev/null)/moto-api/" >/dev/null 2>&1; then
  scripts/moto.sh start
  started_moto=1
fi
export AWS_ENDPOINT_URL="$(scripts/moto.sh url)"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
unset AWS_PROFILE AWS_SESSION_TOKEN

start_emulator() { # name -> prints URL
  local name=$1; shift
  "$bindir/$name" "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    if grep -q '^listening on ' "$work/$name.out" 2>/dev/null; then
      sed -n 's/^listening on //p' "$work/$name.out" | head -1
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2; cat "$work/$name.log" >&2; return 1
}

say "creating the table and queues"
"$bindir/fleet-demo" setup --name fleet-demo --max-receive-count 5 --visibility-timeout 30 > "$work/env"
set -a; . "$work/env"; set +a
say "table $DYNAMODB_TABLE_NAME, queue $QUEUE_URL"

pinecone_url=$(start_emulator pinecone-emulator)
say "Pinecone emulator at $pinecone_url"
say "seeding ($size, seed $seed)"
"$bindir/fleet-demo" seed --size "$size" --seed "$seed" --openai-state "$work/openai-state.json" --pinecone "$pinecone_url"
openai_url=$(start_emulator openai-emulator --state "$work/openai-state.json")
say "OpenAI emulator at $openai_url/v1"

export OPENAI_BASE_URL="$openai_url/v1" OPENAI_API_KEY=sk-local-demo
export PINECONE_INDEX_HOST="$pinecone_url" PINECONE_API_KEY=pc-local-demo
export LOG_FORMAT=text RUST_LOG="${RUST_LOG:-warn}"
export RECHECK_MIN_SECONDS=1 RECHECK_MAX_SECONDS=3 VISIBILITY_TIMEOUT_SECONDS=30 MAX_IN_FLIGHT=8

say "producer tick 1"
"$bindir/producer" enqueue
say "producer tick 2 (nothing new should be enqueued)"
"$bindir/producer" enqueue

say "starting two workers (until idle)"
worker_pids=()
for i in 1 2; do
  METRICS_ADDR=127.0.0.1:0 "$bindir/worker" --exit-when-idle 2>"$work/worker-$i.log" &
  worker_pids+=($!); pids+=($!)
done

tick=2
while :; do
  alive=0
  for p in "${worker_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  sleep 3
  tick=$((tick + 1))
  "$bindir/producer" enqueue --json >"$work/tick.json" 2>>"$work/producer.log" || true
  "$bindir/producer" status --json 2>/dev/null | python3 -c '
import json,sys
s=json.load(sys.stdin); b=s.get("batches",{}); q=s.get("work_queue",{})
print("  progress: " + ", ".join("%s %s" % (k, v) for k, v in sorted(b.items()) if v) + " | queue visible %s, in flight %s, delayed %s" % (q.get("visible", 0), q.get("in_flight", 0), q.get("delayed", 0)))
' || true
done
status=0
for i in 1 2; do
  if ! wait "${worker_pids[$((i-1))]}"; then
    echo "worker $i failed; its log:" >&2; tail -50 "$work/worker-$i.log" >&2; status=1
  fi
done

say "producer status"
"$bindir/producer" status
t1=$(date +%s.%N)
elapsed=$(python3 -c "print($t1 - $t0)")
"$bindir/fleet-demo" summary --size "$size" --seed "$seed" --elapsed "$elapsed" $check || status=1
exit $status
