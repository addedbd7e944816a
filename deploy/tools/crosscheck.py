#!/usr/bin/env python3
"""Cross checks between the deploy files that no single linter can see.

Usage:
  crosscheck.py --deploy-dir DIR --rendered OVERLAY.yaml --repo-root ROOT
                [--interface PATH]

  DIR            the deploy/ folder (or a copy of it)
  OVERLAY.yaml   `kustomize build DIR/k8s/overlays/example` output
  ROOT           the repository root, for the Rust sources (shared/src,
                 worker/src, producer/src)
  --interface    interface.md (default: ROOT/docs/spec/interface.md;
                 an embedded copy of its variable list is used if absent)

The CloudFormation values are the template's parameter defaults overridden
by DIR/cloudformation/parameters.example.json: the stack the example overlay
belongs to. Prints one line per check; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml

from fleet_metrics import check_expr, scan_exported, series_names

# ---------------------------------------------------------------- contract
# The metrics the binaries export are read from the Rust sources
# (fleet_metrics.py), as are the label values queries may filter on.
REQUIRED_ALERTS = {
    "FleetDeadLetterQueueNotEmpty": "dead-letter queue not empty",
    "FleetOldestPendingBatchTooOld": "oldest pending batch too old",
    "FleetStuckBatches": "stuck batches",
    "FleetWorkerErrorRateHigh": "worker error rate",
    "FleetWorkerHeartbeatMissing": "no worker heartbeat",
    "FleetDeploymentErrors": "errors of the deployment (issue 9)",
    "FleetBatchesDeadLettered": "batches dead-lettered by workers (issue 9)",
    "FleetWebhookSignaturesFailing": "webhook deliveries fail verification",
}

# The two long-running workloads, by Deployment name.
WORKER = "fleet-worker"
WEBHOOK = "fleet-webhook"
WEBHOOK_PATH = "/openai/webhook"
# producer/src/webhook/mod.rs SHUTDOWN_GRACE: requests in progress after SIGTERM.
WEBHOOK_SHUTDOWN_GRACE_SECONDS = 10

# Exactly the AWS actions each binary calls, per resource (least privilege).
# Table statements are keyed by the dynamodb:LeadingKeys prefixes they are
# limited to ("table[BATCH#*]"): the receipts table is shared with other
# programs, and each binary reaches only the partitions it works on (read from
# shared/src/store and shared/src/model: BATCH#<id> summary, fleet state, audit
# rows and journal; IMAGE#<uuid> word labels). Index statements are keyed by
# the index ("index/GSI1"): a query on an index is not keyed by the table's
# partition key, so LeadingKeys cannot limit it; they name the one index.
EXPECTED_ACTIONS = {
    "WorkerRole": {
        "WorkQueue": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                      "sqs:SendMessage", "sqs:GetQueueAttributes"},
        "DeadLetterQueue": {"sqs:SendMessage"},
        "table[BATCH#*]": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                           "dynamodb:Query", "dynamodb:BatchWriteItem"},
        "table[IMAGE#*]": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                           "dynamodb:Query"},
    },
    "ProducerRole": {
        "WorkQueue": {"sqs:SendMessage", "sqs:GetQueueAttributes"},
        "DeadLetterQueue": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                            "sqs:ChangeMessageVisibility", "sqs:StartMessageMoveTask",
                            "sqs:ListMessageMoveTasks"},
        "table[BATCH#*]": {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"},
        "index/GSI1": {"dynamodb:Query"},
    },
    "KedaScalerRole": {
        "WorkQueue": {"sqs:GetQueueAttributes"},
    },
}
# The leading-key condition every table statement must carry.
LEADING_KEYS = "dynamodb:LeadingKeys"
LEADING_KEYS_OPERATOR = "ForAllValues:StringLike"
# A prefix pattern: a fixed key prefix ending in "#", then "*".
LEADING_KEY_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*#\*$")
# Valid action names of the two services (AWS service authorization
# reference), so a misspelt action fails even where cfn-lint is not run.
VALID_ACTIONS = {
    "sqs": {"AddPermission", "CancelMessageMoveTask", "ChangeMessageVisibility", "CreateQueue",
            "DeleteMessage", "DeleteQueue", "GetQueueAttributes", "GetQueueUrl",
            "ListDeadLetterSourceQueues", "ListMessageMoveTasks", "ListQueues", "ListQueueTags",
            "PurgeQueue", "ReceiveMessage", "RemovePermission", "SendMessage",
            "SetQueueAttributes", "StartMessageMoveTask", "TagQueue", "UntagQueue"},
    "dynamodb": {"BatchGetItem", "BatchWriteItem", "ConditionCheckItem", "DeleteItem",
                 "DescribeTable", "DescribeTimeToLive", "GetItem", "PartiQLSelect", "PutItem",
                 "Query", "Scan", "TransactGetItems", "TransactWriteItems", "UpdateItem",
                 "DescribeStream", "GetRecords", "GetShardIterator", "ListStreams"},
}

# interface.md's variables (used when docs/spec/interface.md is absent).
DOCUMENTED_ENV = {
    "AWS_REGION", "AWS_ENDPOINT_URL", "DYNAMODB_TABLE_NAME", "QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PINECONE_INDEX_HOST",
    "PINECONE_API_KEY", "PINECONE_NAMESPACE", "METRICS_ADDR", "MAX_IN_FLIGHT",
    "VISIBILITY_TIMEOUT_SECONDS", "RECHECK_MIN_SECONDS", "RECHECK_MAX_SECONDS",
    "MESSAGE_DEADLINE_SECONDS", "STUCK_VALIDATING_SECONDS", "SHUTDOWN_GRACE_SECONDS",
    "LOG_FORMAT", "RUST_LOG",
}
# Named in issue 6 beside interface.md.
EXTRA_ENV = {
    "worker": {"HEARTBEAT_SECONDS", "OPENAI_ORGANIZATION", "OPENAI_PROJECT",
               "PINECONE_UPDATES_PER_SECOND"},
    "producer": {"PUSHGATEWAY_URL"},
}
# Read by libraries rather than by the project's own code.
LIBRARY_ENV = re.compile(r"^(AWS_[A-Z0-9_]+|RUST_LOG|RUST_BACKTRACE)$")

PINECONE_NAMESPACE_UPDATES_PER_SECOND = 100
MIN_SKIP_REASON = 20


# ------------------------------------------------------------- utilities
class Checks:
    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def report(self, name: str, errors: list[str], detail: str = "") -> None:
        if errors:
            self.failed += 1
            print(f"  FAIL {name}")
            for e in errors:
                print(f"         - {e}")
        else:
            self.passed += 1
            print(f"  ok   {name}" + (f": {detail}" if detail else ""))


class CfnLoader(yaml.SafeLoader):
    pass


def _cfn_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else ("Condition" if suffix == "Condition" else f"Fn::{suffix}")
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=CfnLoader)  # noqa: S506 (SafeLoader subclass)


def cfn_params(template: dict, params_file: Path) -> dict[str, str]:
    values = {k: str(v.get("Default", "")) for k, v in (template.get("Parameters") or {}).items()}
    if params_file.is_file():
        data = json.loads(params_file.read_text(encoding="utf-8"))
        if isinstance(data, list):  # create-stack format
            data = {p["ParameterKey"]: p["ParameterValue"] for p in data}
        values.update({k: str(v) for k, v in data.items()})
    return values


def resolve(value, params: dict[str, str]):
    """Resolve the parameter references of a value (pseudo parameters stay)."""
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        (k, v), = value.items()
        if k == "Ref" and v in params:
            return params[v]
        if k == "Fn::Sub":
            text, extra = (v, {}) if isinstance(v, str) else (v[0], v[1])
            return re.sub(r"\$\{([^}!]+)\}",
                          lambda m: params.get(m.group(1), str(extra.get(m.group(1), m.group(0)))),
                          text)
    return None


def k8s_index(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def deployment(docs: list[dict], name: str) -> dict | None:
    return next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name), None)


def pod_specs(docs: list[dict]):
    """(workload, pod template) of every Deployment and CronJob."""
    for d in docs:
        if d["kind"] == "Deployment":
            yield d, d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]


def matches(selector: dict, labels: dict) -> bool:
    ml = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in (ml or {}).items()):
        return False
    for e in selector.get("matchExpressions", []) or []:
        val = labels.get(e["key"])
        op = e["operator"]
        if op == "In" and val not in e.get("values", []):
            return False
        if op == "NotIn" and val in e.get("values", []):
            return False
        if op == "Exists" and e["key"] not in labels:
            return False
        if op == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def binary_of(container: dict) -> str:
    cmd = container.get("command") or ["/usr/local/bin/worker"]  # the image's entrypoint
    return Path(cmd[0]).name


def container_env(container: dict, idx: dict) -> tuple[dict[str, str | None], list[str]]:
    """Environment a container gets from the manifests: name -> literal value
    (None for secrets), plus problems (missing ConfigMaps)."""
    env: dict[str, str | None] = {}
    problems = []
    for src in container.get("envFrom", []) or []:
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            cm = idx.get(("ConfigMap", name))
            if cm is None:
                problems.append(f"container {container['name']}: ConfigMap {name} not in the manifests")
                continue
            env.update((cm.get("data") or {}).items())
        else:
            problems.append(f"container {container['name']}: envFrom {list(src)} cannot be checked")
    for e in container.get("env", []) or []:
        env[e["name"]] = e.get("value")
    return env, problems


def as_int(value, what: str, errors: list[str]) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        errors.append(f"{what} is {value!r}, not an integer")
        return None


# ---------------------------------------------------------------- checks
def check_selectors_ports(docs, idx) -> list[str]:
    errs: list[str] = []
    deps = [d for d in docs if d["kind"] == "Deployment"]
    unknown = sorted(d["metadata"]["name"] for d in deps if d["metadata"]["name"] not in (WORKER, WEBHOOK))
    if unknown:
        errs.append(f"Deployments other than {WORKER} and {WEBHOOK}: {unknown}")
    dep = deployment(docs, WORKER)
    if dep is None:
        return errs + [f"no Deployment {WORKER}"]
    tpl_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if not matches(dep["spec"]["selector"], tpl_labels):
        errs.append("Deployment selector does not match its pod template labels")
    containers = dep["spec"]["template"]["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for c in containers for p in c.get("ports", [])}
    env, _ = container_env(containers[0], idx)
    metrics_addr = env.get("METRICS_ADDR") or "0.0.0.0:9090"
    addr_port = int(metrics_addr.rsplit(":", 1)[1])
    if ports.get("metrics") != addr_port:
        errs.append(f"container port 'metrics' is {ports.get('metrics')}, METRICS_ADDR listens on {addr_port}")
    for c in containers:
        for probe in ("livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if port is not None and port not in ports and port not in ports.values():
                errs.append(f"{probe} of {c['name']} uses port {port!r}, not a container port")
    services = [d for d in docs if d["kind"] == "Service"]
    svc_for_dep = [s for s in services if matches({"matchLabels": s["spec"].get("selector", {})}, tpl_labels)]
    if not svc_for_dep:
        errs.append("no Service selects the worker pods")
    for s in svc_for_dep:
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if tp not in ports and tp not in ports.values():
                errs.append(f"Service {s['metadata']['name']} port {p.get('name')}: targetPort {tp!r} is not a worker port")
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if not monitors:
        errs.append("no ServiceMonitor")
    for m in monitors:
        sel = m["spec"]["selector"]
        picked = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
        if not picked:
            errs.append(f"ServiceMonitor {m['metadata']['name']} selects no Service")
        for ep in m["spec"]["endpoints"]:
            names = {p.get("name") for s in picked for p in s["spec"]["ports"]}
            if ep.get("port") not in names:
                errs.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a port name of {sorted(names)}")
            if ep.get("path", "/metrics") != "/metrics":
                errs.append(f"ServiceMonitor path {ep.get('path')!r} is not /metrics")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if not any(matches(p["spec"]["selector"], tpl_labels) for p in pdbs):
        errs.append("no PodDisruptionBudget selects the worker pods")
    all_pods = [d["spec"]["template"]["metadata"].get("labels", {}) for d in deps]
    for p in pdbs:
        if not any(matches(p["spec"]["selector"], labels) for labels in all_pods):
            errs.append(f"PodDisruptionBudget {p['metadata']['name']} selects no Deployment's pods")
    for so in (d for d in docs if d["kind"] == "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        if ref.get("kind", "Deployment") != "Deployment" or ref["name"] != dep["metadata"]["name"]:
            errs.append(f"ScaledObject targets {ref}, not Deployment {dep['metadata']['name']}")
        for t in so["spec"]["triggers"]:
            auth = (t.get("authenticationRef") or {}).get("name")
            if auth and ("TriggerAuthentication", auth) not in idx:
                errs.append(f"trigger authenticationRef {auth} not in the manifests")
    for w, tpl in pod_specs(docs):
        sa = tpl["spec"].get("serviceAccountName")
        if ("ServiceAccount", sa) not in idx:
            errs.append(f"{w['kind']} {w['metadata']['name']}: ServiceAccount {sa} not in the manifests")
        labels = tpl["metadata"].get("labels", {})
        nps = [n for n in docs if n["kind"] == "NetworkPolicy" and matches(n["spec"]["podSelector"], labels)]
        if not nps:
            errs.append(f"{w['kind']} {w['metadata']['name']}: no NetworkPolicy selects its pods")
        if w["kind"] == "Deployment" and w["metadata"]["name"] == WORKER:
            for n in nps:
                allowed = {p.get("port") for r in n["spec"].get("ingress", []) for p in r.get("ports", [])}
                if allowed and addr_port not in allowed and "metrics" not in allowed:
                    errs.append(f"NetworkPolicy {n['metadata']['name']} blocks the metrics port {addr_port}")
    return errs


NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def namespace_peer(peer: dict) -> str | None:
    """The namespace a NetworkPolicy peer names by its kubernetes.io/metadata.name
    label (with or without a podSelector), or None for any other peer."""
    ns = peer.get("namespaceSelector") or {}
    labels = ns.get("matchLabels") or {}
    if "ipBlock" in peer or ns.get("matchExpressions") or set(labels) != {NAMESPACE_LABEL}:
        return None
    return labels[NAMESPACE_LABEL]


def check_metrics_networkpolicy(docs, idx) -> tuple[list[str], str]:
    """The worker's metrics port is open to the monitoring namespace only, the
    same namespace the webhook receiver's policy lets Prometheus in from."""
    errs: list[str] = []
    dep = deployment(docs, WORKER)
    if dep is None:
        return [f"no Deployment {WORKER}"], ""
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    env, _ = container_env(dep["spec"]["template"]["spec"]["containers"][0], idx)
    port = int((env.get("METRICS_ADDR") or "0.0.0.0:9090").rsplit(":", 1)[1])
    nps = [n for n in docs if n["kind"] == "NetworkPolicy" and matches(n["spec"]["podSelector"], labels)]
    namespaces = set()
    for n in nps:
        name = n["metadata"]["name"]
        if "Ingress" not in n["spec"].get("policyTypes", []):
            errs.append(f"NetworkPolicy {name}: does not restrict ingress to the worker")
        for r in n["spec"].get("ingress", []) or []:
            peers = r.get("from") or []
            if not peers:
                errs.append(f"NetworkPolicy {name}: an ingress rule without 'from' opens the metrics port "
                            f"to every pod and address")
            for peer in peers:
                ns = namespace_peer(peer)
                if ns is None:
                    errs.append(f"NetworkPolicy {name}: peer {peer} is not one namespace named by "
                                f"{NAMESPACE_LABEL}")
                else:
                    namespaces.add(ns)
            ports = {p.get("port") for p in r.get("ports", []) or []}
            if ports != {port} and ports != {"metrics"}:
                errs.append(f"NetworkPolicy {name}: an ingress rule allows ports {sorted(map(str, ports))}, "
                            f"not only the metrics port {port}")
    if not nps:
        errs.append(f"no NetworkPolicy selects the {WORKER} pods")
    if len(namespaces) > 1:
        errs.append(f"the metrics port is open to several namespaces: {sorted(namespaces)}")
    webhook_ns = set()
    for n in (d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == WEBHOOK):
        for r in n["spec"].get("ingress", []) or []:
            for peer in r.get("from") or []:
                ns = namespace_peer(peer)
                if ns is not None and "ingress" not in json.dumps(peer):
                    webhook_ns.add(ns)
    if namespaces and webhook_ns and webhook_ns != namespaces:
        errs.append(f"the worker's metrics port is open to {sorted(namespaces)}, the webhook receiver's to "
                    f"{sorted(webhook_ns)}: Prometheus runs in one namespace")
    return errs, f"port {port} from namespace {', '.join(sorted(namespaces)) or '-'}"


