#!/usr/bin/env bash
# Benchmark: `debris audit` against the registry's own `garbage-collect --dry-run` on the same tree.
#
# Why: an audit answers "what would GC free?" before anyone takes the registry read-only; it is only
# useful if it costs no more than the dry run it replaces. Target: debris audit wall time <= 1.0x
# garbage-collect --dry-run, measured in the same run (fresh processes, interleaved, median of
# BENCH_RUNS after one warm-up each; warm page cache for both). A report, not a test: exit 0 on a
# MISS, 1 only when something could not be measured.
#
# Usage: scripts/bench_audit.sh [ROOT]   (ROOT empty or missing: a default gen_store tree, >= 100k
#        files, is generated there; no ROOT: into a temp dir removed at exit)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
RUNS=${BENCH_RUNS:-3}
# shellcheck source=scripts/bench_lib.sh
source "$HERE/bench_lib.sh"
find_debris
GC=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
[[ -x $GC ]] || { echo "bench_audit: $GC not installed (apt-get install docker-registry)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/debris-bench-audit.XXXXXX)
ROOT=${1:-}
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
if [[ -z $ROOT ]]; then
    ROOT=$WORK/store
fi
if [[ ! -d $ROOT/docker/registry/v2 ]]; then
    mkdir -p "$ROOT"
    "$PY" "$HERE/gen_store.py" "$ROOT" >/dev/null
fi
echo "store: $ROOT: $(find "$ROOT" -type f | wc -l) files"

cat >"$WORK/config.yml" <<CFG
version: 0.1
storage:
  filesystem:
    rootdirectory: $ROOT
CFG

echo "debris: $HOW"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

for mode in all untagged; do
    flags=()
    [[ $mode == untagged ]] && flags=(--delete-untagged)
    "$PY" "$HERE/bench_util.py" -k "$RUNS" --warmup 1 --format fields -- \
        "${DEBRIS[@]}" audit "$ROOT" --json "${flags[@]}" --- "$GC" garbage-collect --dry-run "${flags[@]}" "$WORK/config.yml" \
        >"$WORK/t" 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
    read -r d_wall d_rss _ <<<"$(sed -n 1p "$WORK/t")"
    read -r g_wall g_rss _ <<<"$(sed -n 2p "$WORK/t")"
    ratio=$("$PY" -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$d_wall" "$g_wall")
    result=$("$PY" -c "import sys; print('PASS' if float(sys.argv[1]) <= 1.0 else 'MISS')" "$ratio")
    printf '%-28s debris %7.3fs %6.1f MiB | garbage-collect --dry-run %7.3fs %6.1f MiB | ratio %sx (target <= 1.0) %s\n' \
        "audit ${flags[*]:-(all revisions)}" "$d_wall" "$d_rss" "$g_wall" "$g_rss" "$ratio" "$result"
done
