#!/usr/bin/env bash
# S3 cost benchmark for `debris plan` on a Ceph RGW bucket: HTTP requests and wall time.
#
# Why: on S3 every request is billed and rate-limited, and a registry bucket holds 10^5-10^7
# objects, nearly all of them blobs, layer links and manifests that a plan never needs. debris
# lists by delimiter, one directory at a time, pruning blobs/, _layers/ and _manifests/, and lists
# each _uploads/ flat. So (1) adding layer links and blobs must not add a single request, (2) a
# plan must cost at most half the requests of distribution 2.8's own upload purge walk (a
# delimiter listing of every directory under repositories/ but _layers/_manifests, and a GET per
# startedat), and (3) it must take no longer than one flat listing of the whole root. This script
# measures all of it in one run on a throw-away RGW and prints PASS/MISS per target. It is a
# report, not a test: it exits 0 on a MISS, and 1 only if it could not measure (RGW did not
# start, a command failed).
#
# How:
#   1. scripts/ceph.sh starts a single-node Ceph with radosgw on free 127.0.0.1 ports (stopped at
#      exit through scripts/ceph.sh stop, which signals only the PIDs it recorded).
#   2. scripts/gen_store.py writes a local registry tree; `bench_s3.py populate` uploads every
#      file as BUCKET/registry/<path> on a bounded thread pool, turns each upload session's data
#      into an incomplete multipart upload (1-2 small parts, as the s3 driver leaves it), and adds
#      orphaned multipart uploads (session objects gone).
#      The timed plan is what cron runs: the default --older-than 24h (S3 objects cannot be
#      back-dated, so nothing is stale and no startedat is worth a GET; every multipart upload's
#      parts are still listed, for the bytes of active uploads). The worst case, --older-than 1s
#      --force after a short sleep, where every session pays for its startedat GET, is run once
#      and its requests printed too.
#   3. debris plan --json (requests from its own `requests`) and `bench_s3.py flat-list` (a
#      separate Python process importing boto3 too) are timed by scripts/bench_util.py: fresh
#      processes, interleaved A B A B, median of BENCH_RUNS after one warm-up each.
#   4. `bench_s3.py purge-walk` replays 2.8's purgeuploads.go walk and counts its requests.
#   5. `bench_s3.py add-layers` adds 2,000 blobs and layer links to the repository with the most
#      upload sessions, and debris plan's requests are counted again.
#
# Usage:
#   scripts/bench_s3.sh
#
# Environment:
#   BENCH_RUNS=5        measured runs of debris plan and of the flat listing (after 1 warm-up)
#   BENCH_PLAN_ARGS     policy of the timed plan (default: --older-than 24h, what cron runs)
#   BENCH_GEN_ARGS      scripts/gen_store.py arguments (default: --repos 500 --blobs 8500
#                       --sessions 300, about 21,000 objects)
#   BENCH_ORPHANS=50    orphaned multipart uploads
#   BENCH_ADD=2000      layer links (and blobs) added for target 4
#   BENCH_WORKERS=12    parallel PUTs while filling the bucket
#   BENCH_KEEP=1        keep the work directory (Ceph logs, JSON outputs); it is printed
#
# Which debris: the `debris` on PATH if there is one (a pyenv shim is resolved to the script it
# runs), else `python3 -m debris` with this repository on PYTHONPATH; bench_s3.py runs under the
# same interpreter. Needs ceph-mon, ceph-osd, radosgw, ceph-common (see scripts/ceph.sh).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${BENCH_RUNS:-5}
ORPHANS=${BENCH_ORPHANS:-50}
ADD=${BENCH_ADD:-2000}
WORKERS=${BENCH_WORKERS:-12}
KEEP=${BENCH_KEEP:-0}
read -r -a GEN_ARGS <<<"${BENCH_GEN_ARGS:---repos 500 --blobs 8500 --sessions 300}"
BUCKET=debris-bench
ROOTDIR=registry

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
if [[ $# -gt 0 ]]; then usage >&2; exit 2; fi

T_START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/debris-bench-s3.XXXXXX")
CEPH_DIR="$WORK/ceph"
CEPH_STARTED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [[ "$CEPH_STARTED" == 1 ]]; then
        bash "$HERE/ceph.sh" stop "$CEPH_DIR" 2>>"$WORK/ceph.log" || echo "bench_s3: ceph.sh stop failed (see $WORK/ceph.log)" >&2
    fi
    if [[ "$KEEP" == 1 ]]; then
        echo "work directory kept (BENCH_KEEP=1): $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "bench_s3: $*; no figures" >&2
    exit 1
}

# --- which debris, which python -----------------------------------------------------------
# shellcheck source=scripts/bench_lib.sh
source "$HERE/bench_lib.sh"
find_debris
"$PY" -m compileall -q "$HERE/bench_s3.py" >/dev/null
BOTO=$("$PY" -c 'import boto3, botocore; print(f"boto3 {boto3.__version__}, botocore {botocore.__version__}")') ||
    fail "boto3 is not importable by $PY"
B3=("$PY" "$HERE/bench_s3.py")

echo "debris: $HOW (package $DEBRIS_PKG); python: $PY; $BOTO"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"

# --- a throw-away RGW -----------------------------------------------------------------------
CEPH_STARTED=1 # ceph.sh stops what it started if start fails; stop is harmless then
start_rgw "$CEPH_DIR" "$WORK/ceph.log" || fail "scripts/ceph.sh start failed"
echo "rgw: $ENDPOINT, up in ${RGW_BRINGUP}s (ceph.sh, memstore OSD)"
S3=(--endpoint "$ENDPOINT" --bucket "$BUCKET" --root "$ROOTDIR")

# --- the bucket -----------------------------------------------------------------------------
"$PY" "$HERE/gen_store.py" "$WORK/tree" "${GEN_ARGS[@]}" >"$WORK/gen.out" || fail "gen_store.py failed"
echo "tree: $(cut -c1-220 "$WORK/gen.out")"
"${B3[@]}" populate "${S3[@]}" "$WORK/tree" --orphans "$ORPHANS" --workers "$WORKERS" >"$WORK/populate.json" ||
    fail "populate failed"
rm -rf "$WORK/tree"
BUSIEST=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["busiest_repo"])' "$WORK/populate.json")
"$PY" - "$WORK/populate.json" "$BUCKET" "$ROOTDIR" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(
    f"bucket: s3://{sys.argv[2]}/{sys.argv[3]}: {d['objects']} objects ({d['object_bytes']} bytes), "
    f"{d['repositories']} repositories, {d['multipart_uploads']} incomplete multipart uploads "
    f"({d['session_multipart_uploads']} of sessions, {d['empty_multipart_uploads']} of them without parts; "
    f"{d['orphan_multipart_uploads']} orphans), {d['parts']} parts; filled in {d['seconds']}s "
    f"(objects {d['objects_seconds']}s)"
)
EOF
sleep 2 # every session is now older than --older-than 1s (for the worst-case run)

