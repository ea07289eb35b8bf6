#!/usr/bin/env bash
# Benchmark: `debris audit` against `garbage-collect --dry-run` on the same Ceph RGW bucket.
#
# Why: on S3 an audit is a walk of the whole bucket plus a GET per revision link and per manifest.
# debris lists each blob prefix and each top-level repository flat, in parallel, and reads on a
# bounded pool; 2.8's GC walks the bucket one delimiter listing per directory, sequentially. This
# prints both wall times (fresh processes, interleaved, median of BENCH_RUNS after one warm-up),
# peak RSS, debris's own request count, and whether both found the same eligible blobs, for
# both modes. A report, not a test: exit 1 only when something could not be measured.
#
# How: scripts/ceph.sh starts a throw-away RGW (stopped at exit, by the PIDs it recorded);
# scripts/gen_store.py writes a registry tree and `bench_s3.py populate` uploads it as
# BUCKET/registry/... (upload sessions' data as incomplete multipart uploads, as the s3 driver
# leaves them); the registry's config points its s3 driver at that bucket.
#
# Usage: scripts/bench_audit_s3.sh
# Environment: BENCH_RUNS=3; BENCH_GEN_ARGS (default --repos 500 --blobs 8500 --sessions 300,
# about 21,000 objects); BENCH_KEEP=1 keeps the work directory; DOCKER_REGISTRY (default
# /usr/bin/docker-registry).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${BENCH_RUNS:-3}
KEEP=${BENCH_KEEP:-0}
read -r -a GEN_ARGS <<<"${BENCH_GEN_ARGS:---repos 500 --blobs 8500 --sessions 300}"
BUCKET=debris-bench-audit
ROOTDIR=registry
GC=${DOCKER_REGISTRY:-/usr/bin/docker-registry}

case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;; esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/debris-bench-audit-s3.XXXXXX")
CEPH_STARTED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    if [[ "$CEPH_STARTED" == 1 ]]; then
        bash "$HERE/ceph.sh" stop "$WORK/ceph" 2>>"$WORK/ceph.log" || echo "bench_audit_s3: ceph.sh stop failed" >&2
    fi
    if [[ "$KEEP" == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() {
    echo "bench_audit_s3: $*; no figures" >&2
    exit 1
}

# shellcheck source=scripts/bench_lib.sh
source "$HERE/bench_lib.sh"
find_debris
[[ -x $GC ]] || fail "$GC not installed (apt-get install docker-registry)"
echo "debris: $HOW"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

CEPH_STARTED=1
start_rgw "$WORK/ceph" "$WORK/ceph.log" || fail "scripts/ceph.sh start failed"
echo "rgw: $ENDPOINT, up in ${RGW_BRINGUP}s"

"$PY" "$HERE/gen_store.py" "$WORK/tree" "${GEN_ARGS[@]}" >/dev/null || fail "gen_store.py failed"
"$PY" "$HERE/bench_s3.py" populate --endpoint "$ENDPOINT" --bucket "$BUCKET" --root "$ROOTDIR" "$WORK/tree" \
    --orphans 0 >"$WORK/populate.json" || fail "populate failed"
rm -rf "$WORK/tree"
"$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print("bucket: {objects} objects, {repositories} repositories, {multipart_uploads} multipart uploads".format(**d))' "$WORK/populate.json"

cat >"$WORK/config.yml" <<CFG
version: 0.1
log:
  level: error
storage:
  s3:
    regionendpoint: $ENDPOINT
    region: us-east-1
    bucket: $BUCKET
    rootdirectory: /$ROOTDIR
    accesskey: $AWS_ACCESS_KEY_ID
    secretkey: $AWS_SECRET_ACCESS_KEY
    forcepathstyle: true
    secure: false
    v4auth: true
CFG

# The registry binary crashes on start with AWS_CA_BUNDLE set; debris is given the same environment.
GC_CMD=(env -u AWS_CA_BUNDLE "$GC" garbage-collect --dry-run)
AUDIT=("${DEBRIS[@]}" audit "rgw://$BUCKET/$ROOTDIR" --endpoint-url "$ENDPOINT" --json)
for mode in all untagged; do
    flags=()
    [[ $mode == untagged ]] && flags=(--delete-untagged)
    "${AUDIT[@]}" "${flags[@]}" >"$WORK/audit.json" || fail "debris audit failed"
    "${GC_CMD[@]}" "${flags[@]}" "$WORK/config.yml" >"$WORK/gc.out" 2>"$WORK/gc.err" || {
        tail -5 "$WORK/gc.err" >&2
        fail "garbage-collect --dry-run failed"
    }
    "$PY" "$HERE/bench_util.py" -k "$RUNS" --warmup 1 --format fields -- \
        "${AUDIT[@]}" "${flags[@]}" --- "${GC_CMD[@]}" "${flags[@]}" "$WORK/config.yml" \
        >"$WORK/t" 2>"$WORK/err" || { cat "$WORK/err" >&2; fail "timing failed"; }
    read -r d_wall d_rss _ <<<"$(sed -n 1p "$WORK/t")"
    read -r g_wall g_rss _ <<<"$(sed -n 2p "$WORK/t")"
    "$PY" - "$WORK/audit.json" "$WORK/gc.out" "$mode" "$d_wall" "$d_rss" "$g_wall" "$g_rss" <<'EOF'
import json, re, sys
audit, gc_out, mode, d_wall, d_rss, g_wall, g_rss = sys.argv[1:]
d = json.load(open(audit))
text = open(gc_out).read()
gc_blobs = set(re.findall(r"^blob eligible for deletion: (\S+)$", text, re.M))
requests = d.get("requests", {})
same = "same" if set(d["blobs_eligible"]) == gc_blobs else "DIFFERENT"
ratio = float(d_wall) / float(g_wall)
print(
    f"audit {mode:9} debris {float(d_wall):7.3f}s {float(d_rss):6.1f} MiB {sum(requests.values()):6} requests | "
    f"garbage-collect --dry-run {float(g_wall):7.3f}s {float(g_rss):6.1f} MiB | ratio {ratio:.2f}x | "
    f"eligible blobs: debris {len(d['blobs_eligible'])}, GC {len(gc_blobs)} ({same})"
)
print(f"  debris requests: {requests}")
EOF
done
