#!/usr/bin/env python3
"""Offline check of the Grafana dashboards in deploy/grafana/.

Usage:
  dashboard.py --grafana-dir DIR --repo-root ROOT [--rendered OVERLAY.yaml]

  DIR            deploy/grafana (or a copy): every *.json in it is a dashboard
  ROOT           the repository root, for the Rust sources (fleet_metrics.py)
  OVERLAY.yaml   `kustomize build` of an overlay: the scrape job names a query
                 uses (up{job="..."}) must be Services a ServiceMonitor scrapes

What is proven, per dashboard:
  * structure: valid JSON, and valid against grafana-dashboard.schema.json (the
    dashboard model of the schemaVersion it declares, which must be one this
    check knows: 36 to 41), plus what a schema cannot say: panel ids unique
    (rows and the panels of collapsed rows included), refIds unique per panel,
    panels inside the 24-column grid and not overlapping, legends and table
    cells in the form of the declared version;
  * datasource: a `datasource` template variable of type datasource for
    prometheus, and every panel and target referring to it (${datasource}),
    so that the dashboard imports into any Grafana with any Prometheus;
  * queries: every target has a PromQL expr that parses (promql-parser, with
    Grafana's $__rate_interval and friends replaced by a duration), and every
    metric it selects is one the binaries export (names read from the Rust
    sources; histograms as _bucket/_sum/_count), label filters use values the
    binaries set;
  * coverage: together the dashboards query the views operators need (queue
    depth and age, in-flight, outcomes, apply duration, verdicts,
    dead-letters, deployment errors, Pinecone pacing and 429s, superseded
    messages, webhooks, worker replicas).

Prints one line per finding; exits 1 on any, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

from fleet_metrics import check_expr, scan_exported, selectors, series_names

SCHEMA_PATH = Path(__file__).with_name("grafana-dashboard.schema.json")
# 36 made every datasource reference a {type, uid} object (names before); the
# schema above is of that form. 37 replaced the hidden legend mode by
# showLegend, 38 the table cell displayMode by cellOptions; 39 to 41 changed
# nothing this check looks at. Newer versions are unknown here: extend the
# schema and this range after reading Grafana's migrations.
SUPPORTED_SCHEMA_VERSIONS = range(36, 42)
DATASOURCE_VARIABLE = "datasource"
DATASOURCE_REF = {"type": "prometheus", "uid": "${" + DATASOURCE_VARIABLE + "}"}
GRID_COLUMNS = 24

# The views the dashboards must offer: metric selected -> what it shows.
REQUIRED_METRICS = {
    "fleet_producer_queue_messages": "queue depth (visible, in flight, delayed; dead-letter queue)",
    "fleet_producer_oldest_pending_batch_age_seconds": "oldest pending batch age",
    "fleet_in_flight_messages": "in-flight messages",
    "fleet_messages_total": "messages by outcome",
    "fleet_apply_seconds_bucket": "apply duration",
    "fleet_labels_total": "labels by verdict",
    "fleet_dead_letter_sends_total": "dead-letter sends by reason",
    "fleet_deployment_errors_total": "errors of the deployment by cause",
    "fleet_pinecone_paced_rate_per_second": "Pinecone pacing",
    "fleet_pinecone_rate_limited_total": "Pinecone 429s",
    "fleet_superseded_messages_total": "superseded messages",
    "fleet_webhooks_total": "webhooks by type and outcome",
    "fleet_worker_loop_heartbeat_timestamp_seconds": "workers whose poll loop turns",
    "up": "worker replicas (scraped pods)",
}


def all_panels(dash: dict) -> list[dict]:
    """Every panel, rows and the panels folded into collapsed rows included."""
    out = []
    for p in dash.get("panels") or []:
        if not isinstance(p, dict):
            continue
        out.append(p)
        out.extend(q for q in p.get("panels") or [] if isinstance(q, dict))
    return out


def check_layout(dash: dict, who: str) -> list[str]:
    errs = []
    placed: list[tuple[str, int, int, int, int]] = []
    for p in dash.get("panels") or []:
        g = p.get("gridPos") or {}
        try:
            x, y, w, h = (int(g[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            continue  # the schema reports it
        name = f"panel {p.get('id')} {p.get('title', '')!r}"
        if x + w > GRID_COLUMNS:
            errs.append(f"{who}: {name} reaches column {x + w}, beyond the grid's {GRID_COLUMNS}")
        if p.get("type") == "row" and (x, w, h) != (0, GRID_COLUMNS, 1):
            errs.append(f"{who}: row {name} is not a full-width line (x 0, w {GRID_COLUMNS}, h 1)")
        if p.get("type") == "row" and not p.get("collapsed") and p.get("panels"):
            errs.append(f"{who}: open row {name} holds panels; only collapsed rows carry theirs inside")
        if p.get("type") == "row" and p.get("collapsed") is True and not p.get("panels"):
            errs.append(f"{who}: collapsed row {name} holds no panels")
        for other, ox, oy, ow, oh in placed:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                errs.append(f"{who}: {name} overlaps {other}")
        placed.append((name, x, y, w, h))
    return errs


def check_version_rules(dash: dict, version: int, who: str) -> list[str]:
    errs = []
    for p in all_panels(dash):
        name = f"panel {p.get('id')} {p.get('title', '')!r}"
        legend = ((p.get("options") or {}).get("legend") or {})
        if version >= 37 and p.get("type") in ("timeseries", "barchart", "histogram", "state-timeline",
                                               "status-history", "trend", "xychart", "piechart"):
            if legend.get("displayMode") == "hidden" or "showLegend" not in legend:
                errs.append(f"{who}: {name}: schemaVersion {version} legends say showLegend "
                            f"(displayMode 'hidden' is the pre-37 form)")
        custom = (((p.get("fieldConfig") or {}).get("defaults") or {}).get("custom") or {})
        if version >= 38 and p.get("type") == "table" and "displayMode" in custom:
            errs.append(f"{who}: {name}: schemaVersion {version} tables use custom.cellOptions, not displayMode")
    return errs


def check_datasources(dash: dict, who: str) -> list[str]:
    errs = []
    variables = [v for v in ((dash.get("templating") or {}).get("list") or []) if isinstance(v, dict)]
    ds_vars = [v for v in variables if v.get("name") == DATASOURCE_VARIABLE]
    if len(ds_vars) != 1 or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        errs.append(f"{who}: no template variable `{DATASOURCE_VARIABLE}` of type datasource for prometheus "
                    f"(query \"prometheus\"): the dashboard would be tied to one Grafana's datasource")
    for v in variables:
        ds = v.get("datasource")
        if v.get("type") == "query" and ds != DATASOURCE_REF:
            errs.append(f"{who}: variable {v.get('name')} queries datasource {ds}, not {DATASOURCE_REF}")
    for p in all_panels(dash):
        if p.get("type") in ("row", "text", "news", "dashlist", "alertlist", "annolist"):
            continue
        name = f"panel {p.get('id')} {p.get('title', '')!r}"
        if p.get("datasource") != DATASOURCE_REF:
            errs.append(f"{who}: {name}: datasource {p.get('datasource')} is not {DATASOURCE_REF}")
        for t in p.get("targets") or []:
            if isinstance(t, dict) and t.get("datasource") != DATASOURCE_REF:
                errs.append(f"{who}: {name} target {t.get('refId')}: datasource {t.get('datasource')} "
                            f"is not {DATASOURCE_REF}")
    return errs


def check_queries(dash: dict, exported: set[str], scrape_jobs: set[str] | None,
                  who: str) -> tuple[list[str], set[str], int]:
    errs = []
    selected: set[str] = set()
    count = 0
    for p in all_panels(dash):
        if p.get("type") in ("row", "text", "news", "dashlist", "alertlist", "annolist"):
            continue
        name = f"panel {p.get('id')} {p.get('title', '')!r}"
        targets = p.get("targets") or []
        if not targets:
            errs.append(f"{who}: {name} has no targets")
        refs = [t.get("refId") for t in targets if isinstance(t, dict)]
        for r in sorted({r for r in refs if refs.count(r) > 1}, key=str):
            errs.append(f"{who}: {name}: refId {r!r} used twice")
        for t in targets:
            if not isinstance(t, dict):
                errs.append(f"{who}: {name}: a target is not an object")
                continue
            if not t.get("refId"):
                errs.append(f"{who}: {name}: a target without refId")
            expr = t.get("expr")
            where = f"{who}: {name} target {t.get('refId')}"
            if not isinstance(expr, str) or not expr.strip():
                errs.append(f"{where}: no PromQL expr")
                continue
            count += 1
            e = check_expr(expr, exported, where)
            errs.extend(e)
            if any("not valid PromQL" in x for x in e):
                continue
            found = selectors(expr)
            selected |= {name for name, _ in found if name}
            if scrape_jobs is not None:
                for name, matchers in found:
                    for label, op, job in matchers:
                        if name == "up" and label == "job" and op == "=" and job not in scrape_jobs:
                            errs.append(f"{where}: up{{job={job!r}}}: no ServiceMonitor scrapes a Service of "
                                        f"that name (scraped: {sorted(scrape_jobs)})")
    return errs, selected, count


def scrape_job_names(rendered: Path) -> set[str]:
    """Default job label of the prometheus-operator: the scraped Service's name."""
    docs = [d for d in yaml.safe_load_all(rendered.read_text(encoding="utf-8")) if d]
    services = [d for d in docs if d.get("kind") == "Service"]
    jobs = set()
    for m in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        want = ((m.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for s in services:
            labels = s["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in want.items()):
                jobs.add(s["metadata"]["name"])
    return jobs


def check_dashboard(path: Path, schema: dict, exported: set[str],
                    scrape_jobs: set[str] | None) -> tuple[list[str], set[str], str]:
    who = path.name
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"{who}: not valid JSON: {e}"], set(), ""
    if not isinstance(dash, dict):
        return [f"{who}: not a JSON object"], set(), ""
    errs: list[str] = []
    version = dash.get("schemaVersion")
    if not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        errs.append(f"{who}: schemaVersion {version!r} is not one this check knows "
                    f"({SUPPORTED_SCHEMA_VERSIONS.start}..{SUPPORTED_SCHEMA_VERSIONS.stop - 1})")
    for e in sorted(Draft7Validator(schema).iter_errors(dash), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(x) for x in e.absolute_path) or "(root)"
        errs.append(f"{who}: {where}: {e.message}")
    ids = [p.get("id") for p in all_panels(dash)]
    for i in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        errs.append(f"{who}: panel id {i!r} used by {ids.count(i)} panels")
    errs += check_layout(dash, who)
    if isinstance(version, int):
        errs += check_version_rules(dash, version, who)
    errs += check_datasources(dash, who)
    q_errs, selected, n_queries = check_queries(dash, exported, scrape_jobs, who)
    errs += q_errs
    panels = [p for p in all_panels(dash) if p.get("type") != "row"]
    detail = (f"{who}: schemaVersion {version}, {len(panels)} panels in "
              f"{len(all_panels(dash)) - len(panels)} rows, {n_queries} queries, "
              f"{len(selected)} metrics")
    return errs, selected, detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grafana-dir", required=True, type=Path)
    ap.add_argument("--repo-root", required=True, type=Path)
    ap.add_argument("--rendered", type=Path)
    a = ap.parse_args()
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    kinds, bucketed, notes = scan_exported(a.repo_root)
    exported = series_names(kinds, bucketed)
    errs = [f"metric scan: {n}" for n in notes]
    if not kinds:
        errs.append(f"no fleet_ metric found in the Rust sources under {a.repo_root}")
    scrape_jobs = scrape_job_names(a.rendered) if a.rendered else None
    files = sorted(a.grafana_dir.glob("*.json")) if a.grafana_dir.is_dir() else []
    if not any(f.name == "fleet.json" for f in files):
        errs.append(f"{a.grafana_dir}/fleet.json missing")
    selected: set[str] = set()
    for f in files:
        e, s, detail = check_dashboard(f, schema, exported, scrape_jobs)
        errs += e
        selected |= s
        print(f"  {detail}")
    for metric, what in REQUIRED_METRICS.items():
        if metric not in selected:
            errs.append(f"no dashboard shows {what} (no query selects {metric})")
    print(f"  metrics: {len(kinds)} recorded in the Rust sources; the dashboards select {len(selected)} series "
          f"names, each exported (or up); {len(REQUIRED_METRICS)} required views present"
          + ("" if scrape_jobs is None else f"; scrape jobs {sorted(scrape_jobs)}")
          if not errs else "")
    for e in errs:
        print(f"  error: {e}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
