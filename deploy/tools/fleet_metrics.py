#!/usr/bin/env python3
"""The metrics the fleet's binaries export, read from the Rust sources, and
the metric names a PromQL expression queries.

Used by crosscheck.py (alert rules) and dashboard.py (the Grafana dashboard):
both must query only what the binaries export, and a hand-kept list of names
drifts from the code the day someone renames a metric. So the names are read
from the code itself:

  * `[pub] const NAME: &str = "fleet_...";` constants and `"fleet_..."`
    literals given to the `metrics` macros (`counter!`, `gauge!`,
    `histogram!`, `describe_*!`), the constants resolved by name;
  * `*_metric: "fleet_..."` fields (shared/src/http.rs's `Service`, whose
    request and retry counters are recorded through `counter!`).

A constant no macro uses (the Pushgateway job name `fleet_producer`) is no
metric. Test modules (`#[cfg(test)] mod x { ... }` blocks, and the files of
`#[cfg(test)] mod x;`) are not read.
Histograms export `NAME_bucket` (only when buckets are configured for them,
`set_buckets_for_metric`; otherwise the exporter renders a summary),
`NAME_sum` and `NAME_count`.

Queries are parsed with promql-parser (a PromQL parser; a query that does
not parse, or calls rate() on an instant vector, fails) and their vector
selectors read from the syntax tree.

  fleet_metrics.py ROOT     print the exported names and their kinds
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import promql_parser

# The crates whose binaries run in the cluster (worker, producer) and the
# library both link.
SOURCE_DIRS = ("shared/src", "worker/src", "producer/src")

# Series Prometheus itself writes for every scrape target: allowed in queries.
SCRAPE_SERIES = {"up"}

# Label values the binaries set, where a query filters on them (a typo in a
# filter gives an empty panel or an alert that never fires, silently).
KNOWN_LABEL_VALUES = {
    "outcome": {"applied", "rechecked", "dead_lettered", "retried", "abandoned",
                "deferred", "already_done", "lease_busy", "stopped", "superseded", "panicked",
                # fleet_webhooks_total (producer/src/webhook)
                "enqueued", "duplicate", "ignored_type", "unknown_batch", "not_pending",
                "missing_header", "bad_timestamp", "stale_timestamp", "bad_signature",
                "too_large", "bad_body", "bad_json", "bad_event", "error"},
    "class": {"transient", "permanent", "deployment"},
    "result": {"listed", "enqueued", "skipped", "skipped_dead_lettered", "failed", "bad_item"},
    "cause": {"openai_key", "openai_quota", "pinecone_key", "aws_access", "aws_missing_resource"},
    "queue": {"work", "dead_letter"},
    "state": {"visible", "in_flight", "delayed"},
}

NAME = r"fleet_[a-z0-9_]+"
CONST = re.compile(r"\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*\"(" + NAME + r")\"\s*;")
MACRO = re.compile(r"\b(counter|gauge|histogram|describe_counter|describe_gauge|describe_histogram)!\s*\(\s*([^,)]+)")
FIELD = re.compile(r"\b[a-z_]*metric\s*:\s*\"(" + NAME + r")\"")
BUCKETS = re.compile(r"set_buckets_for_metric\s*\(\s*Matcher::(Full|Prefix|Suffix)\s*\(\s*([^,)]+?)\s*(?:\.to_owned\(\)|\.to_string\(\)|\.into\(\))?\s*\)")
CFG_TEST = re.compile(r"#\[cfg\(test\)\]\s*((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*([;{])")


def _block_end(text: str, start: int) -> int:
    """Index after the brace block opening at text[start] ("{"), skipping
    strings, raw strings, chars and comments."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            i = text.find("*/", i + 2)
            i = n if i < 0 else i + 2
            continue
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and not (text[i - 1].isalnum() or text[i - 1] == "_"):
            hashes = len(re.match(r"r(#*)\"", text[i:]).group(1))
            end = text.find('"' + "#" * hashes, i + 2 + hashes)
            i = n if end < 0 else end + 1 + hashes
            continue
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            i += text[i:i + 4].index("'", 1)
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _production_text(path: Path, skip: set[Path]) -> str:
    """The file without its test modules; the files of `#[cfg(test)] mod x;`
    modules are added to skip."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out, pos = [], 0
    for m in CFG_TEST.finditer(text):
        if m.start() < pos:
            continue
        if m.group(3) == ";":
            attr = re.search(r'#\[path\s*=\s*"([^"]+)"\]', m.group(1))
            base = path.parent if path.name in ("mod.rs", "lib.rs", "main.rs") else path.parent / path.stem
            if attr:
                skip.add((path.parent / attr.group(1)).resolve())
            else:
                skip.update({(base / f"{m.group(2)}.rs").resolve(), (base / m.group(2) / "mod.rs").resolve()})
            continue
        out.append(text[pos:m.start()])
        pos = _block_end(text, m.end() - 1)
    out.append(text[pos:])
    return "".join(out)


def _literal(arg: str) -> str | None:
    m = re.fullmatch(r"\"(" + NAME + r")\"", arg.strip())
    return m.group(1) if m else None


def scan_exported(repo_root: Path) -> tuple[dict[str, str], set[str], list[str]]:
    """(name -> kind, histograms with buckets, notes) of every metric the
    binaries record. kind is counter, gauge or histogram."""
    files: list[Path] = []
    for d in SOURCE_DIRS:
        base = repo_root / d
        if base.is_dir():
            files += sorted(base.rglob("*.rs"))
    skip: set[Path] = set()
    read = [(f, _production_text(f, skip)) for f in files]
    texts = [(f, text) for f, text in read if f.resolve() not in skip]
    consts: dict[str, set[str]] = {}
    for _, text in texts:
        for name, value in CONST.findall(text):
            consts.setdefault(name, set()).add(value)

    def resolve(arg: str) -> set[str]:
        lit = _literal(arg)
        if lit:
            return {lit}
        ident = arg.strip().split("::")[-1]
        return consts.get(ident, set()) if re.fullmatch(r"[A-Z][A-Z0-9_]*", ident) else set()

    kinds: dict[str, str] = {}
    notes: list[str] = []
    for f, text in texts:
        for macro, arg in MACRO.findall(text):
            kind = macro.removeprefix("describe_")
            names = resolve(arg)
            if not names:
                if re.search(r"\.\s*[a-z_]*metric\b", arg):
                    continue  # a Service's metric field: read below
                notes.append(f"{f.relative_to(repo_root)}: {macro}!({arg.strip()}) names no fleet_ metric "
                             f"this scan can resolve")
            for n in names:
                kinds[n] = kind
        for n in FIELD.findall(text):
            kinds.setdefault(n, "counter")
    bucketed: set[str] = set()
    for _, text in texts:
        for how, arg in BUCKETS.findall(text):
            for n in resolve(arg):
                bucketed.update(k for k, v in kinds.items() if v == "histogram" and (
                    (how == "Full" and k == n) or (how == "Prefix" and k.startswith(n))
                    or (how == "Suffix" and k.endswith(n))))
    return kinds, bucketed, notes


def series_names(kinds: dict[str, str], bucketed: set[str]) -> set[str]:
    """Every series name a scrape of the binaries can show."""
    names = set()
    for n, kind in kinds.items():
        if kind == "histogram":
            names.update({f"{n}_sum", f"{n}_count"} | ({f"{n}_bucket"} if n in bucketed else set()))
        else:
            names.add(n)
    return names


# ------------------------------------------------------------------ PromQL
# Grafana's built-in interval variables, replaced by a duration before parsing
# (Grafana interpolates them before Prometheus sees the query).
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h", "__auto": "1m"}


def grafana_interpolate(expr: str) -> str:
    """expr with Grafana's interval variables replaced; ValueError for any
    other template variable (its values are not known here)."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_INTERVALS:
            raise ValueError(f"template variable ${name} cannot be substituted offline")
        return GRAFANA_INTERVALS[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, expr)


