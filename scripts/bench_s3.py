#!/usr/bin/env python3
"""Helpers for scripts/bench_s3.sh: fill an S3/RGW bucket, list it flat, walk it like 2.8's purge, report.

Why a helper: the S3 cost benchmark needs a bucket that looks like a real registry's (tens of
thousands of objects, upload sessions whose ``data`` is an incomplete multipart upload, orphaned
multipart uploads) and two baselines to hold ``debris plan`` against, each counted the way debris
counts itself (a botocore ``before-send`` hook: one per HTTP attempt, retries included) and each
run in its own Python process that imports boto3, as debris does, so wall times compare fairly.

Subcommands (all take --endpoint, --bucket, --root; credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY):

  populate SRC      create the bucket; upload every file of the local registry tree SRC (the
                    rootdirectory, as written by scripts/gen_store.py) as ROOT/<relative path>,
                    on a bounded thread pool. An upload session's ``data`` becomes what the s3
                    driver leaves: an incomplete multipart upload (1-2 small parts; none for an
                    empty POST-only session), not an object. Then --orphans more multipart uploads
                    on ``…/_uploads/<uuid>/data`` whose session objects are gone. One JSON line.
  flat-list         ListObjectsV2 without delimiter over all of ROOT/, paginated. One JSON line.
  purge-walk        what distribution 2.8's upload purge reads (registry/storage/purgeuploads.go
                    with the s3-aws driver's own Walk, driver/s3-aws/s3.go doWalk): one delimiter
                    ListObjectsV2 (MaxKeys 1000, paginated) per directory under repositories/,
                    depth first in sorted order, skipping every directory whose name starts with
                    ``_`` except ``_uploads``; one GetObject per ``startedat`` with an upload UUID
                    in its path. Sequential, like the Go code. One JSON line.
  add-layers        PUT --count new blobs (blobs/sha256/<2hex>/<hex>/data) and their layer links
                    (repositories/REPO/_layers/sha256/<hex>/link) into one repository.
  report            read the measurements bench_s3.sh collected and print the table, PASS/MISS
                    and the raw request dicts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime

V2 = "docker/registry/v2"
_SESSION_DATA = re.compile(r"(?:^|/)_uploads/[0-9a-fA-F-]{36}/data$")
# github.com/docker/distribution/uuid.Parse: the 36-character hyphenated form.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
LIST_MAX = 1000  # the s3-aws driver's listMax


# -- S3 client with request counting ---------------------------------------------------------------


class Counted:
    """A boto3 S3 client configured like debris's S3Store, counting HTTP requests by operation."""

    def __init__(self, endpoint: str, workers: int = 8):
        import boto3
        import botocore.config

        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 8},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            max_pool_connections=max(1, workers) * 2,
            connect_timeout=10,
            read_timeout=60,
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
        )
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **_kw) -> None:
        op = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.counts[op] += 1

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.counts.items()))


def _prefix(root: str) -> str:
    root = root.strip("/")
    return f"{root}/" if root else ""


def _emit(doc: dict) -> None:
    print(json.dumps(doc, sort_keys=True))


def _bounded(pool: ThreadPoolExecutor, jobs: Iterable[Callable[[], int]], limit: int) -> tuple[int, int]:
    """Run jobs on pool with at most ``limit`` in flight; (jobs done, sum of their results). Fails fast."""
    pending: set[Future] = set()
    done_n = total = 0

    def drain(until: int) -> None:
        nonlocal pending, done_n, total
        while len(pending) > until:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                total += f.result()  # re-raises the first failure
                done_n += 1

    for job in jobs:
        drain(limit - 1)
        pending.add(pool.submit(job))
    drain(0)
    return done_n, total


# -- populate ---------------------------------------------------------------------------------------


