#!/usr/bin/env python3
"""Helpers of deploy/check.sh for rendered Kubernetes manifests.

  k8s_tools.py split RENDERED BUILTIN_OUT CUSTOM_OUT
      Split `kustomize build` output into built-in resources (for
      kubernetes-validate) and the custom resources this project uses
      (ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule).
      Any other apiVersion/kind stays with the built-ins, where
      kubernetes-validate rejects it if it does not know it.

  k8s_tools.py crds CUSTOM_FILE CRDS_DIR
      Validate the custom resources against the CRD schemas in CRDS_DIR
      (strict: unknown fields are errors, as with kubectl --validate=strict)
      and PrometheusRule, which has no schema there, structurally.
      CRDS_DIR may be absent: then the schema part is skipped with a notice.

Exit status: 0 all good, 1 a finding, 2 usage or unreadable input.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def dump_docs(path: str, docs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def ident(doc: dict) -> str:
    md = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{md.get('name')}"


def cmd_split(rendered: str, builtin_out: str, custom_out: str) -> int:
    docs = load_docs(rendered)
    builtin, custom = [], []
    for d in docs:
        (custom if (d.get("apiVersion"), d.get("kind")) in CUSTOM_KINDS else builtin).append(d)
    dump_docs(builtin_out, builtin)
    dump_docs(custom_out, custom)
    print(f"{len(builtin)} built-in, {len(custom)} custom resources")
    return 0


# ------------------------------------------------------------------ schemas
def strict(schema: object) -> object:
    """OpenAPI v3 (CRD structural schema) -> JSON schema that rejects unknown
    fields, as the API server's strict field validation does."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_schemas(crds_dir: Path) -> dict[tuple[str, str], dict]:
    schemas: dict[tuple[str, str], dict] = {}
    for p in sorted(crds_dir.iterdir()):
        if p.suffix in (".yaml", ".yml"):
            for crd in yaml.safe_load_all(p.read_text(encoding="utf-8")):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    s = v.get("schema", {}).get("openAPIV3Schema")
                    if s:
                        schemas[(f"{group}/{v['name']}", kind)] = s
        elif p.suffix == ".json":
            s = json.loads(p.read_text(encoding="utf-8"))
            # datreeio CRDs-catalog file names: <kind>_<version>.json
            m = re.fullmatch(r"([a-z]+)_(v[0-9a-z]+)\.json", p.name)
            if m and m.group(1) == "servicemonitor":
                schemas[(f"monitoring.coreos.com/{m.group(2)}", "ServiceMonitor")] = s
    out = {}
    for key, s in schemas.items():
        s = copy.deepcopy(s)
        s.pop("$schema", None)
        props = s.setdefault("properties", {})
        # Every object needs a name; the CRD schemas leave metadata open.
        string_map = {"type": "object", "additionalProperties": {"type": "string"}}
        props["metadata"] = {
            "type": "object",
            "required": ["name"],
            "additionalProperties": True,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "namespace": {"type": "string"},
                "labels": string_map,
                "annotations": string_map,
            },
        }
        out[key] = strict(s)
    return out


def check_against_schemas(docs: list[dict], crds_dir: Path) -> list[str]:
    errors: list[str] = []
    schemas = load_schemas(crds_dir)
    checked = 0
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key[1] == "PrometheusRule":
            continue
        schema = schemas.get(key)
        if schema is None:
            errors.append(f"{ident(d)}: no schema for {key[0]} {key[1]} in {crds_dir}")
            continue
        checked += 1
        for e in sorted(Draft7Validator(schema).iter_errors(d), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(x) for x in e.absolute_path) or "(root)"
            errors.append(f"{ident(d)}: {where}: {e.message}")
    print(f"  {checked} resource(s) validated against the CRD schemas in {crds_dir}")
    return errors