Selector = tuple[str | None, list[tuple[str, str, str]]]


def selectors(expr: str) -> list[Selector]:
    """(metric name, [(label, op, value)]) of every vector selector of a PromQL
    expression, op one of = != =~ !~. ValueError when it does not parse."""
    tree = promql_parser.parse(grafana_interpolate(expr))
    m_op = promql_parser.MatchOp
    ops = [(m_op.Equal, "="), (m_op.NotEqual, "!="), (m_op.Re, "=~"), (m_op.NotRe, "!~")]
    found: list[Selector] = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            groups = [node.matchers.matchers] + list(node.matchers.or_matchers or [])
            matchers = [(m.name, next(s for o, s in ops if m.op == o), m.value) for g in groups for m in g]
            name = node.name or next((v for n, op, v in matchers if n == "__name__" and op == "="), None)
            found.append((name, [m for m in matchers if m[0] != "__name__"]))

    promql_parser.walk(tree, visit)
    return found


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    return {name for name, _ in selectors(expr) if name}


def check_expr(expr: str, exported: set[str], where: str) -> list[str]:
    """Problems of one expression: not PromQL, metrics the binaries do not
    export, label values they never set."""
    try:
        found = selectors(expr)
    except ValueError as e:
        return [f"{where}: not valid PromQL ({e}): {expr.strip()!r}"]
    errs = []
    for name, matchers in found:
        if name is None:
            errs.append(f"{where}: a selector without a fixed metric name cannot be checked")
        elif name not in exported and name not in SCRAPE_SERIES:
            errs.append(f"{where}: metric {name} is not one the binaries export")
        for label, op, value in matchers:
            allowed = KNOWN_LABEL_VALUES.get(label)
            if allowed is None or op in ("!=", "!~"):
                continue
            values = value.split("|") if op == "=~" else [value]
            for v in values:
                if v and not re.search(r"[.*+?\\()\[\]{}^$]", v) and v not in allowed:
                    errs.append(f"{where}: {label}={v!r} is not one of {sorted(allowed)}")
    return errs


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    kinds, bucketed, notes = scan_exported(Path(argv[0]))
    for n in sorted(kinds):
        print(f"{n} {kinds[n]}{' (buckets)' if n in bucketed else ''}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