def cmd_populate(a: argparse.Namespace) -> int:
    src = os.path.abspath(a.src)
    if not os.path.isdir(os.path.join(src, V2)):
        print(f"bench_s3: {src} holds no {V2}", file=sys.stderr)
        return 1
    s3 = Counted(a.endpoint, a.workers)
    c = s3.client
    prefix = _prefix(a.root)
    rng = random.Random(a.seed)
    t0 = time.monotonic()
    c.create_bucket(Bucket=a.bucket)

    objects: list[str] = []
    sessions: list[str] = []
    repos: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        if "_layers" in dirnames:  # a repository (2.8's catalog rule)
            repos.append(os.path.relpath(dirpath, os.path.join(src, V2, "repositories")))
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            (sessions if _SESSION_DATA.search(rel) else objects).append(rel)

    def put(rel: str) -> Callable[[], int]:
        def job() -> int:
            with open(os.path.join(src, rel), "rb") as f:
                body = f.read()
            c.put_object(Bucket=a.bucket, Key=prefix + rel, Body=body)
            return len(body)

        return job

    def multipart(key: str, parts: list[bytes]) -> Callable[[], int]:
        def job() -> int:
            up = c.create_multipart_upload(Bucket=a.bucket, Key=key)
            for i, part in enumerate(parts, 1):
                c.upload_part(Bucket=a.bucket, Key=key, UploadId=up["UploadId"], PartNumber=i, Body=part)
            return len(parts)

        return job

    # Every random choice is made here, in one thread: the same seed gives the same bucket.
    mp_jobs: list[Callable[[], int]] = []
    n_empty = 0
    for rel in sessions:
        with open(os.path.join(src, rel), "rb") as f:
            body = f.read()
        if not body:
            n_empty += 1  # a bare POST: the driver created the multipart upload, nothing was written
            mp_jobs.append(multipart(prefix + rel, []))
        elif len(body) >= 2 and rng.random() < 0.5:
            cut = rng.randrange(1, len(body))
            mp_jobs.append(multipart(prefix + rel, [body[:cut], body[cut:]]))
        else:
            mp_jobs.append(multipart(prefix + rel, [body]))
    orphans = []
    for _ in range(a.orphans):
        repo = rng.choice(repos)
        u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        key = f"{prefix}{V2}/repositories/{repo}/_uploads/{u}/data"
        orphans.append(key)
        mp_jobs.append(multipart(key, [rng.randbytes(512 * rng.randint(1, 8))]))

    with ThreadPoolExecutor(max_workers=a.workers, thread_name_prefix="populate") as pool:
        n_obj, n_bytes = _bounded(pool, (put(r) for r in objects), a.workers * 4)
        t_obj = time.monotonic() - t0
        n_mp, n_parts = _bounded(pool, mp_jobs, a.workers * 4)

    # The repository that holds the most upload sessions: its _uploads is walked by every plan.
    per_repo = Counter(rel.split("/_uploads/")[0].removeprefix(f"{V2}/repositories/") for rel in sessions)
    busiest = per_repo.most_common(1)[0][0] if per_repo else repos[0]
    _emit(
        {
            "objects": n_obj,
            "object_bytes": n_bytes,
            "repositories": len(repos),
            "session_multipart_uploads": len(sessions),
            "empty_multipart_uploads": n_empty,
            "orphan_multipart_uploads": len(orphans),
            "multipart_uploads": n_mp,
            "parts": n_parts,
            "busiest_repo": busiest,
            "objects_seconds": round(t_obj, 1),
            "seconds": round(time.monotonic() - t0, 1),
            "requests": s3.requests(),
        }
    )
    return 0


# -- add-layers -------------------------------------------------------------------------------------


def cmd_add_layers(a: argparse.Namespace) -> int:
    s3 = Counted(a.endpoint, a.workers)
    c = s3.client
    prefix = _prefix(a.root)
    rng = random.Random(a.seed)
    t0 = time.monotonic()
    items = []
    for _ in range(a.count):
        body = rng.randbytes(64 + rng.randrange(2048))
        h = hashlib.sha256(body).hexdigest()
        items.append((f"{prefix}{V2}/blobs/sha256/{h[:2]}/{h}/data", body))
        items.append((f"{prefix}{V2}/repositories/{a.repo}/_layers/sha256/{h}/link", f"sha256:{h}".encode()))

    def put(key: str, body: bytes) -> Callable[[], int]:
        return lambda: (c.put_object(Bucket=a.bucket, Key=key, Body=body), 1)[1]

    with ThreadPoolExecutor(max_workers=a.workers, thread_name_prefix="add") as pool:
        n, _ = _bounded(pool, (put(k, b) for k, b in items), a.workers * 4)
    _emit(
        {"repo": a.repo, "blobs": a.count, "links": a.count, "objects": n, "seconds": round(time.monotonic() - t0, 1)}
    )
    return 0


