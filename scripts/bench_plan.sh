#!/usr/bin/env bash
# Performance benchmark for `debris plan` and `debris scan` on a large filesystem store.
#
# Why: debris runs from cron against production registries with ~10^5-10^6 files. A plan of
# upload sessions only has to visit repositories and their _uploads, so it should cost about
# what a `find` that skips blobs/, _layers/ and _manifests/ costs; a scan classifies every path,
# so it should cost about what a plain `find` over the whole store costs. And a local-store
# run must never import boto3 (hundreds of ms and tens of MiB for nothing). This script
# measures exactly that, against `find` run in the same conditions, and prints PASS/MISS per
# target. It is a report, not a test: it exits 0 on a MISS (and 1 only if it could not
# measure at all, e.g. a command failed).
#
# Usage:
#   scripts/bench_plan.sh [ROOT]
#     ROOT given and already holding docker/registry/v2: benchmark that store as it is.
#     ROOT given but empty or missing: generate the default store into it and keep it.
#     no ROOT: generate into a temp dir, removed at exit (BENCH_KEEP=1 keeps it).
#
# Environment:
#   BENCH_RUNS=5      measured runs per command (after one warm-up run each)
#   BENCH_PROFILE=1   also print a cProfile of plan and scan (top functions by cumulative
#                     and by own time); adds ~10-20 s
#   BENCH_KEEP=1      keep the generated temp store (its path is printed)
#   BENCH_GEN_ARGS    extra arguments for scripts/gen_store.py (e.g. "--repos 6000 --seed 2")
#
# Which debris: the `debris` on PATH if there is one (a pyenv shim is resolved to the script it
# runs, so the shim's own bash start-up is not measured); otherwise `python3 -m debris` with
# this repository on PYTHONPATH. The header says which, and which debris/__init__.py it loads.
#
# Caching: nothing is dropped from the page cache (that needs root and disturbs other work on
# the machine). Every command gets one discarded warm-up run, so all figures are WARM-cache
# figures, for debris and for find alike. Runs of debris and of its find baseline are
# interleaved (A B A B ...) so that load from other processes hits both.
#
# Peak RSS is ru_maxrss of the measured child from os.wait4 (scripts/bench_util.py). Linux
# folds the spawning process's RSS high-water mark into it at exec, so any figure at or below
# the "spawn floor" printed in the notes is that floor, not the command's own peak.
set -euo pipefail

