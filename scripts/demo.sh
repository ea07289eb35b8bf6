#!/usr/bin/env bash
# The main job on a sample store: build a store with real debris, then show what debris sees
# and what it would delete. Nothing is deleted (no --confirm).
# Usage: scripts/demo.sh [STORE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DEBRIS_VENV:-.venv}
if [[ ! -x "$VENV/bin/debris" ]]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    else
      echo "scripts/demo.sh: python3-venv is missing; install it with apt-get" >&2
      exit 1
    fi
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . 2> >(grep -v "is ignored: it is neither" >&2)
fi

STORE=${1:-$(mktemp -d /tmp/debris-demo.XXXXXX)/store}
"$VENV/bin/python" scripts/sample_store.py "$STORE"
debris() { "$VENV/bin/debris" "$@"; }

echo; echo "\$ debris scan $STORE --by-repo"
debris scan "$STORE" --by-repo
echo; echo "\$ debris audit $STORE --delete-untagged   # what the registry's GC would free (read-only)"
debris audit "$STORE" --delete-untagged
echo; echo "\$ debris plan $STORE --older-than 24h"
debris plan "$STORE" --older-than 24h
echo
echo "To delete exactly this: debris plan $STORE --out plan.json && debris apply plan.json --confirm"