# -- flat listing -----------------------------------------------------------------------------------


def cmd_flat_list(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    s3 = Counted(a.endpoint)
    n = pages = 0
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=_prefix(a.root)):
        pages += 1
        n += len(page.get("Contents", ()))
    _emit({"objects": n, "pages": pages, "requests": s3.requests(), "wall_s": round(time.monotonic() - t0, 3)})
    return 0


# -- distribution 2.8's purge walk ------------------------------------------------------------------


class PurgeWalk:
    """getOutstandingUploads() of distribution 2.8 over the s3-aws driver, request for request."""

    def __init__(self, s3: Counted, bucket: str, root: str):
        self.s3 = s3
        self.bucket = bucket
        self.prefix = _prefix(root)
        self.dirs_listed = 0
        self.dirs_by_kind: Counter[str] = Counter()  # tree (repositories and namespaces), uploads, session
        self.startedat_read = 0
        self.startedat_unparseable = 0
        self.uploads: dict[str, float | None] = {}  # uuid -> startedAt (epoch) or None (missing)

    def run(self) -> None:
        self._walk(f"{self.prefix}{V2}/repositories/")

    def _walk(self, dir_prefix: str) -> None:
        self.dirs_listed += 1
        if dir_prefix.endswith("/_uploads/"):
            self.dirs_by_kind["uploads"] += 1
        elif "/_uploads/" in dir_prefix:
            self.dirs_by_kind["session"] += 1
        else:
            self.dirs_by_kind["tree"] += 1
        pages = self.s3.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=dir_prefix, Delimiter="/", PaginationConfig={"PageSize": LIST_MAX}
        )
        for page in pages:
            # doWalk handles each page as it comes: directories and files of the page, sorted by path.
            infos = [(cp["Prefix"][:-1], True) for cp in page.get("CommonPrefixes", ())]
            infos += [(o["Key"], False) for o in page.get("Contents", ())]
            for path, is_dir in sorted(infos):
                name = path.rsplit("/", 1)[-1]
                if name.startswith("_") and is_dir and name != "_uploads":
                    continue  # ErrSkipDir: _layers, _manifests
                self._visit(path, name)
                if is_dir:
                    self._walk(path + "/")

    def _visit(self, path: str, name: str) -> None:
        parts = path.split("/")
        found = next((p for p in reversed(parts) if _UUID.match(p)), None)
        if found is None:
            return
        u = found.lower()
        self.uploads.setdefault(u, None)
        if name == "startedat":
            self.startedat_read += 1
            body = self.s3.client.get_object(Bucket=self.bucket, Key=path, Range="bytes=0-")["Body"].read()
            try:
                self.uploads[u] = datetime.fromisoformat(body.decode().strip().replace("Z", "+00:00")).timestamp()
            except (UnicodeDecodeError, ValueError):
                self.startedat_unparseable += 1