readonly PLAN_RATIO_MAX=2.5
readonly SCAN_RATIO_MAX=1.0
readonly RSS_MAX_MIB=80

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RUNS=${BENCH_RUNS:-5}
PROFILE=${BENCH_PROFILE:-0}
KEEP=${BENCH_KEEP:-0}
read -r -a GEN_ARGS <<<"${BENCH_GEN_ARGS:-}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
if [[ $# -gt 1 ]]; then usage >&2; exit 2; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/debris-bench.XXXXXX")
OWN_STORE=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [[ -n "$OWN_STORE" && "$KEEP" != 1 ]]; then
        rm -rf "$OWN_STORE"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- which debris, which python -----------------------------------------------------------
# shellcheck source=scripts/bench_lib.sh
source "$HERE/bench_lib.sh"
find_debris

# --- the store ------------------------------------------------------------------------------
if [[ $# -eq 1 && -d "$1/docker/registry/v2" ]]; then
    ROOT=$(cd "$1" && pwd)
    echo "store: using existing $ROOT (not regenerated)"
else
    if [[ $# -eq 1 ]]; then
        ROOT=$1
    else
        OWN_STORE=$(mktemp -d "${TMPDIR:-/tmp}/debris-bench-store.XXXXXX")
        ROOT=$OWN_STORE
    fi
    "$PY" "$HERE/gen_store.py" "$ROOT" "${GEN_ARGS[@]}"
    ROOT=$(cd "$ROOT" && pwd)
    if [[ -n "$OWN_STORE" && "$KEEP" == 1 ]]; then echo "store kept (BENCH_KEEP=1): $ROOT"; fi
fi
V2="$ROOT/docker/registry/v2"
read -r NFILES NDIRS NBYTES NREPOS NSESS < <(find "$ROOT" -printf '%y %s %p\n' | awk '
    $1 == "f" { f++; b += $2 }
    $1 == "d" { d++; if ($0 ~ /\/_layers$/) r++; if ($0 ~ /\/_uploads\/[^\/]+$/) s++ }
    END { print f + 0, d + 0, b + 0, r + 0, s + 0 }')
echo "store: $ROOT: $NFILES files, $NDIRS dirs, $NBYTES bytes, $NREPOS repositories, $NSESS upload sessions"
echo "debris: $HOW (package $DEBRIS_PKG); python: $PY"
echo "cache: WARM - nothing dropped from the page cache; 1 warm-up + $RUNS measured runs each, debris and find interleaved"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo

# --- measurements ---------------------------------------------------------------------------
FIND_PRUNED=(find "$ROOT" '(' -path "$V2/blobs" -o -name _layers -o -name _manifests ')' -prune -o -printf '%s %T@ %p\n')
FIND_ALL=(find "$ROOT" -printf '%s %T@ %p\n')
BENCH=("$PY" "$HERE/bench_util.py" -k "$RUNS" --warmup 1 --format fields)

measure_pair() { # measure_pair OUTFILE -- CMD... --- BASELINE...: two "fields" lines
    local out=$1
    shift
    if ! "${BENCH[@]}" "$@" >"$out"; then
        echo "bench_plan: measurement failed (see above); no figures" >&2
        exit 1
    fi
}
measure_pair "$WORK/plan" -- "${DEBRIS[@]}" plan "$ROOT" --json --- "${FIND_PRUNED[@]}"
measure_pair "$WORK/scan" -- "${DEBRIS[@]}" scan "$ROOT" --json --- "${FIND_ALL[@]}"
FLOOR=$("$PY" "$HERE/bench_util.py" -k 1 --warmup 0 --format fields -- true | cut -d' ' -f2)

# boto3 must not be imported by a local-store plan.
if ! "$PY" -X importtime -m debris plan "$ROOT" --json >/dev/null 2>"$WORK/importtime"; then
    echo "bench_plan: warning: the -X importtime run of debris plan failed; import figures may be partial" >&2
fi
if grep -Eiq '\| +(boto3|botocore|s3transfer)(\.|$)' "$WORK/importtime"; then
    BOTO="MISS"
    BOTO_DETAIL="imported: $(grep -Eio '\| +(boto3|botocore|s3transfer)[A-Za-z0-9_.]*' "$WORK/importtime" | head -3 | tr -d '| ' | paste -sd, -)"
else
    BOTO="PASS"
    BOTO_DETAIL="none of boto3/botocore/s3transfer imported"
fi

# --- report ---------------------------------------------------------------------------------
MISSES=0
row() { # row NAME RESULTFILE RATIO_MAX
    local name=$1 file=$2 max=$3 wall rss bwall cpu bcpu ratio verdict
    read -r wall rss _ _ cpu _ < <(sed -n 1p "$file")
    read -r bwall _ _ _ bcpu _ < <(sed -n 2p "$file")
    ratio=$(awk -v a="$wall" -v b="$bwall" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
    verdict=$(awk -v r="$ratio" -v rmax="$max" -v m="$rss" -v mmax="$RSS_MAX_MIB" 'BEGIN {
        t = (r + 0 <= rmax + 0); s = (m + 0 <= mmax + 0)
        if (t && s) print "PASS"; else if (!t && !s) print "MISS(time,rss)"; else if (!t) print "MISS(time)"; else print "MISS(rss)"
    }')
    [[ "$verdict" == PASS ]] || MISSES=$((MISSES + 1))
    printf '%-22s %10s %8s %10s %12s %8s %8s %-18s %s\n' "$name" "$wall" "$cpu" "$rss" "$bwall" "$bcpu" "${ratio}x" \
        "<=${max}x,<=${RSS_MAX_MIB}MiB" "$verdict"
}
printf '%-22s %10s %8s %10s %12s %8s %8s %-18s %s\n' command "median_s" "cpu_s" "rss_MiB" "baseline_s" "base_cpu" ratio target result
row "debris plan --json" "$WORK/plan" "$PLAN_RATIO_MAX"
row "debris scan --json" "$WORK/scan" "$SCAN_RATIO_MAX"
printf '%-22s %s  %s\n' "boto3 on local plan" "$BOTO" "($BOTO_DETAIL)"
[[ "$BOTO" == PASS ]] || MISSES=$((MISSES + 1))
echo
echo "baselines: plan vs find with blobs/, _layers/, _manifests/ pruned; scan vs find over the whole store (-printf '%s %T@ %p')."
echo "ratio = median wall of debris / median wall of its baseline (cpu_s = median user+sys, less sensitive to load)."
echo "spawn floor for peak RSS: $FLOOR MiB (bench_util's own RSS folded in at exec: RSS at or below it means <= it)."
# Top-level imports only (their cumulative time includes what they pull in): what start-up pays.
awk -F'|' '/^import time:/ && $2 ~ /[0-9]/ && $3 ~ /^ [^ ]/ {t += $2} END {
    printf "imports (-X importtime, debris plan): %.0f ms in all; largest top-level ones:\n", t / 1000 }' "$WORK/importtime"
awk -F'|' '/^import time:/ && $2 ~ /[0-9]/ && $3 ~ /^ [^ ]/ {gsub(/ /, "", $2); printf "%10.1f ms %s\n", $2 / 1000, $3}' \
    "$WORK/importtime" | sort -rn | head -n 6
if [[ $MISSES -gt 0 ]]; then
    echo "RESULT: MISS on $MISSES target(s) (this is a report: exit status 0)"
else
    echo "RESULT: PASS, all targets met"
fi

# --- optional profile -----------------------------------------------------------------------
if [[ "$PROFILE" == 1 ]]; then
    for cmd in plan scan; do
        "$PY" -m cProfile -o "$WORK/$cmd.prof" -m debris "$cmd" "$ROOT" --json >/dev/null
        echo
        echo "=== cProfile: debris $cmd --json (top by cumulative, then by own time) ==="
        "$PY" - "$WORK/$cmd.prof" "$REPO" <<'EOF'
import io
import pstats
import sys
import sysconfig

buf = io.StringIO()
st = pstats.Stats(sys.argv[1], stream=buf)
st.sort_stats("cumulative").print_stats(22)
st.sort_stats("tottime").print_stats(14)
text = buf.getvalue()
# Shorter paths: site-packages, the standard library and this repository are implied.
for prefix in (sysconfig.get_paths()["purelib"] + "/", sysconfig.get_paths()["stdlib"] + "/", sys.argv[2] + "/"):
    text = text.replace(prefix, "")
print(text)
EOF
    done | grep -v -e '^$' -e 'Ordered by' -e 'List reduced' -e '\.prof$'
fi
exit 0