# ----------------------------------------------------------- PrometheusRule
DURATION = re.compile(r"^(([0-9]+)(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_str = None
    for ch in expr:
        if in_str:
            if ch == in_str:
                in_str = None
            continue
        if ch in "\"'`":
            in_str = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and in_str is None


def check_prometheus_rule(d: dict) -> list[str]:
    errs: list[str] = []
    who = ident(d)
    spec = d.get("spec")
    allowed_top = {"apiVersion", "kind", "metadata", "spec"}
    for k in d:
        if k not in allowed_top:
            errs.append(f"{who}: unknown top-level field {k!r}")
    if not isinstance(spec, dict) or set(spec) - {"groups"}:
        return errs + [f"{who}: spec must be an object with only `groups`"]
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        return errs + [f"{who}: spec.groups must be a non-empty list"]
    names = set()
    alerts = set()
    group_fields = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
    rule_fields = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for gi, g in enumerate(groups):
        where = f"{who}: spec.groups[{gi}]"
        if not isinstance(g, dict):
            errs.append(f"{where}: not an object")
            continue
        for k in set(g) - group_fields:
            errs.append(f"{where}: unknown field {k!r}")
        name = g.get("name")
        if not isinstance(name, str) or not name:
            errs.append(f"{where}: name missing")
        elif name in names:
            errs.append(f"{where}: duplicate group name {name!r}")
        names.add(name)
        if "interval" in g and not DURATION.match(str(g["interval"])):
            errs.append(f"{where}: interval {g['interval']!r} is not a duration")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            errs.append(f"{where}: rules must be a non-empty list")
            continue
        for ri, r in enumerate(rules):
            rw = f"{where}.rules[{ri}]"
            if not isinstance(r, dict):
                errs.append(f"{rw}: not an object")
                continue
            for k in set(r) - rule_fields:
                errs.append(f"{rw}: unknown field {k!r}")
            if ("alert" in r) == ("record" in r):
                errs.append(f"{rw}: needs exactly one of alert/record")
            expr = r.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errs.append(f"{rw}: expr must be a non-empty string")
            elif not balanced(expr):
                errs.append(f"{rw}: expr has unbalanced brackets or quotes")
            for k in ("for", "keep_firing_for"):
                if k in r and not DURATION.match(str(r[k])):
                    errs.append(f"{rw}: {k} {r[k]!r} is not a duration")
            for k in ("labels", "annotations"):
                v = r.get(k, {})
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    errs.append(f"{rw}: {k} must map names to strings")
            if "alert" in r:
                a = r["alert"]
                if not isinstance(a, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", a):
                    errs.append(f"{rw}: alert name {a!r} is not a valid identifier")
                if a in alerts:
                    errs.append(f"{rw}: duplicate alert {a!r}")
                alerts.add(a)
                if (r.get("labels") or {}).get("severity") not in SEVERITIES:
                    errs.append(f"{rw}: labels.severity must be one of {sorted(SEVERITIES)}")
                ann = r.get("annotations") or {}
                for k in ("summary", "description", "runbook_url"):
                    if not ann.get(k):
                        errs.append(f"{rw}: annotations.{k} missing")
    return errs


def cmd_crds(custom_file: str, crds_dir: str) -> int:
    docs = load_docs(custom_file)
    errors: list[str] = []
    d = Path(crds_dir)
    if d.is_dir():
        errors += check_against_schemas(docs, d)
    else:
        print(f"  NOTICE: {crds_dir} not found: ScaledObject, TriggerAuthentication and "
              "ServiceMonitor not validated against CRD schemas (skipped)")
    rules = [x for x in docs if x.get("kind") == "PrometheusRule"]
    for r in rules:
        errors += check_prometheus_rule(r)
    print(f"  {len(rules)} PrometheusRule(s) checked structurally")
    for e in errors:
        print(f"  error: {e}")
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "split":
        return cmd_split(*argv[1:])
    if len(argv) == 3 and argv[0] == "crds":
        return cmd_crds(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