# --- measurements ---------------------------------------------------------------------------
read -r -a PLAN_ARGS <<<"${BENCH_PLAN_ARGS:---older-than 24h}"
PLAN=("${DEBRIS[@]}" plan "rgw://$BUCKET/$ROOTDIR" --endpoint-url "$ENDPOINT" --json "${PLAN_ARGS[@]}")
WORST=("${DEBRIS[@]}" plan "rgw://$BUCKET/$ROOTDIR" --endpoint-url "$ENDPOINT" --json --older-than 1s --force)
FLAT=("${B3[@]}" flat-list "${S3[@]}")
plan_json() { # plan_json OUT: one debris plan run; exit 3 (part of the store unreadable) is shown, not fatal
    local rc=0
    "${PLAN[@]}" >"$1" 2>"$WORK/plan.err" || rc=$?
    if [[ $rc != 0 && $rc != 3 ]]; then
        cat "$WORK/plan.err" >&2
        fail "debris plan exited $rc"
    fi
}
plan_json "$WORK/plan1.json"
plan_json "$WORK/plan2.json"
"${WORST[@]}" >"$WORK/worst.json" 2>"$WORK/worst.err" || [[ $? == 3 ]] || fail "worst-case debris plan failed"
"${FLAT[@]}" >"$WORK/flat.json" || fail "flat-list failed"
echo "timing: debris plan and the flat listing, 1 warm-up + $RUNS runs each, interleaved; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$HERE/bench_util.py" -k "$RUNS" --warmup 1 --ok-exit 0,3 --format fields -- "${PLAN[@]}" --- "${FLAT[@]}" >"$WORK/timing" ||
    fail "timing failed"
echo "purge walk: distribution 2.8 style, sequential; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"${B3[@]}" purge-walk "${S3[@]}" >"$WORK/purge.json" || fail "purge-walk failed"
"${B3[@]}" add-layers "${S3[@]}" --repo "$BUSIEST" --count "$ADD" --workers "$WORKERS" >"$WORK/add.json" ||
    fail "add-layers failed"
echo "added: $ADD blobs + $ADD layer links to $BUSIEST (the repository with the most upload sessions)"
plan_json "$WORK/plan-after.json"
"${FLAT[@]}" >"$WORK/flat-after.json" || fail "flat-list failed"
echo "machine: load average $(cut -d' ' -f1-3 /proc/loadavg) at end of measurements"
echo

# --- report ---------------------------------------------------------------------------------
"${B3[@]}" report --populate-json "$WORK/populate.json" --plan-json "$WORK/plan1.json" --plan-json-2 "$WORK/plan2.json" \
    --plan-after-json "$WORK/plan-after.json" --flat-json "$WORK/flat.json" --flat-after-json "$WORK/flat-after.json" \
    --purge-json "$WORK/purge.json" --timing "$WORK/timing" --added "$ADD" || fail "report failed"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); r=d["requests"]; n=len(d["items"]); print(f"worst case (--older-than 1s --force, every session stale): {sum(r.values())} requests {r}, {n} items")' "$WORK/worst.json"
echo "timed plan: ${PLAN_ARGS[*]}"
echo "(median_s: wall time of a fresh process, spawn to exit; figures in parentheses are single runs."
echo " requests: HTTP attempts counted by a botocore before-send hook, debris's own count for debris.)"
echo "total run: $(($(date +%s) - T_START))s"
exit 0
