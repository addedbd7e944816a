#!/usr/bin/env bash
# The deploy check must reject broken deploy files. Each test copies deploy/
# to a temporary folder, breaks one thing, runs the checks that concern it
# (deploy/check.sh --deploy-dir COPY --only ...) and asserts that they fail,
# and that every check expected to catch the fault is among the failures.
# An unmodified copy must pass the same checks first (so a failure is the
# mutation's doing, not the copy's).
#
#   deploy/tests/broken-copies.sh        (also run by deploy/check.sh --with-mutations)
#
# Prints "ok - mutation NAME rejected (...)" per mutation, "not ok - ..." when
# a broken copy passes, and exits 1 then.
set -euo pipefail

TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY_SRC=$(cd "$TESTS_DIR/.." && pwd)
REPO_ROOT=$(cd "$DEPLOY_SRC/.." && pwd)
CHECK=$DEPLOY_SRC/check.sh
CRDS_DIR=${FLEET_CRDS_DIR:-$REPO_ROOT/../shared/crds}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/deploy-mutations.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

PASSED=0
FAILED=0

fresh_copy() {  # fresh_copy NAME -> path of a pristine copy of deploy/
  local dst=$TMP/$1/deploy
  mkdir -p "$TMP/$1"
  cp -a "$DEPLOY_SRC" "$dst"
  rm -rf "$dst/tests"
  printf '%s' "$dst"
}

# replace FILE OLD NEW: replace the single occurrence of OLD (exact text).
replace() {
  python3 - "$@" <<'PYEOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path, encoding="utf-8").read()
n = text.count(old)
if n != 1:
    sys.exit(f"mutation setup: {old!r} occurs {n} times in {path}, expected once")
open(path, "w", encoding="utf-8").write(text.replace(old, new))
PYEOF
}

# drop_block FILE KEY_LINE: delete a YAML block (the line equal to KEY_LINE,
# once, and the lines indented deeper below it).
drop_block() {
  python3 - "$@" <<'PYEOF'
import sys
path, key = sys.argv[1:3]
lines = open(path, encoding="utf-8").read().split("\n")
idx = [i for i, l in enumerate(lines) if l == key]
if len(idx) != 1:
    sys.exit(f"mutation setup: {key!r} occurs {len(idx)} times in {path}, expected once")
i = idx[0]
indent = len(key) - len(key.lstrip())
j = i + 1
while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
    j += 1
del lines[i:j]
open(path, "w", encoding="utf-8").write("\n".join(lines))
PYEOF
}

# json_edit FILE CODE: run the Python CODE on the JSON document `d` of FILE
# (`panels`: its panels other than rows) and write it back.
json_edit() {
  python3 - "$@" <<'PYEOF'
import json, sys
path, code = sys.argv[1:3]
d = json.load(open(path, encoding="utf-8"))
panels = [p for p in d["panels"] if p.get("type") != "row"]
exec(code)
open(path, "w", encoding="utf-8").write(json.dumps(d, indent=2) + "\n")
PYEOF
}

# expect_rejected NAME STEPS EXPECTED EVIDENCE COPY
#   STEPS     the checks to run (check.sh --only)
#   EXPECTED  space-separated check names that must each FAIL
#   EVIDENCE  regex of the output lines to show as the reason
expect_rejected() {
  local name=$1 steps=$2 expected=$3 evidence=$4 copy=$5 out rc=0 failed missing=""
  out=$("$CHECK" --deploy-dir "$copy" --only "$steps" 2>&1) || rc=$?
  printf '%s\n' "$out" >"$TMP/$name.log"
  failed=$(grep -E '^FAIL - ' <<<"$out" | sed -E 's/^FAIL - ([a-z-]+( [a-z]+)?):.*/\1/; s/^checkov ([a-z]+)$/checkov-\1/' |
    sort -u | tr '\n' ' ' || true)
  if [[ $rc -eq 0 ]]; then
    FAILED=$((FAILED + 1))
    echo "not ok - mutation $name passed the checks ($steps): the check does not catch it"
    return
  fi
  for e in $expected; do
    [[ " $failed " == *" $e "* ]] || missing+=" $e"
  done
  if [[ -n $missing ]]; then
    FAILED=$((FAILED + 1))
    echo "not ok - mutation $name rejected, but not by:$missing (failed: ${failed% })"
  else
    PASSED=$((PASSED + 1))
    echo "ok - mutation $name rejected (failed: ${failed% })"
  fi
  grep -E -- "$evidence" <<<"$out" | grep -vE '^(ok - |FAIL - (crosscheck|dashboard|crds|kubernetes-validate|cfn-lint|hadolint|yamllint):)' |
    sed -E 's/^ *(- )?//' | awk '!seen[$0]++' | cut -c1-200 | sed 's/^/     evidence: /' | head -n 6 || true
}