def cmd_purge_walk(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    s3 = Counted(a.endpoint, 1)
    w = PurgeWalk(s3, a.bucket, a.root)
    w.run()
    _emit(
        {
            "dirs_listed": w.dirs_listed,
            "dirs_by_kind": dict(w.dirs_by_kind),
            "startedat_read": w.startedat_read,
            "startedat_unparseable": w.startedat_unparseable,
            "uploads_seen": len(w.uploads),
            "uploads_without_startedat": sum(1 for v in w.uploads.values() if v is None),
            "requests": s3.requests(),
            "wall_s": round(time.monotonic() - t0, 3),
        }
    )
    return 0


# -- report ---------------------------------------------------------------------------------------


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.loads(f.read())


def _fields(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def _total(req: dict[str, int]) -> int:
    return sum(req.values())


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(set(before) | set(after))
        if after.get(k, 0) != before.get(k, 0)
    }


def cmd_report(a: argparse.Namespace) -> int:
    pop = _load(a.populate_json)
    plan, plan2, after = _load(a.plan_json), _load(a.plan_json_2), _load(a.plan_after_json)
    flat, flat_after, purge = _load(a.flat_json), _load(a.flat_after_json), _load(a.purge_json)
    timing = _fields(a.timing)  # bench_util --format fields: the debris line, then the flat-list line
    (p_wall, p_rss, p_min, p_max, p_cpu, p_runs), (f_wall, f_rss, f_min, f_max, f_cpu, f_runs) = timing[:2]

    req_plan, req_after, req_flat, req_purge = plan["requests"], after["requests"], flat["requests"], purge["requests"]
    t_plan, t_after, t_flat, t_purge = map(_total, (req_plan, req_after, req_flat, req_purge))
    added = t_after - t_plan
    ratio_req = t_plan / t_purge if t_purge else float("inf")
    ratio_wall = float(p_wall) / float(f_wall) if float(f_wall) else float("inf")

    rows = [
        ("what", "requests", "median_s", "cpu_s", "rss_MiB", "notes"),
        ("1. debris plan --json", t_plan, p_wall, p_cpu, p_rss, f"{p_runs} runs, min {p_min} max {p_max}"),
        ("2. flat ListObjectsV2 of the root", t_flat, f_wall, f_cpu, f_rss,
         f"{f_runs} runs, min {f_min} max {f_max}; {flat['objects']} objects, {flat['pages']} pages"),
        ("3. distribution 2.8 purge walk", t_purge, f"({purge['wall_s']})", "-", "-",
         f"1 sequential run; {purge['dirs_listed']} dirs listed, {purge['startedat_read']} startedat GETs"),
        (f"4. debris plan, +{a.added} links+blobs", t_after, "-", "-", "-", "one run, same bucket"),
        ("   flat listing, same change", _total(flat_after["requests"]), f"({flat_after['wall_s']})", "-", "-",
         f"{flat_after['objects']} objects, {flat_after['pages']} pages (for contrast)"),
    ]  # fmt: skip
    print("== S3 cost: requests and wall time ==")
    for r in rows:
        print(f"{r[0]:<38} {r[1]:>9} {r[2]:>10} {r[3]:>8} {r[4]:>8}  {r[5]}")

    targets = [
        ("added links+blobs cost no request", added <= 0, f"{t_plan} -> {t_after} requests ({added:+d})", "+0"),
        ("debris requests <= 1/2 of 2.8 walk", ratio_req <= 0.5, f"{t_plan} / {t_purge} = {ratio_req:.2f}", "<= 0.50"),
        ("debris wall <= flat listing wall", ratio_wall <= 1.0, f"{p_wall}s / {f_wall}s = {ratio_wall:.2f}", "<= 1.00"),
    ]
    ratio_cpu = float(p_cpu) / float(f_cpu) if float(f_cpu) else float("inf")
    print()
    print(f"{'target':<38} {'measured':<32} {'want':<8} result")
    misses = 0
    for name, ok, measured, want in targets:
        misses += not ok
        print(f"{name:<38} {measured:<32} {want:<8} {'PASS' if ok else 'MISS'}")
    print(f"(cpu, less sensitive to load: debris {p_cpu}s / flat {f_cpu}s = {ratio_cpu:.2f})")

    print()
    print("raw requests (HTTP attempts by S3 operation, retries included):")
    same = "same as run 1" if plan2["requests"] == req_plan else f"{json.dumps(plan2['requests'])} (differs: retries?)"
    print(f"  debris plan, run 1          {json.dumps(req_plan)}")
    print(f"  debris plan, run 2          {same}")
    print(f"  debris plan, +links+blobs   {json.dumps(req_after)}  change: {json.dumps(_diff(req_plan, req_after))}")
    print(f"  flat listing                {json.dumps(req_flat)}")
    print(f"  flat listing, +links+blobs  {json.dumps(flat_after['requests'])}")
    print(f"  2.8 purge walk              {json.dumps(req_purge)}")

    kinds = purge.get("dirs_by_kind", {})
    tree, uploads, session = kinds.get("tree", 0), kinds.get("uploads", 0), kinds.get("session", 0)
    print()
    print("where the requests go (directory counts from the 2.8 walk, which lists the same tree):")
    print(
        f"  debris: ListObjectsV2 {req_plan.get('ListObjectsV2', 0)} = 1 layout check on open + 4 above "
        f"repositories/ (root, docker/, docker/registry/, v2/; blobs/ pruned) + 1 per 1000 repositories "
        f"(repositories/ listed with the delimiter '/_') + one flat _uploads/ listing per repository "
        f"({pop['repositories']}) = {1 + 4 + -(-pop['repositories'] // 1000) + pop['repositories']} expected; "
        f"GetObject {req_plan.get('GetObject', 0)} (one per startedat: {purge['startedat_read']}); "
        f"ListParts {req_plan.get('ListParts', 0)} (one per multipart upload: {pop['multipart_uploads']}); "
        f"ListMultipartUploads {req_plan.get('ListMultipartUploads', 0)}"
    )
    print(
        f"  2.8:    ListObjectsV2 {req_purge.get('ListObjectsV2', 0)} = {tree} repository and namespace dirs + "
        f"{uploads} _uploads/ + {session} inside sessions (<uuid>/, hashstates/, hashstates/sha256/); "
        f"GetObject {req_purge.get('GetObject', 0)} (startedat)"
    )
    print()
    active = plan.get("active_sessions") or {}
    print(
        f"debris plan found: {json.dumps({k: v.get('count') for k, v in (plan.get('totals') or {}).items()})}; "
        f"active sessions {active.get('count', 0)}, held back {len(plan.get('held_back') or [])}, "
        f"errors {len(plan.get('errors') or [])}"
    )
    print(
        f"2.8 purge walk saw {purge['uploads_seen']} upload UUIDs ({purge['uploads_without_startedat']} without "
        f"startedat: never purged); it cannot see the {pop['multipart_uploads']} multipart uploads and never aborts them"
    )
    errors = (plan.get("errors") or []) + (after.get("errors") or [])
    if errors:
        print(f"debris plan errors: {json.dumps(errors)[:2000]}")
    print()
    if misses:
        print(f"RESULT: MISS on {misses} target(s) (this is a report: exit status 0)")
    else:
        print("RESULT: PASS, all targets met")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def s3_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:7480")
        sp.add_argument("--bucket", required=True)
        sp.add_argument("--root", default="registry", help="the s3 driver's rootdirectory (default registry)")

    sp = sub.add_parser("populate", help="create and fill the bucket from a local registry tree")
    s3_args(sp)
    sp.add_argument("src", metavar="SRC", help="local rootdirectory (holds docker/registry/v2)")
    sp.add_argument("--orphans", type=int, default=50, help="orphaned multipart uploads (default 50)")
    sp.add_argument("--workers", type=int, default=12, help="parallel requests (default 12)")
    sp.add_argument("--seed", type=int, default=1)
    sp.set_defaults(fn=cmd_populate)

    sp = sub.add_parser("add-layers", help="add blobs and their layer links to one repository")
    s3_args(sp)
    sp.add_argument("--repo", required=True)
    sp.add_argument("--count", type=int, default=2000)
    sp.add_argument("--workers", type=int, default=12)
    sp.add_argument("--seed", type=int, default=2)
    sp.set_defaults(fn=cmd_add_layers)

    sp = sub.add_parser("flat-list", help="ListObjectsV2 of ROOT/ without delimiter")
    s3_args(sp)
    sp.set_defaults(fn=cmd_flat_list)

    sp = sub.add_parser("purge-walk", help="the requests of distribution 2.8's upload purge walk")
    s3_args(sp)
    sp.set_defaults(fn=cmd_purge_walk)

    sp = sub.add_parser("report", help="print the table from the collected measurements")
    for name in (
        "populate-json",
        "plan-json",
        "plan-json-2",
        "plan-after-json",
        "flat-json",
        "flat-after-json",
        "purge-json",
        "timing",
    ):
        sp.add_argument(f"--{name}", required=True)
    sp.add_argument("--added", type=int, default=2000)
    sp.set_defaults(fn=cmd_report)

    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