def port_number(container: dict, port) -> int | None:
    """A container port given by name or number."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


def check_webhook(docs, idx) -> tuple[list[str], str]:
    """The OpenAI webhook receiver (producer webhook-server, issue 12)."""
    errs: list[str] = []
    dep = deployment(docs, WEBHOOK)
    if dep is None:
        return [f"no Deployment {WEBHOOK}"], ""
    tpl = dep["spec"]["template"]
    labels = tpl["metadata"].get("labels", {})
    if not matches(dep["spec"]["selector"], labels):
        errs.append(f"{WEBHOOK}: selector does not match its pod template labels")
    replicas = dep["spec"].get("replicas", 1)
    if replicas < 2:
        errs.append(f"{WEBHOOK}: replicas is {replicas}; two or more keep OpenAI's deliveries answered during a drain")
    c = tpl["spec"]["containers"][0]
    if binary_of(c) != "producer" or (c.get("args") or [None])[0] != "webhook-server":
        errs.append(f"{WEBHOOK}: container runs {c.get('command')} {c.get('args')}, not producer webhook-server")
    env, problems = container_env(c, idx)
    errs.extend(problems)
    addr = env.get("WEBHOOK_ADDR") or "0.0.0.0:8080"
    addr_port = int(addr.rsplit(":", 1)[1])
    if port_number(c, "http") != addr_port:
        errs.append(f"{WEBHOOK}: container port 'http' is {port_number(c, 'http')}, WEBHOOK_ADDR listens on {addr_port}")
    for probe in ("livenessProbe", "readinessProbe"):
        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
        if port_number(c, port) != addr_port:
            errs.append(f"{WEBHOOK}: {probe} port {port!r} is not the WEBHOOK_ADDR port {addr_port}")
    secret = [e for e in c.get("env", []) if e["name"] == "OPENAI_WEBHOOK_SECRET"]
    if not secret or "secretKeyRef" not in (secret[0].get("valueFrom") or {}) or "value" in secret[0]:
        errs.append(f"{WEBHOOK}: OPENAI_WEBHOOK_SECRET is not taken from a Secret (secretKeyRef)")
    if "OPENAI_WEBHOOK_SECRET" in {k for src in c.get("envFrom", []) if "configMapRef" in src
                                   for k in (idx.get(("ConfigMap", src["configMapRef"]["name"])) or {}).get("data", {})}:
        errs.append(f"{WEBHOOK}: OPENAI_WEBHOOK_SECRET is in a ConfigMap")
    tg = tpl["spec"].get("terminationGracePeriodSeconds", 30)
    if not tg > WEBHOOK_SHUTDOWN_GRACE_SECONDS:
        errs.append(f"{WEBHOOK}: terminationGracePeriodSeconds {tg} is not above the receiver's "
                    f"{WEBHOOK_SHUTDOWN_GRACE_SECONDS} s for requests in progress")
    # Service and Ingress.
    services = [s for s in docs if s["kind"] == "Service"
                and matches({"matchLabels": s["spec"].get("selector", {})}, labels)]
    if not services:
        errs.append(f"no Service selects the {WEBHOOK} pods")
    for s in services:
        for p in s["spec"]["ports"]:
            if port_number(c, p.get("targetPort", p["port"])) != addr_port:
                errs.append(f"Service {s['metadata']['name']} port {p.get('name')} does not reach WEBHOOK_ADDR")
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    hosts = []
    routed = False
    for ing in ingresses:
        name = ing["metadata"]["name"]
        tls_hosts = {h for t in ing["spec"].get("tls", []) or [] if t.get("secretName") for h in t.get("hosts", [])}
        for rule in ing["spec"].get("rules", []):
            for path in (rule.get("http") or {}).get("paths", []):
                svc = ((path.get("backend") or {}).get("service") or {})
                target = next((s for s in services if s["metadata"]["name"] == svc.get("name")), None)
                if target is None:
                    continue
                routed = True
                hosts.append(rule.get("host"))
                port = svc.get("port") or {}
                if not any(port.get("name") == p.get("name") or port.get("number") == p["port"]
                           for p in target["spec"]["ports"]):
                    errs.append(f"Ingress {name}: backend port {port} is not a port of Service {svc.get('name')}")
                if path.get("path") != WEBHOOK_PATH or path.get("pathType") != "Exact":
                    errs.append(f"Ingress {name}: routes {path.get('path')!r} ({path.get('pathType')}) to the "
                                f"receiver; only {WEBHOOK_PATH} (Exact) should be public")
                if not rule.get("host"):
                    errs.append(f"Ingress {name}: a rule without host")
                elif rule["host"] not in tls_hosts:
                    errs.append(f"Ingress {name}: host {rule['host']} is served without TLS (no tls entry with a secretName)")
    if not routed:
        errs.append(f"no Ingress routes {WEBHOOK_PATH} to the {WEBHOOK} Service")
    # Disruptions: a PDB that lets one go while another answers.
    pdbs = [p for p in docs if p["kind"] == "PodDisruptionBudget" and matches(p["spec"]["selector"], labels)]
    if not pdbs:
        errs.append(f"no PodDisruptionBudget selects the {WEBHOOK} pods")
    for p in pdbs:
        ma = p["spec"].get("minAvailable")
        if ma is not None and not (isinstance(ma, int) and 1 <= ma < replicas):
            errs.append(f"PodDisruptionBudget {p['metadata']['name']}: minAvailable {ma!r} must be within "
                        f"1..replicas-1 ({replicas - 1}), or drains block or take every receiver")
    # Network: only the ingress controller (and Prometheus, for /metrics) in.
    nps = [n for n in docs if n["kind"] == "NetworkPolicy" and matches(n["spec"]["podSelector"], labels)]
    if len(nps) != 1:
        errs.append(f"{len(nps)} NetworkPolicies select the {WEBHOOK} pods; expected exactly its own")
    for n in nps:
        name = n["metadata"]["name"]
        if "Ingress" not in n["spec"].get("policyTypes", []):
            errs.append(f"NetworkPolicy {name}: does not restrict ingress")
        rules = n["spec"].get("ingress", []) or []
        controller = False
        for r in rules:
            peers = r.get("from") or []
            if not peers:
                errs.append(f"NetworkPolicy {name}: an ingress rule without 'from' lets every pod and address in")
            for peer in peers:
                ns = peer.get("namespaceSelector") or {}
                pods = peer.get("podSelector") or {}
                if "ipBlock" in peer or not ns or not pods:
                    errs.append(f"NetworkPolicy {name}: peer {peer} is not one namespace's labelled pods")
                if "ingress" in json.dumps([ns, pods]):
                    controller = True
            ports = {p.get("port") for p in r.get("ports", []) or []}
            if ports != {addr_port} and ports != {"http"}:
                errs.append(f"NetworkPolicy {name}: an ingress rule allows ports {sorted(map(str, ports))}, not only {addr_port}")
        if not controller:
            errs.append(f"NetworkPolicy {name}: no ingress rule names the ingress controller")
    detail = (f"{replicas} replicas, port {addr_port}, public hosts {sorted(h for h in hosts if h)}, "
              f"{len(pdbs)} PDB, {len(nps)} NetworkPolicy")
    return errs, detail


def check_security(docs) -> list[str]:
    errs: list[str] = []
    for w, tpl in pod_specs(docs):
        who = f"{w['kind']} {w['metadata']['name']}"
        spec = tpl["spec"]
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            errs.append(f"{who}: pod securityContext.runAsNonRoot is not true")
        for c in spec["containers"] + spec.get("initContainers", []):
            cw = f"{who} container {c['name']}"
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        errs.append(f"{cw}: resources.{kind}.{r} missing")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                errs.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errs.append(f"{cw}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errs.append(f"{cw}: capabilities.drop lacks ALL")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                errs.append(f"{cw}: seccompProfile is {seccomp!r}, not RuntimeDefault")
            if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
                errs.append(f"{cw}: runs as root")
        if w["kind"] == "Deployment" and w["metadata"]["name"] == WEBHOOK:
            c = spec["containers"][0]
            for probe in ("livenessProbe", "readinessProbe"):
                if ((c.get(probe) or {}).get("httpGet") or {}).get("path") != "/healthz":
                    errs.append(f"{who}: {probe} is not GET /healthz")
        elif w["kind"] == "Deployment":
            c = spec["containers"][0]
            if ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path") != "/healthz":
                errs.append(f"{who}: livenessProbe is not GET /healthz")
            if ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path") != "/readyz":
                errs.append(f"{who}: readinessProbe is not GET /readyz")
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}):
                errs.append(f"{who}: no emptyDir mounted on /tmp (read-only root filesystem)")
            for e in c.get("env", []):
                if e["name"] in ("OPENAI_API_KEY", "PINECONE_API_KEY") and "secretKeyRef" not in (e.get("valueFrom") or {}):
                    errs.append(f"{who}: {e['name']} not from a secretKeyRef")
    return errs


def quantity_bytes(q: str) -> int | None:
    """A Kubernetes quantity ("1Gi", "512Mi", "2G", "1000") in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q).strip())
    if not m:
        return None
    unit = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * unit


