#!/usr/bin/env bash
# The whole fleet on one machine: moto (SQS + DynamoDB), the OpenAI and Pinecone emulators, a
# seeded table, the producer ticking like a scheduler, `producer webhook-server` receiving the
# OpenAI emulator's signed batch-end webhooks, two workers until the queue is idle, then
# `producer status` and a summary (with how many batches finished by webhook). Stops
# everything it started, also on failure or Ctrl-C.
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
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$size" in small|medium|large) ;; *) echo "--size must be small, medium or large" >&2; exit 64 ;; esac
case "$profile" in release) bindir=target/release ;; dev) bindir=target/debug ;; *) echo "--profile must be release or dev" >&2; exit 64 ;; esac

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
work="$(mktemp -d)"
# Every background process is started in this shell (never inside $(...), where its pid would
# be lost with the subshell) and recorded here; cleanup stops them all, on any exit.
pids=()
started_moto=0
cleanup() {
  local status=$? p
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # Up to 10 s to exit (workers drain, the webhook server finishes its requests), then KILL.
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$started_moto" = 1 ]; then scripts/moto.sh stop || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

start_emulator() { # name args... : starts it in the background of this shell
  local name=$1; shift
  "$bindir/$name" "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
}
listening_url() { # name -> prints the URL the emulator announced (reads files only)
  local name=$1
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

# The real index is eventually consistent: an update reaches fetches only after a while. The
# emulator lags as much (2 s by default), so the demo runs the fleet's vector writes the way
# production does (derived from the table, verified after writing).
consistency_ms="${PINECONE_EMULATOR_CONSISTENCY_DELAY_MS:-2000}"
start_emulator pinecone-emulator --consistency-delay-ms "$consistency_ms"
pinecone_url=$(listening_url pinecone-emulator)
say "Pinecone emulator at $pinecone_url (updates visible to fetches after ${consistency_ms} ms)"
say "seeding ($size, seed $seed)"
"$bindir/fleet-demo" seed --size "$size" --seed "$seed" --openai-state "$work/openai-state.json" --pinecone "$pinecone_url"
start_emulator openai-emulator --state "$work/openai-state.json"
openai_url=$(listening_url openai-emulator)
say "OpenAI emulator at $openai_url/v1"

# The webhook receiver, with a fresh signing secret shared with the OpenAI emulator only.
webhook_secret="whsec_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
OPENAI_WEBHOOK_SECRET="$webhook_secret" WEBHOOK_ADDR=127.0.0.1:0 LOG_FORMAT=json RUST_LOG=info \
  "$bindir/producer" webhook-server >"$work/webhook.out" 2>"$work/webhook.log" &
pids+=($!)
webhook_addr=""
for _ in $(seq 1 100); do
  webhook_addr=$(sed -n 's/.*"http_addr":"\([0-9.:]*\)".*/\1/p' "$work/webhook.log" | head -1)
  [ -n "$webhook_addr" ] && break
  sleep 0.1
done
if [ -z "$webhook_addr" ]; then echo "the webhook server did not start; its log:" >&2; cat "$work/webhook.log" >&2; exit 1; fi
say "webhook server at http://$webhook_addr/openai/webhook"
# Batches end at the emulator 3 to 6 s after their first status check (while the workers'
# next check is 10 s or more away), and the emulator sends the signed batch-end webhook.
printf '{"url": "http://%s/openai/webhook", "secret": "%s", "end_after_ms": 3000}' "$webhook_addr" "$webhook_secret" |
  curl -fsS -X POST -H 'content-type: application/json' --data-binary @- "$openai_url/_admin/webhooks"
unset webhook_secret

export OPENAI_BASE_URL="$openai_url/v1" OPENAI_API_KEY=sk-local-demo
export PINECONE_INDEX_HOST="$pinecone_url" PINECONE_API_KEY=pc-local-demo
export LOG_FORMAT=text RUST_LOG="${RUST_LOG:-warn}"
# With webhooks, scheduled checks are only the safety net: they can be far apart.
export RECHECK_MIN_SECONDS=10 RECHECK_MAX_SECONDS=30 VISIBILITY_TIMEOUT_SECONDS=30 MAX_IN_FLIGHT=8
# A Ctrl-C drains the workers quickly (cleanup KILLs whatever is left after 10 s).
export SHUTDOWN_GRACE_SECONDS=5

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
"$bindir/fleet-demo" summary --size "$size" --seed "$seed" --elapsed "$elapsed" \
  --webhook-metrics "http://$webhook_addr/metrics" $check || status=1
exit $status
