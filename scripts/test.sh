#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs and starts moto_server, builds
# the workspace once (dev profile), runs all Rust tests, the contract tests of the emulators
# against the official SDKs, the offline deploy check and a small end-to-end run of the local
# fleet. Stops what it started, and fails if any process it started (emulators, webhook server,
# workers, moto) is still running at its end: after success, failure or Ctrl-C alike.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Every process started from here inherits this mark; the tests' own child processes (started
# with a cleared environment) are recognised by running a binary of this checkout's target dir.
export FLEET_TEST_RUN="test-sh-$$-$(date +%s%N)"

# Prints "pid command" of each process that carries the mark or runs a binary under
# the cargo target dir, except this shell, its ancestors and the pids given as arguments.
our_processes() {
  python3 - "$(realpath -m "${CARGO_TARGET_DIR:-$root/target}")/" "$FLEET_TEST_RUN" "$$" "$@" <<'PYEOF'
import os, sys
target, mark, shell, *ignore = sys.argv[1:]
skip = set(ignore) | {shell}
pid = os.getpid()
while pid > 1:  # this python, the $(...) subshell, this script and whatever started it
    skip.add(str(pid))
    try:
        pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        break
for p in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    if p in skip:
        continue
    try:
        env = open(f"/proc/{p}/environ", "rb").read().split(b"\0")
        exe = os.readlink(f"/proc/{p}/exe")
        cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue  # gone, or not ours to read
    if f"FLEET_TEST_RUN={mark}".encode() in env or exe.startswith(target):
        print(p, cmd.strip()[:200])
PYEOF
}
# Processes of this checkout that were running before: not this run's to judge.
preexisting=$(our_processes | cut -d' ' -f1 | tr '\n' ' ')

started_moto=0
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$started_moto" = 1 ]; then scripts/moto.sh stop || true; fi
  # shellcheck disable=SC2086 # a list of pids
  local left
  left=$(our_processes $preexisting || true)
  if [ -n "$left" ]; then
    echo "FAILED: processes this run started are still running (stopped now):" >&2
    sed 's/^/  /' <<<"$left" >&2
    cut -d' ' -f1 <<<"$left" | xargs -r kill -KILL 2>/dev/null || true
    status=1
  else
    echo "no process started by this run is left running"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

step "contract tests of the emulators against the official SDKs (tests/contract)"
# The pinned SDKs go into their own venv once (again only when requirements.txt changes), so
# later runs need no registry.
contract_venv=.local/contract-venv
contract_req=tests/contract/requirements.txt
contract_want="$(sha256sum "$contract_req" | cut -d' ' -f1)"
if [ ! -x "$contract_venv/bin/python" ] || [ "$(cat "$contract_venv/.requirements.sha256" 2>/dev/null)" != "$contract_want" ]; then
  python3 -m venv "$contract_venv"
  "$contract_venv/bin/pip" install --quiet --disable-pip-version-check -r "$contract_req"
  echo "$contract_want" > "$contract_venv/.requirements.sha256"
fi
cargo run --quiet --locked -p fleet-tests --bin contract-check -- \
  --python "$contract_venv/bin/python" -- --self-check

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