STEPS_ALL=kubernetes-validate,crds,crosscheck,dashboard,cfn-lint,checkov

# 0. control: an unmodified copy passes every check used below.
copy=$(fresh_copy control)
if out=$("$CHECK" --deploy-dir "$copy" --only "yamllint,hadolint,$STEPS_ALL" 2>&1); then
  PASSED=$((PASSED + 1))
  echo "ok - unmodified copy passes ($(tail -n 1 <<<"$out"))"
else
  FAILED=$((FAILED + 1))
  echo "not ok - unmodified copy fails, so the mutation results below mean nothing:"
  sed 's/^/     /' <<<"$out"
fi

# 1. KEDA queueLength a number instead of a string.
copy=$(fresh_copy keda-queue-length-number)
replace "$copy/k8s/base/worker-scaledobject.yaml" 'queueLength: "16"' 'queueLength: 16'
if [[ -d $CRDS_DIR ]]; then expected="crds crosscheck"; else expected="crosscheck"; fi
expect_rejected keda-queue-length-number "crds,crosscheck" "$expected" 'queueLength' "$copy"

# 2. The shutdown grace period not below the visibility timeout.
copy=$(fresh_copy grace-not-below-visibility)
replace "$copy/k8s/base/kustomization.yaml" 'SHUTDOWN_GRACE_SECONDS=25' 'SHUTDOWN_GRACE_SECONDS=120'
expect_rejected grace-not-below-visibility "crosscheck" "crosscheck" 'SHUTDOWN_GRACE_SECONDS [0-9]+ is not below' "$copy"

# 3. A container without resources.limits.
copy=$(fresh_copy container-without-limits)
drop_block "$copy/k8s/base/worker-deployment.yaml" '            limits:'
expect_rejected container-without-limits "kubernetes-validate,crosscheck,checkov" "crosscheck checkov-kubernetes" \
  'limits|CKV_K8S_1[13]' "$copy"

# 4. A misspelt IAM action.
copy=$(fresh_copy iam-action-misspelt)
replace "$copy/cloudformation/fleet.yaml" \
  $'Sid: ConsumeWorkQueue\n                Effect: Allow\n                Action:\n                  - sqs:ReceiveMessage' \
  $'Sid: ConsumeWorkQueue\n                Effect: Allow\n                Action:\n                  - sqs:RecieveMessage'
expect_rejected iam-action-misspelt "cfn-lint,crosscheck,checkov" "cfn-lint crosscheck" \
  '[Rr]ecieve[Mm]essage|W3037' "$copy"

# 5. The alert on errors of the deployment names a metric no binary exports.
copy=$(fresh_copy deployment-alert-metric-misspelt)
replace "$copy/k8s/base/prometheusrule.yaml" 'increase(fleet_deployment_errors_total[5m])' \
  'increase(fleet_deployment_error_total[5m])'
expect_rejected deployment-alert-metric-misspelt "crosscheck" "crosscheck" \
  'fleet_deployment_error_total' "$copy"

# 6. The alert on errors of the deployment renamed away (issue 9 requires it).
copy=$(fresh_copy deployment-alert-missing)
replace "$copy/k8s/base/prometheusrule.yaml" '- alert: FleetDeploymentErrors' '- alert: FleetSetupBroken'
expect_rejected deployment-alert-missing "crosscheck" "crosscheck" 'FleetDeploymentErrors' "$copy"

# 7. A rule added to the webhook receiver's NetworkPolicy that lets every pod and address in.
copy=$(fresh_copy webhook-networkpolicy-open)
replace "$copy/k8s/base/webhook-networkpolicy.yaml" $'  ingress:\n    - from:' \
  $'  ingress:\n    - ports:\n        - port: 8080\n          protocol: TCP\n    - from:'
expect_rejected webhook-networkpolicy-open "kubernetes-validate,crosscheck" "crosscheck" \
  "without 'from'" "$copy"

# 8. The webhook signing secret written into the manifest.
copy=$(fresh_copy webhook-secret-literal)
replace "$copy/k8s/base/webhook-deployment.yaml" \
  $'              valueFrom:\n                secretKeyRef:\n                  name: fleet-openai-webhook\n                  key: signing-secret' \
  $'              value: whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD'