# Room on the worker's /tmp beyond the download budget (the files' own rounding, anything else
# written there).
DOWNLOAD_HEADROOM_BYTES = 64 << 20


def check_download_budget(docs, worker_env) -> list[str]:
    """DOWNLOAD_BUDGET_MB (one budget per worker process, shared by its MAX_CONCURRENT_APPLIES
    applies) plus headroom fits the /tmp emptyDir the downloads go to, and the container's
    ephemeral-storage limit holds that volume: otherwise big batches finishing together get the
    pod evicted."""
    errs: list[str] = []
    budget_mb = as_int(worker_env.get("DOWNLOAD_BUDGET_MB", "1536"), "DOWNLOAD_BUDGET_MB", errs)
    applies = as_int(worker_env.get("MAX_CONCURRENT_APPLIES", "2"), "MAX_CONCURRENT_APPLIES", errs)
    if budget_mb is None or applies is None:
        return errs
    for d in docs:
        if d["kind"] != "Deployment" or d["metadata"]["name"] != "fleet-worker":
            continue
        spec = d["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp:
                continue
            size = quantity_bytes((vols.get(tmp[0]["name"], {}).get("emptyDir") or {}).get("sizeLimit", ""))
            if size is None:
                errs.append("worker /tmp emptyDir has no sizeLimit: the download budget cannot be checked")
                continue
            need = (budget_mb << 20) + DOWNLOAD_HEADROOM_BYTES
            if need > size:
                errs.append(f"DOWNLOAD_BUDGET_MB={budget_mb} (+{DOWNLOAD_HEADROOM_BYTES >> 20} MiB headroom) "
                            f"does not fit the worker's /tmp emptyDir of {size >> 20} MiB")
            limit = quantity_bytes(((c.get("resources") or {}).get("limits") or {}).get("ephemeral-storage", ""))
            if limit is not None and limit < size:
                errs.append(f"worker ephemeral-storage limit {limit >> 20} MiB is below its /tmp emptyDir {size >> 20} MiB")
    return errs


def check_keda(docs, idx, worker_env) -> list[str]:
    errs: list[str] = []
    sos = [d for d in docs if d["kind"] == "ScaledObject"]
    if len(sos) != 1:
        return [f"expected one ScaledObject, found {len(sos)}"]
    so = sos[0]["spec"]
    if so.get("minReplicaCount") != 0:
        errs.append(f"minReplicaCount is {so.get('minReplicaCount')!r}, not 0 (scale to zero)")
    triggers = [t for t in so["triggers"] if t["type"] == "aws-sqs-queue"]
    if len(triggers) != 1:
        return errs + ["expected one aws-sqs-queue trigger"]
    md = triggers[0]["metadata"]
    for k, v in md.items():
        if not isinstance(v, str):
            errs.append(f"trigger metadata {k} is {type(v).__name__} {v!r}: KEDA metadata values are strings")
    for k in ("queueURL", "queueLength", "awsRegion"):
        if k not in md:
            errs.append(f"trigger metadata {k} missing")
    if str(md.get("scaleOnInFlight")).lower() != "true":
        errs.append("scaleOnInFlight is not \"true\": in-flight messages would not count")
    ql = as_int(md.get("queueLength"), "queueLength", errs)
    mif = as_int(worker_env.get("MAX_IN_FLIGHT", "16"), "MAX_IN_FLIGHT", errs)
    if ql is not None and mif is not None and not 0 < ql <= mif:
        errs.append(f"queueLength {ql} must be within 1..MAX_IN_FLIGHT ({mif}): messages per replica")
    # PINECONE_UPDATES_PER_SECOND is a per-process ceiling of an adaptive pacing (each worker
    # finds its share of the namespace's limit), so it need not be divided by the replicas; one
    # process alone must still stay under the namespace's limit.
    rate = as_int(worker_env.get("PINECONE_UPDATES_PER_SECOND", "90"), "PINECONE_UPDATES_PER_SECOND", errs)
    if rate is not None and rate > PINECONE_NAMESPACE_UPDATES_PER_SECOND:
        errs.append(f"PINECONE_UPDATES_PER_SECOND {rate} is above Pinecone's "
                    f"{PINECONE_NAMESPACE_UPDATES_PER_SECOND} updates/s per namespace for one worker alone")
    errs += check_download_budget(docs, worker_env)
    tas = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    for ta in tas:
        pi = ta["spec"].get("podIdentity") or {}
        if pi.get("provider") != "aws":
            errs.append(f"TriggerAuthentication {ta['metadata']['name']}: podIdentity.provider is not aws")
    return errs


def check_queue_and_names(docs, idx, worker_env, common_env, cfn, params, namespace) -> tuple[list[str], str]:
    errs: list[str] = []
    res = cfn["Resources"]
    work_name = resolve(res["WorkQueue"]["Properties"]["QueueName"], params)
    dlq_name = resolve(res["DeadLetterQueue"]["Properties"]["QueueName"], params)
    so = next(d for d in docs if d["kind"] == "ScaledObject")
    md = next(t for t in so["spec"]["triggers"] if t["type"] == "aws-sqs-queue")["metadata"]
    keda_url = md.get("queueURL", "")
    queue_url = common_env.get("QUEUE_URL", "")
    dlq_url = common_env.get("DEAD_LETTER_QUEUE_URL", "")
    region = common_env.get("AWS_REGION", "")
    if keda_url != queue_url:
        errs.append(f"KEDA queueURL {keda_url} differs from QUEUE_URL {queue_url}")
    accounts = set()
    for what, url, want in (("KEDA queueURL", keda_url, work_name), ("QUEUE_URL", queue_url, work_name),
                            ("DEAD_LETTER_QUEUE_URL", dlq_url, dlq_name)):
        u = urlparse(url)
        parts = u.path.strip("/").split("/")
        if len(parts) != 2:
            errs.append(f"{what} {url!r} is not https://sqs.REGION.amazonaws.com/ACCOUNT/NAME")
            continue
        accounts.add(parts[0])
        if parts[1] != want:
            errs.append(f"{what} names queue {parts[1]!r}; the CloudFormation stack creates {want!r}")
        host_region = (u.hostname or "").split(".")[1] if (u.hostname or "").count(".") >= 2 else ""
        if host_region != region:
            errs.append(f"{what} is in region {host_region!r}, AWS_REGION is {region!r}")
    if md.get("awsRegion") != region:
        errs.append(f"KEDA awsRegion {md.get('awsRegion')!r} differs from AWS_REGION {region!r}")
    table = common_env.get("DYNAMODB_TABLE_NAME")
    if table != params.get("TableName"):
        errs.append(f"DYNAMODB_TABLE_NAME {table!r} differs from the stack's TableName {params.get('TableName')!r}")
    # Roles and service accounts.
    role_names = {k: resolve(res[k]["Properties"].get("RoleName"), params) for k in EXPECTED_ACTIONS if k in res}
    sa_param = {"WorkerRole": "WorkerServiceAccountName", "ProducerRole": "ProducerServiceAccountName"}
    # The webhook receiver is the producer binary: it runs with the producer's role.
    workloads = {"WorkerRole": [d for d in [deployment(docs, WORKER)] if d],
                 "ProducerRole": [d for d in docs if d["kind"] == "CronJob"]
                 + [d for d in [deployment(docs, WEBHOOK)] if d]}
    for role, param in sa_param.items():
        want_sa = params.get(param)
        for w in workloads[role]:
            tpl = w["spec"]["template"] if w["kind"] == "Deployment" else w["spec"]["jobTemplate"]["spec"]["template"]
            sa = tpl["spec"].get("serviceAccountName")
            if sa != want_sa:
                errs.append(f"{w['kind']} {w['metadata']['name']} runs as {sa!r}; the role {role} trusts {want_sa!r}")
        sa_doc = idx.get(("ServiceAccount", want_sa))
        if sa_doc is None:
            errs.append(f"ServiceAccount {want_sa} (stack parameter {param}) not in the manifests")
            continue
        arn = (sa_doc["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
        m = re.fullmatch(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/(.+)", arn)
        if not m:
            errs.append(f"ServiceAccount {want_sa}: eks.amazonaws.com/role-arn {arn!r} is not a role ARN")
            continue
        accounts.add(m.group(1))
        if m.group(2) != role_names.get(role):
            errs.append(f"ServiceAccount {want_sa} uses role {m.group(2)!r}; the stack's {role} is {role_names.get(role)!r}")
    if namespace != params.get("KubernetesNamespace"):
        errs.append(f"overlay namespace {namespace!r} differs from the stack's KubernetesNamespace "
                    f"{params.get('KubernetesNamespace')!r} (IRSA trust would fail)")
    for ta in (d for d in docs if d["kind"] == "TriggerAuthentication"):
        arn = (ta["spec"].get("podIdentity") or {}).get("roleArn")
        if arn:
            if not params.get("KedaOperatorRoleArn"):
                errs.append("TriggerAuthentication assumes a role, but the stack creates no KedaScalerRole "
                            "(KedaOperatorRoleArn empty)")
            m = re.fullmatch(r"arn:aws[a-z-]*:iam::([0-9]{12}):role/(.+)", arn)
            if not m or m.group(2) != role_names.get("KedaScalerRole"):
                errs.append(f"TriggerAuthentication roleArn {arn!r} is not the stack's KedaScalerRole "
                            f"{role_names.get('KedaScalerRole')!r}")
            else:
                accounts.add(m.group(1))
    if len(accounts) > 1:
        errs.append(f"several AWS accounts named: {sorted(accounts)}")
    placeholder = [a for a in accounts if a == "000000000000"]
    if placeholder:
        errs.append("base placeholder account 000000000000 left in the overlay")
    detail = f"queue {work_name}, dead-letter queue {dlq_name}, table {table}, region {region}, namespace {namespace}"
    return errs, detail


def check_timing(docs, worker_env, cfn, params) -> tuple[list[str], str]:
    errs: list[str] = []
    dep = deployment(docs, WORKER)
    if dep is None:
        return [f"no Deployment {WORKER}"], ""
    tg = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    sg = as_int(worker_env.get("SHUTDOWN_GRACE_SECONDS", "25"), "SHUTDOWN_GRACE_SECONDS", errs)
    vw = as_int(worker_env.get("VISIBILITY_TIMEOUT_SECONDS", "120"), "VISIBILITY_TIMEOUT_SECONDS", errs)
    hb = as_int(worker_env.get("HEARTBEAT_SECONDS", "30"), "HEARTBEAT_SECONDS", errs)
    res = cfn["Resources"]
    vq = as_int(resolve(res["WorkQueue"]["Properties"].get("VisibilityTimeout", 30), params),
                "CloudFormation WorkQueue VisibilityTimeout", errs)
    if None in (sg, vw, hb, vq):
        return errs, ""
    if not sg < tg:
        errs.append(f"SHUTDOWN_GRACE_SECONDS {sg} is not below terminationGracePeriodSeconds {tg}: "
                    "the kubelet would kill a draining worker")
    if not tg < vq:
        errs.append(f"terminationGracePeriodSeconds {tg} is not below the queue's VisibilityTimeout {vq}")
    if not tg < vw:
        errs.append(f"terminationGracePeriodSeconds {tg} is not below VISIBILITY_TIMEOUT_SECONDS {vw}")
    if not sg < vw:
        errs.append(f"SHUTDOWN_GRACE_SECONDS {sg} is not below VISIBILITY_TIMEOUT_SECONDS {vw}")
    if vw != vq:
        errs.append(f"VISIBILITY_TIMEOUT_SECONDS {vw} differs from the queue's VisibilityTimeout {vq}")
    if not 2 * hb <= vw:
        errs.append(f"HEARTBEAT_SECONDS {hb} is over half of VISIBILITY_TIMEOUT_SECONDS {vw}: "
                    "a late renewal would let the message reappear")
    rmin = as_int(worker_env.get("RECHECK_MIN_SECONDS", "60"), "RECHECK_MIN_SECONDS", errs)
    rmax = as_int(worker_env.get("RECHECK_MAX_SECONDS", "900"), "RECHECK_MAX_SECONDS", errs)
    if rmin is not None and rmax is not None and rmin > rmax:
        errs.append(f"RECHECK_MIN_SECONDS {rmin} above RECHECK_MAX_SECONDS {rmax}")
    wr = as_int(resolve(res["WorkQueue"]["Properties"].get("MessageRetentionPeriod", 345600), params),
                "WorkQueue MessageRetentionPeriod", errs)
    dr = as_int(resolve(res["DeadLetterQueue"]["Properties"].get("MessageRetentionPeriod", 345600), params),
                "DeadLetterQueue MessageRetentionPeriod", errs)
    if wr is not None and dr is not None and not dr > wr:
        errs.append(f"dead-letter retention {dr} s is not longer than the work queue's {wr} s")
    for cj in (d for d in docs if d["kind"] == "CronJob" and not d["spec"].get("suspend")):
        name = cj["metadata"]["name"]
        m = re.fullmatch(r"\*/([0-9]+) \* \* \* \*", cj["spec"]["schedule"])
        if not m:
            errs.append(f"CronJob {name}: schedule {cj['spec']['schedule']!r} is not every N minutes")
            continue
        period = int(m.group(1)) * 60
        if cj["spec"].get("concurrencyPolicy") != "Forbid":
            errs.append(f"CronJob {name}: concurrencyPolicy is not Forbid")
        sd = cj["spec"].get("startingDeadlineSeconds")
        if sd is None or not sd < period:
            errs.append(f"CronJob {name}: startingDeadlineSeconds {sd} not below the period {period}")
        js = cj["spec"]["jobTemplate"]["spec"]
        ad = js.get("activeDeadlineSeconds")
        if ad is None or not ad < period:
            errs.append(f"CronJob {name}: activeDeadlineSeconds {ad} not below the period {period}: runs would overlap")
        if js.get("backoffLimit", 6) > 3:
            errs.append(f"CronJob {name}: backoffLimit {js.get('backoffLimit', 6)} is not small")
    detail = (f"SHUTDOWN_GRACE_SECONDS {sg} < terminationGracePeriodSeconds {tg} < "
              f"VisibilityTimeout {vq} = VISIBILITY_TIMEOUT_SECONDS {vw}; heartbeat {hb}")
    return errs, detail


# ------------------------------------------------------------- env vars
def parse_interface(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    names: set[str] = set()
    in_env = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            in_env = line.strip().lower().startswith("## environment")
            continue
        if in_env and line.startswith("|"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return names or None


ATTR_FIELD = re.compile(
    r"#\[(?:arg|clap)\(((?:[^\[\]]|\[[^\]]*\])*)\)\]\s*"      # #[arg(...)]
    r"(?:(?:#\[[^\n]*\]|///[^\n]*)\s*)*"                       # more attributes / doc comments
    r"(?:pub(?:\([^)]*\))?\s+)?([a-z_][a-z0-9_]*)\s*:",        # field
    re.S)


def scan_rust_env(dirs: list[Path]) -> set[str]:
    names: set[str] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*.rs")):
            text = f.read_text(encoding="utf-8", errors="replace")
            names.update(re.findall(r"\benv\s*=\s*\"([A-Z][A-Z0-9_]*)\"", text))
            names.update(re.findall(r"\b(?:var|var_os|env)!?\s*\(\s*\"([A-Z][A-Z0-9_]*)\"", text))
            for m in ATTR_FIELD.finditer(text):
                if re.search(r"(?<![A-Za-z_])env(?![A-Za-z_=])(?!\s*=)", m.group(1)):
                    names.add(m.group(2).upper())
            stem = f.stem.lower()
            if any(k in stem for k in ("config", "cli", "settings", "args", "env")) or f.name == "main.rs":
                names.update(re.findall(r"\"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\"", text))
    return names


def check_env(docs, idx, repo_root: Path, interface: Path) -> tuple[list[str], str]:
    errs: list[str] = []
    documented = parse_interface(interface)
    doc_source = f"{interface}" if documented else "embedded copy of interface.md's list"
    documented = documented or DOCUMENTED_ENV
    used: dict[str, set[str]] = {}
    for w, tpl in pod_specs(docs):
        for c in tpl["spec"]["containers"]:
            env, problems = container_env(c, idx)
            errs.extend(problems)
            used.setdefault(binary_of(c), set()).update(env)
    details = []
    for binary, names in sorted(used.items()):
        if binary not in EXTRA_ENV:
            errs.append(f"a container runs {binary!r}, which is neither worker nor producer")
            continue
        src_dirs = [repo_root / "shared" / "src", repo_root / binary / "src"]
        from_src = scan_rust_env(src_dirs)
        from_docs = documented | EXTRA_ENV[binary]
        via_src, via_lib, via_doc = [], [], []
        for n in sorted(names):
            if n in from_src:
                via_src.append(n)
            elif LIBRARY_ENV.match(n):
                via_lib.append(n)
            elif n in from_docs:
                via_doc.append(n)
            else:
                errs.append(f"{binary}: {n} is set in the manifests but read by neither the Rust sources "
                            f"(shared/src, {binary}/src) nor documented (interface.md + issue 6)")
        src_note = (f"Rust sources mention {len(from_src)} env name(s)" if from_src
                    else "Rust sources mention no env name yet")
        details.append(f"{binary}: {len(names)} names; {len(via_src)} read in the Rust sources, "
                       f"{len(via_lib)} by libraries (AWS SDK, tracing), {len(via_doc)} from the documented "
                       f"list [{src_note}; list: {doc_source} + issue 6 extras]"
                       + (f"; documented only: {', '.join(via_doc)}" if via_doc and from_src else ""))
    return errs, "\n         ".join([""] + details)


# --------------------------------------------------------- CloudFormation
def policy_resource_key(resource) -> str | None:
    """The resource a statement names: a queue's logical id, "table", or
    "index/NAME" ("index/*" for every index)."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return resource["Fn::GetAtt"][0]
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"] if isinstance(resource["Fn::Sub"], str) else resource["Fn::Sub"][0]
        m = re.search(r":table/\$\{TableName\}/index/([A-Za-z0-9_.*-]+)$", text.strip())
        if m:
            return f"index/{m.group(1)}"
        if re.search(r":table/\$\{TableName\}$", text.strip()):
            return "table"
    return None


def leading_keys(role: str, sid: str, condition, errs: list[str]) -> list[str] | None:
    """The LeadingKeys prefixes of a table statement's condition, or None
    (with the reason in errs) when it does not limit every key a request names."""
    where = f"{role} statement {sid}"
    if not condition:
        errs.append(f"{where} on the table has no {LEADING_KEYS} condition: it reaches every item of the "
                    f"shared table (add {LEADING_KEYS_OPERATOR} {LEADING_KEYS} with the key prefixes it uses)")
        return None
    ops = {op: keys for op, keys in condition.items() if isinstance(keys, dict) and LEADING_KEYS in keys}
    if set(ops) != {LEADING_KEYS_OPERATOR}:
        if any(op.startswith("ForAnyValue:") for op in ops):
            errs.append(f"{where}: {LEADING_KEYS} under ForAnyValue lets a BatchWriteItem or BatchGetItem "
                        f"through when one key matches; use {LEADING_KEYS_OPERATOR}")
        else:
            errs.append(f"{where}: condition {sorted(condition)} does not limit {LEADING_KEYS} with "
                        f"{LEADING_KEYS_OPERATOR}")
        return None
    other = sorted(set(condition) - {LEADING_KEYS_OPERATOR}) + sorted(
        k for k in condition[LEADING_KEYS_OPERATOR] if k != LEADING_KEYS)
    if other:
        errs.append(f"{where}: unexpected condition keys {other} beside {LEADING_KEYS}")
    values = condition[LEADING_KEYS_OPERATOR][LEADING_KEYS]
    values = values if isinstance(values, list) else [values]
    bad = [v for v in values if not isinstance(v, str) or not LEADING_KEY_PATTERN.match(v)]
    if bad or not values:
        errs.append(f"{where}: {LEADING_KEYS} values {bad or values} are not key prefixes like \"BATCH#*\"")
        return None
    return sorted(values)


def check_iam(cfn, params) -> list[str]:
    errs: list[str] = []
    res = cfn["Resources"]
    for role, expected in EXPECTED_ACTIONS.items():
        r = res.get(role)
        if not r or r.get("Type") != "AWS::IAM::Role":
            errs.append(f"{role}: no such AWS::IAM::Role")
            continue
        got: dict[str, set[str]] = {}
        for pol in r["Properties"].get("Policies", []):
            for i, st in enumerate(pol["PolicyDocument"]["Statement"]):
                sid = st.get("Sid") or f"#{i}"
                if st.get("Effect") != "Allow":
                    continue
                if "NotAction" in st or "NotResource" in st:
                    errs.append(f"{role} statement {sid}: NotAction/NotResource grants more than it names")
                    continue
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                for a in acts:
                    svc, _, name = a.partition(":")
                    if "*" in a:
                        errs.append(f"{role}: wildcard action {a}")
                    elif name not in VALID_ACTIONS.get(svc, set()):
                        errs.append(f"{role}: {a} is not a valid {svc or '?'} action")
                keys = [policy_resource_key(rs) for rs in resources]
                for rs, key in zip(resources, keys):
                    if key is None:
                        errs.append(f"{role}: resource {rs!r} is not one of this stack's queues, table or indexes")
                    elif key == "index/*":
                        errs.append(f"{role} statement {sid}: resource names every index (index/*); name the "
                                    f"indexes the binary queries")
                keys = [k for k in keys if k is not None and k != "index/*"]
                if "table" in keys and len(keys) > 1:
                    errs.append(f"{role} statement {sid}: names the table beside {sorted(set(keys) - {'table'})}; "
                                f"keep the table's leading-key statement apart")
                    continue
                if "table" in keys:
                    prefixes = leading_keys(role, sid, st.get("Condition"), errs)
                    if prefixes is None:
                        continue
                    keys = [f"table[{','.join(prefixes)}]"]
                for key in keys:
                    got.setdefault(key, set()).update(acts)
        for key in sorted(set(expected) | set(got)):
            extra = got.get(key, set()) - expected.get(key, set())
            missing = expected.get(key, set()) - got.get(key, set())
            if extra:
                errs.append(f"{role} on {key}: actions beyond what the binary calls: {sorted(extra)}")
            if missing:
                errs.append(f"{role} on {key}: actions the binary calls are missing: {sorted(missing)}")
        trust = r["Properties"]["AssumeRolePolicyDocument"]
        if role in ("WorkerRole", "ProducerRole"):
            text = trust.get("Fn::Sub") if isinstance(trust, dict) else None
            if not isinstance(text, str):
                errs.append(f"{role}: trust policy is not the IRSA JSON (Fn::Sub string)")
                continue
            doc = json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", text))
            st = doc["Statement"]
            sa = "WorkerServiceAccountName" if role == "WorkerRole" else "ProducerServiceAccountName"
            want_sub = f"system:serviceaccount:<KubernetesNamespace>:<{sa}>"
            ok = (len(st) == 1 and st[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
                  and st[0]["Condition"]["StringEquals"].get("<OidcProviderIssuer>:sub") == want_sub
                  and st[0]["Condition"]["StringEquals"].get("<OidcProviderIssuer>:aud") == "sts.amazonaws.com")
            if not ok:
                errs.append(f"{role}: trust policy does not pin {want_sub} and audience sts.amazonaws.com")
    return errs


def check_table(cfn) -> list[str]:
    errs: list[str] = []
    t = cfn["Resources"].get("ReceiptsTable")
    if not t:
        return ["no ReceiptsTable"]
    if t.get("Condition") is None:
        errs.append("ReceiptsTable is not behind a Condition (CreateTable)")
    p = t["Properties"]
    attrs = {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]}
    want_attrs = {"PK", "SK", "TYPE"} | {f"GSI{i}{k}" for i in range(1, 5) for k in ("PK", "SK")}
    if attrs != {a: "S" for a in want_attrs}:
        errs.append(f"attribute definitions {attrs} are not the string keys {sorted(want_attrs)}")
    if [(k["AttributeName"], k["KeyType"]) for k in p["KeySchema"]] != [("PK", "HASH"), ("SK", "RANGE")]:
        errs.append("key is not PK (hash) + SK (range)")
    want_gsis = {f"GSI{i}": [(f"GSI{i}PK", "HASH"), (f"GSI{i}SK", "RANGE")] for i in range(1, 5)}
    want_gsis["GSITYPE"] = [("TYPE", "HASH")]
    got = {}
    for g in p.get("GlobalSecondaryIndexes", []):
        got[g["IndexName"]] = [(k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]]
        if g.get("Projection", {}).get("ProjectionType") != "ALL":
            errs.append(f"index {g['IndexName']} does not project ALL")
    if got != want_gsis:
        errs.append(f"indexes {got} differ from data-model.md's {want_gsis}")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        errs.append("billing is not PAY_PER_REQUEST (on demand)")
    if (p.get("StreamSpecification") or {}).get("StreamViewType") != "NEW_AND_OLD_IMAGES":
        errs.append("stream is not NEW_AND_OLD_IMAGES")
    ttl = p.get("TimeToLiveSpecification") or {}
    if ttl.get("AttributeName") != "time_to_live" or ttl.get("Enabled") is not True:
        errs.append("TTL attribute is not time_to_live (enabled)")
    if (p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is not True:
        errs.append("point-in-time recovery is not enabled")
    return errs


def check_queues(cfn, params) -> list[str]:
    errs: list[str] = []
    res = cfn["Resources"]
    wq, dq = res["WorkQueue"]["Properties"], res["DeadLetterQueue"]["Properties"]
    rp = wq.get("RedrivePolicy") or {}
    if rp.get("deadLetterTargetArn") != {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}:
        errs.append("WorkQueue RedrivePolicy does not target DeadLetterQueue")
    mrc = resolve(rp.get("maxReceiveCount"), params)
    if not mrc or not mrc.isdigit() or int(mrc) < 2:
        errs.append(f"maxReceiveCount {mrc!r} must be at least 2 (transient errors are retried)")
    rap = dq.get("RedriveAllowPolicy") or {}
    srcs = [resolve(s, params) for s in rap.get("sourceQueueArns", [])]
    work_name = resolve(wq["QueueName"], params)
    if rap.get("redrivePermission") != "byQueue" or len(srcs) != 1 or not (srcs[0] or "").endswith(f":{work_name}"):
        errs.append(f"DeadLetterQueue RedriveAllowPolicy does not allow exactly the work queue {work_name}: {srcs}")
    if resolve(wq.get("MessageRetentionPeriod"), params) != "345600":
        errs.append("work queue retention is not 4 days (345600 s)")
    if resolve(dq.get("MessageRetentionPeriod"), params) != "1209600":
        errs.append("dead-letter queue retention is not 14 days (1209600 s)")
    return errs


def check_params(cfn, params_file: Path) -> tuple[list[str], str]:
    """The example parameters exist in the template and meet its constraints."""
    errs: list[str] = []
    decl = cfn.get("Parameters") or {}
    if not params_file.is_file():
        return [f"{params_file} missing"], ""
    data = json.loads(params_file.read_text(encoding="utf-8"))
    given = {p["ParameterKey"]: p["ParameterValue"] for p in data} if isinstance(data, list) else data
    for k, v in given.items():
        d = decl.get(k)
        if d is None:
            errs.append(f"{k}: no such parameter in the template")
            continue
        v = str(v)
        if "AllowedValues" in d and v not in [str(x) for x in d["AllowedValues"]]:
            errs.append(f"{k}={v!r} not in {d['AllowedValues']}")
        if "AllowedPattern" in d and not re.fullmatch(d["AllowedPattern"], v):
            errs.append(f"{k}={v!r} does not match {d['AllowedPattern']}")
        if d.get("Type") == "Number":
            try:
                n = float(v)
            except ValueError:
                errs.append(f"{k}={v!r} is not a number")
                continue
            if "MinValue" in d and n < float(d["MinValue"]) or "MaxValue" in d and n > float(d["MaxValue"]):
                errs.append(f"{k}={v} outside {d.get('MinValue')}..{d.get('MaxValue')}")
    for k, d in decl.items():
        if "Default" not in d and k not in given:
            errs.append(f"{k}: required by the template, missing from {params_file.name}")
    return errs, f"{len(given)} parameters of {params_file.name}"


# ----------------------------------------------------------------- alerts
def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def check_alerts(docs, readme: Path, repo_root: Path) -> tuple[list[str], str]:
    errs: list[str] = []
    kinds, bucketed, notes = scan_exported(repo_root)
    exported = series_names(kinds, bucketed)
    if not kinds:
        errs.append(f"no fleet_ metric found in the Rust sources under {repo_root}: cannot check the alerts")
    errs.extend(f"metric scan: {n}" for n in notes)
    rules = [r for d in docs if d["kind"] == "PrometheusRule"
             for g in d["spec"]["groups"] for r in g["rules"] if "alert" in r]
    names = {r["alert"] for r in rules}
    for a, what in REQUIRED_ALERTS.items():
        if a not in names:
            errs.append(f"alert {a} ({what}) missing")
    anchors = set()
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^#{1,6}\s+(.*)$", line)
            if m:
                anchors.add(slug(m.group(1)))
    else:
        errs.append(f"{readme} missing (runbooks)")
    for r in rules:
        errs.extend(check_expr(r["expr"], exported, f"alert {r['alert']}"))
        url = (r.get("annotations") or {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        if readme.is_file() and anchor not in anchors:
            errs.append(f"alert {r['alert']}: runbook anchor #{anchor} is no heading of {readme.name}")
    return errs, (f"{len(rules)} alerts, each with a runbook section; metrics checked against the "
                  f"{len(kinds)} the Rust sources record")


# -------------------------------------------------------------- Dockerfile
FROM_LINE = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.I)
PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(?::[0-9]+)?/?[a-z0-9._/-]*:[A-Za-z0-9._-]+@sha256:([0-9a-f]{64})$")


def dockerfile_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def check_dockerfile(deploy_dir: Path, docs, idx) -> tuple[list[str], str]:
    """Every base image pinned by digest (name:tag@sha256:...), and the image
    exposes the ports the manifests listen on."""
    errs: list[str] = []
    path = deploy_dir / "Dockerfile"
    lines = dockerfile_lines(path.read_text(encoding="utf-8"))
    stages: set[str] = set()
    bases = []
    exposed: set[int] = set()
    for line in lines:
        word = line.split(None, 1)[0].upper()
        if word == "FROM":
            m = FROM_LINE.match(line)
            if not m:
                errs.append(f"Dockerfile: cannot read {line!r}")
                continue
            image, alias = m.group(1), m.group(2)
            if image.lower() in stages:
                pass  # an earlier stage of this file
            elif "$" in image:
                errs.append(f"Dockerfile: FROM {image} takes the image from a build argument; "
                            f"name it pinned (name:tag@sha256:...) so the check can see it")
            elif not PINNED_IMAGE.match(image):
                errs.append(f"Dockerfile: base image {image} is not pinned by digest (name:tag@sha256:<64 hex>): "
                            f"a tag moves when the image is rebuilt")
            elif len(set(PINNED_IMAGE.match(image).group(1))) == 1:
                errs.append(f"Dockerfile: base image {image} carries a placeholder digest")
            else:
                bases.append(image.split("@")[0])
            if alias:
                stages.add(alias.lower())
        elif word == "EXPOSE":
            for tok in line.split()[1:]:
                num = tok.split("/")[0]
                if num.isdigit():
                    exposed.add(int(num))
                else:
                    errs.append(f"Dockerfile: EXPOSE {tok} is not a port number")
    want = {}
    for cm_name, var, default in (("fleet-worker", "METRICS_ADDR", "0.0.0.0:9090"),
                                  ("fleet-webhook", "WEBHOOK_ADDR", "0.0.0.0:8080")):
        # configMapGenerator names carry a hash suffix: fleet-worker-<hash>.
        cm = next((d for d in docs if d["kind"] == "ConfigMap"
                   and re.fullmatch(re.escape(cm_name) + r"(-[a-z0-9]+)?", d["metadata"]["name"])), None)
        addr = ((cm or {}).get("data") or {}).get(var) or default
        want[var] = int(addr.rsplit(":", 1)[1])
    for var, port in want.items():
        if port not in exposed:
            errs.append(f"Dockerfile: port {port} ({var}) is not EXPOSEd (EXPOSE {' '.join(map(str, sorted(exposed)))})")
    detail = (f"{len(bases)} base image(s) pinned by digest ({', '.join(bases)}); "
              f"EXPOSE {' '.join(map(str, sorted(exposed)))}")
    return errs, detail


# ------------------------------------------------------------ checkov skips
def check_skips(deploy_dir: Path, docs, cfn) -> tuple[list[str], str]:
    errs: list[str] = []
    n = 0
    dockerfile = deploy_dir / "Dockerfile"
    for m in re.finditer(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", dockerfile.read_text(encoding="utf-8")):
        n += 1
        if len((m.group(2) or "").strip()) < MIN_SKIP_REASON:
            errs.append(f"Dockerfile: skip of {m.group(1)} has no real reason")
    for d in docs:
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k.startswith("checkov.io/skip"):
                n += 1
                cid, _, reason = str(v).partition("=")
                if len(reason.strip()) < MIN_SKIP_REASON:
                    errs.append(f"{d['kind']} {d['metadata']['name']}: skip of {cid} has no real reason")
    for name, r in cfn["Resources"].items():
        for s in (((r.get("Metadata") or {}).get("checkov") or {}).get("skip") or []):
            n += 1
            if len(str(s.get("comment", "")).strip()) < MIN_SKIP_REASON:
                errs.append(f"{name}: skip of {s.get('id')} has no real reason")
    for f in sorted((deploy_dir / "k8s").rglob("*.yaml")):
        if "checkov:skip" in f.read_text(encoding="utf-8"):
            errs.append(f"{f.relative_to(deploy_dir)}: comment skips are lost by kustomize; use checkov.io/skip annotations")
    return errs, f"{n} skips, each with its reason"


# ------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deploy-dir", required=True, type=Path)
    ap.add_argument("--rendered", required=True, type=Path)
    ap.add_argument("--repo-root", required=True, type=Path)
    ap.add_argument("--interface", type=Path)
    a = ap.parse_args()
    interface = a.interface or (a.repo_root / "docs" / "spec" / "interface.md")

    docs = [d for d in yaml.safe_load_all(a.rendered.read_text(encoding="utf-8")) if d]
    idx = k8s_index(docs)
    template_path = a.deploy_dir / "cloudformation" / "fleet.yaml"
    cfn = load_cfn(template_path)
    params = cfn_params(cfn, a.deploy_dir / "cloudformation" / "parameters.example.json")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] not in ("Namespace",)}
    namespace = namespaces.pop() if len(namespaces) == 1 else None

    dep = deployment(docs, WORKER)
    worker_env, _ = container_env(dep["spec"]["template"]["spec"]["containers"][0], idx) if dep else ({}, [])
    common = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("fleet-common")), None)
    common_env = (common or {}).get("data") or {}

    c = Checks()
    c.report("selectors and ports (Deployment, Service, ServiceMonitor, PDB, ScaledObject, NetworkPolicy)",
             check_selectors_ports(docs, idx))
    c.report("pod security, probes, requests and limits of every container", check_security(docs))
    c.report("KEDA trigger (string metadata, scale to zero, in-flight counted, per-replica target)",
             check_keda(docs, idx, worker_env))
    errs, detail = check_queue_and_names(docs, idx, worker_env, common_env, cfn, params, namespace)
    c.report("KEDA queue and settings name the CloudFormation queues, table, roles and namespace", errs, detail)
    errs, detail = check_metrics_networkpolicy(docs, idx)
    c.report("metrics port open only to the monitoring namespace (NetworkPolicy)", errs, detail)
    errs, detail = check_webhook(docs, idx)
    c.report("webhook receiver: replicas, probes, secret, Service, Ingress with TLS, PDB, NetworkPolicy", errs, detail)
    errs, detail = check_timing(docs, worker_env, cfn, params)
    c.report("grace period < terminationGracePeriodSeconds < visibility timeout; CronJob timing", errs, detail)
    errs, detail = check_env(docs, idx, a.repo_root, interface)
    c.report("every env var in the manifests is one the binaries read", errs, detail)
    c.report("IAM: exactly the actions each binary calls, on this stack's resources, table items by "
             "leading key (dynamodb:LeadingKeys), indexes by name; IRSA trust",
             check_iam(cfn, params))
    c.report("queues: redrive, redrive allow policy, retention", check_queues(cfn, params))
    errs, detail = check_params(cfn, a.deploy_dir / "cloudformation" / "parameters.example.json")
    c.report("example stack parameters meet the template's constraints", errs, detail)
    c.report("receipts table: keys and indexes of data-model.md", check_table(cfn))
    errs, detail = check_alerts(docs, a.deploy_dir / "README.md", a.repo_root)
    c.report("alerts: required ones present, known metrics and labels, runbooks", errs, detail)
    errs, detail = check_dockerfile(a.deploy_dir, docs, idx)
    c.report("Dockerfile: base images pinned by digest, the listening ports exposed", errs, detail)
    errs, detail = check_skips(a.deploy_dir, docs, cfn)
    c.report("checkov skips are justified inline", errs, detail)
    print(f"  crosscheck summary: {c.passed} of {c.passed + c.failed} checks ok")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
