#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages and a Python venv), then run it.
# Usage: scripts/test.sh [pytest args...]   e.g. scripts/test.sh -m "not rgw" -x
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry skopeo ceph-mon ceph-osd radosgw ceph-common)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv python3-pip)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "scripts/test.sh: missing Debian packages (${missing[*]}); install them as root with apt-get" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=${DEBRIS_VENV:-.venv}
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v "is ignored: it is neither" >&2)

"$VENV/bin/ruff" check debris tests scripts
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