expect_rejected webhook-secret-literal "kubernetes-validate,crosscheck" "crosscheck" \
  'OPENAI_WEBHOOK_SECRET is not taken from a Secret' "$copy"

# 9. The webhook Ingress without TLS.
copy=$(fresh_copy webhook-ingress-without-tls)
drop_block "$copy/k8s/base/webhook-ingress.yaml" '  tls:'
replace "$copy/k8s/overlays/example/kustomization.yaml" $'      - op: replace\n        path: /spec/tls/0/hosts/0\n        value: fleet-webhooks.example.org\n' ''
expect_rejected webhook-ingress-without-tls "kubernetes-validate,crosscheck" "crosscheck" \
  'without TLS' "$copy"

# 10. A single webhook receiver (its PDB then blocks every drain).
copy=$(fresh_copy webhook-single-replica)
replace "$copy/k8s/base/webhook-deployment.yaml" '  replicas: 2' '  replicas: 1'
expect_rejected webhook-single-replica "crosscheck" "crosscheck" 'replicas is 1|minAvailable' "$copy"

# 11. The dashboard queries a metric no binary exports (a misspelt name).
copy=$(fresh_copy dashboard-metric-not-exported)
json_edit "$copy/grafana/fleet.json" '
t = next(p for p in panels if p["title"] == "Apply progress")["targets"][2]
assert "fleet_skipped_results_total" in t["expr"]
t["expr"] = t["expr"].replace("fleet_skipped_results_total", "fleet_skipped_result_total")'
expect_rejected dashboard-metric-not-exported "dashboard" "dashboard" 'fleet_skipped_result_total' "$copy"

# 12. A dashboard panel bound to one Grafana's datasource instead of the variable.
copy=$(fresh_copy dashboard-datasource-hardcoded)
json_edit "$copy/grafana/fleet.json" 'panels[3]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}'
expect_rejected dashboard-datasource-hardcoded "dashboard" "dashboard" 'is not .*datasource' "$copy"

# 13. Two dashboard panels with one id.
copy=$(fresh_copy dashboard-duplicate-panel-id)
json_edit "$copy/grafana/fleet.json" 'panels[5]["id"] = panels[4]["id"]'
expect_rejected dashboard-duplicate-panel-id "dashboard" "dashboard" 'panel id .* used by' "$copy"

# 14. A dashboard query that is no PromQL (rate() of an instant vector).
copy=$(fresh_copy dashboard-promql-invalid)
json_edit "$copy/grafana/fleet.json" '
t = next(p for p in panels if p["title"] == "Superseded messages")["targets"][0]
t["expr"] = "60 * sum(rate(fleet_superseded_messages_total))"'
expect_rejected dashboard-promql-invalid "dashboard" "dashboard" 'not valid PromQL' "$copy"

# 15. A table statement of the worker's role without the leading-keys condition.
copy=$(fresh_copy iam-statement-without-leading-keys)
replace "$copy/cloudformation/fleet.yaml" \
  $'                Condition:\n                  ForAllValues:StringLike:\n                    dynamodb:LeadingKeys:\n                      - "IMAGE#*"\n' ''
expect_rejected iam-statement-without-leading-keys "cfn-lint,crosscheck,checkov" "crosscheck" \
  'no dynamodb:LeadingKeys condition' "$copy"

# 16. The runtime base image by tag only, not pinned by digest.
copy=$(fresh_copy base-image-unpinned)
replace "$copy/Dockerfile" \
  'FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f' \
  'FROM gcr.io/distroless/cc-debian12:nonroot'
expect_rejected base-image-unpinned "hadolint,crosscheck,checkov" "crosscheck" 'not pinned by digest' "$copy"

# 17. A rule added to the fleet's NetworkPolicy that opens the metrics port to every pod and address.
copy=$(fresh_copy metrics-networkpolicy-open)
replace "$copy/k8s/base/networkpolicy.yaml" $'          protocol: TCP\n  egress:' \
  $'          protocol: TCP\n    - ports:\n        - port: 9090\n          protocol: TCP\n  egress:'
expect_rejected metrics-networkpolicy-open "kubernetes-validate,crosscheck" "crosscheck" \
  "without 'from' opens the metrics port" "$copy"

# 18. A download budget bigger than the worker's /tmp volume (big batches would get it evicted).
copy=$(fresh_copy download-budget-too-big)
replace "$copy/k8s/base/kustomization.yaml" '- DOWNLOAD_BUDGET_MB=768' '- DOWNLOAD_BUDGET_MB=4096'
expect_rejected download-budget-too-big "crosscheck" "crosscheck" 'does not fit the worker' "$copy"

echo "broken-copies: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
