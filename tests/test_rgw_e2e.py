"""End to end on Ceph RGW: Debian's real docker-registry on its s3 driver, real debris, real quota.

On S3 an upload's ``data`` is an incomplete multipart upload, not an object, and the
registry's own purge (``purgeuploads.go``) deletes a session's objects but never aborts it:
the parts stay, billed and counted against quota. This module makes that debris for real
(abandoned sessions, and orphans made exactly as the purge leaves them), cleans it with
debris while the registry keeps serving, and checks with independent means that nothing else
was touched: our client and skopeo verify every image, the registry's own
``garbage-collect --dry-run`` marks the same set, boto3 lists what is left, and
``radosgw-admin bucket stats`` shows the space come back.

Ageing, and how the live upload stays safe. S3 objects cannot be back-dated, so debris is made
stale by waiting ~2 s and planning with ``--older-than 1s --force``. At that threshold a live
upload that has been quiet for 2 s is "stale" too, and no PATCH can reliably beat a 1 s
threshold, so the live upload is not protected by its age here. It is protected by what
protects a slow live upload in production: the gate's re-verification. The design:

1. ``debris plan --older-than 15m`` (the default floor, no ``--force``): nothing is planned, every
   session counts as active (the live one and all the debris, a few seconds old).
2. ``debris plan --older-than 1s --force --out plan.json``: the abandoned sessions, the orphans
   *and* the live session are planned (the live one is idle > 1 s).
3. The client PATCHes the live upload again: a new part (the driver completes and restarts the
   multipart upload, as it does for parts under 5 MiB) and a new hashstate object.
4. ``debris apply plan.json --confirm --force``: every item is re-observed; the live session no
   longer matches its fingerprint and must be *skipped as changed*, while everything else is
   deleted (objects) or aborted (multipart uploads).
5. The live upload is completed after the clean and its blob and image pull.

The quota incident is a second registry on its own bucket with a bucket quota just above its
usage, filled by abandoned uploads until a push fails with 500 UNKNOWN; ``debris clean``
must work over quota and give the space back.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from ceph import debris_env, requires_ceph
from ceph import run_debris as debris
from registry import (
    RegistryClient,
    RegistryHTTPError,
    abandon_upload,
    garbage_collect_dry_run,
    make_layer,
    push_sample_images,
    registry_on_rgw,
    requires_registry_tools,
    sha256_digest,
    skopeo_copy_to_dir,
)

pytestmark = [pytest.mark.rgw, pytest.mark.registry, requires_ceph, requires_registry_tools]

ROOTDIR = "registry"  # the s3 driver's rootdirectory, "/registry" in its config
V2 = f"{ROOTDIR}/docker/registry/v2"
#: Long enough that every piece of debris is idle more than 1 s by RGW's own timestamps.
SETTLE = 2.2


# -- helpers ----------------------------------------------------------------------------------


def session_prefix(repo: str, upload_id: str) -> str:
    return f"{V2}/repositories/{repo}/_uploads/{upload_id}/"


def session_objects(s3, bucket: str, repo: str, upload_id: str) -> dict[str, int]:
    """Objects of one session (S3 key -> size), by ListObjectsV2."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=session_prefix(repo, upload_id))
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def multipart_uploads(s3, bucket: str) -> dict[str, list[str]]:
    """Incomplete multipart uploads: S3 key -> upload ids."""
    out: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for u in page.get("Uploads", ()):
            out.setdefault(u["Key"], []).append(u["UploadId"])
    return out


def parts_bytes(s3, bucket: str, key: str, upload_ids: list[str]) -> int:
    total = 0
    for upload_id in upload_ids:
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
            total += sum(p["Size"] for p in page.get("Parts", ()))
    return total


def session_bytes(s3, bucket: str, repo: str, upload_id: str) -> int:
    """What a session holds, measured with boto3 alone: its objects plus the parts of its data."""
    data_key = session_prefix(repo, upload_id) + "data"
    objects = sum(session_objects(s3, bucket, repo, upload_id).values())
    return objects + parts_bytes(s3, bucket, data_key, multipart_uploads(s3, bucket).get(data_key, []))


def purge_session_objects(s3, bucket: str, repo: str, upload_id: str) -> list[str]:
    """What the registry's purge does on S3: delete the session's objects, leave its multipart upload open."""
    keys = sorted(session_objects(s3, bucket, repo, upload_id))
    assert keys, f"session {repo}/{upload_id} has no objects to purge"
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": False})
    assert not answer.get("Errors"), answer["Errors"]
    return keys


def idents(entries) -> set[tuple[str, str]]:
    return {(e["repository"], e["upload_id"]) for e in entries}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(ceph, tmp_path_factory):
    work = tmp_path_factory.mktemp("rgw-e2e")
    bucket = "registry-e2e"
    s3 = ceph.s3_client()
    env = debris_env(ceph)
    store = f"rgw://{bucket}/{ROOTDIR}"
    t0 = time.monotonic()
    with registry_on_rgw(ceph, bucket, work) as reg:
        c = RegistryClient(reg.url)
        # parts under 5 MiB: the s3 driver completes and restarts the multipart upload on each chunk
        images = push_sample_images(c, chunk_size=15000)
        pushed_at = time.monotonic() - t0
        # Complete pushes leave nothing in _uploads: no objects, no multipart uploads.
        assert multipart_uploads(s3, bucket) == {}

        # Abandoned sessions: POST only (an empty multipart upload), POST + one PATCH (one part).
        abandoned = {
            ("library/alpine", abandon_upload(c, "library/alpine")),
            ("team/sub/app", abandon_upload(c, "team/sub/app", [os.urandom(300_000)])),
            ("shared/one", abandon_upload(c, "shared/one", [os.urandom(200_000)])),
            ("multi/arch", abandon_upload(c, "multi/arch", [b"y" * 120_000])),
        }
        # A cancelled upload (DELETE): on S3, 2.8 aborts its multipart upload but leaves
        # hashstates/sha256/0 behind without startedat (the registry's purge never removes that).
        cancelled = c.start_upload("library/alpine")
        cancelled.patch(b"z" * 500)
        cancelled.cancel()
        cancelled_ident = ("library/alpine", cancelled.uuid)
        assert list(session_objects(s3, bucket, *cancelled_ident)) == [
            session_prefix(*cancelled_ident) + "hashstates/sha256/0"
        ]
        abandoned.add(cancelled_ident)
        # Orphans, as the registry's purge leaves them: objects gone, multipart upload open with its parts.
        orphans = {
            ("shared/two", abandon_upload(c, "shared/two", [os.urandom(250_000)])),
            ("library/alpine", abandon_upload(c, "library/alpine")),
        }
        orphan_parts = {}
        for repo, uid in orphans:
            data_key = session_prefix(repo, uid) + "data"
            orphan_parts[(repo, uid)] = parts_bytes(s3, bucket, data_key, multipart_uploads(s3, bucket)[data_key])
            purge_session_objects(s3, bucket, repo, uid)
            assert session_objects(s3, bucket, repo, uid) == {}
        assert sorted(orphan_parts.values()) == [0, 250_000]

        # The live upload: started and one chunk sent; PATCHed again between plan and apply.
        live_layer = make_layer("live", os.urandom(30_000))
        live = c.start_upload("team/sub/app")
        live.patch(live_layer[:10_000])
        live_ident = ("team/sub/app", live.uuid)

        time.sleep(SETTLE)
        measured = {ident: session_bytes(s3, bucket, *ident) for ident in abandoned | orphans | {live_ident}}
        gc_before = garbage_collect_dry_run(reg.config_path)

        t1 = time.monotonic()
        floor_plan = debris("plan", store, "--endpoint-url", ceph.endpoint, "--json", "--detailed-exitcode", env=env)
        plan_file = work / "plan.json"
        plan = debris(
            "plan", store, "--endpoint-url", ceph.endpoint, "--older-than", "1s", "--force",
            "--out", str(plan_file), "--json", env=env,
        )  # fmt: skip
        # The live client comes back: a new part and a new hashstate after the plan was made.
        live.patch(live_layer[10_000:20_000])
        stats_before = ceph.bucket_stats(bucket)
        apply = debris("apply", str(plan_file), "--confirm", "--force", "--json", env=env)
        stats_after = ceph.bucket_stats(bucket)
        debris_seconds = time.monotonic() - t1

        left_objects = {ident: session_objects(s3, bucket, *ident) for ident in abandoned | orphans | {live_ident}}
        left_multiparts = multipart_uploads(s3, bucket)
        gc_after = garbage_collect_dry_run(reg.config_path)
        yield {
            "ceph": ceph, "s3": s3, "bucket": bucket, "store": store, "env": env, "reg": reg, "client": c,
            "work": work, "images": images, "abandoned": abandoned, "cancelled": cancelled_ident, "orphans": orphans,
            "orphan_parts": orphan_parts, "live": live, "live_ident": live_ident, "live_layer": live_layer,
            "measured": measured, "floor_plan": floor_plan, "plan": plan, "plan_file": plan_file, "apply": apply,
            "stats_before": stats_before, "stats_after": stats_after, "left_objects": left_objects,
            "left_multiparts": left_multiparts, "gc_before": gc_before, "gc_after": gc_after,
            "timings": {"push": pushed_at, "debris": debris_seconds},
        }  # fmt: skip


def with_multipart(world) -> set[tuple[str, str]]:
    """The debris sessions that hold a multipart upload: all but the cancelled one."""
    return (world["abandoned"] - {world["cancelled"]}) | world["orphans"]


def _json(proc: subprocess.CompletedProcess, code: int = 0) -> dict:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


# -- the registry on RGW, cleaned while it serves ----------------------------------------------


def test_floor_threshold_plans_nothing_and_counts_everything_active(world):
    """At the default floor (15m, no --force) seconds-old debris and the live upload are all active."""
    plan = _json(world["floor_plan"])
    assert plan["items"] == []
    sessions = world["abandoned"] | world["orphans"] | {world["live_ident"]}
    assert plan["active_sessions"]["count"] == len(sessions)
    assert plan["errors"] == [] and plan["unknown"]["count"] == 0 and plan["held_back"] == []


def test_floor_plan_counts_active_bytes_with_their_parts(world):
    plan = _json(world["floor_plan"])
    assert plan["active_sessions"]["bytes"] == sum(world["measured"].values())


def test_plan_lists_sessions_and_orphans_with_their_bytes(world):
    plan = _json(world["plan"])
    assert json.loads(world["plan_file"].read_text()) == plan
    items = {(i["repository"], i["upload_id"]): i for i in plan["items"]}
    live = world["live_ident"]
    assert set(items) == world["abandoned"] | world["orphans"] | {live}
    assert plan["errors"] == [] and plan["unknown"]["count"] == 0 and plan["held_back"] == []
    assert plan["active_sessions"]["count"] == 0
    for ident, item in items.items():
        # Every byte boto3 sees for the session: its objects and the parts of its multipart upload.
        assert item["bytes"] == world["measured"][ident], ident
        files = sum(f["size"] for f in item["files"])
        parts = sum(p["size"] for m in item["multipart_uploads"] for p in m["parts"])
        assert item["bytes"] == files + parts
        if ident == world["cancelled"]:
            assert item["multipart_uploads"] == [] and item["flags"] == ["startedat_missing"]
            assert [f["path"].split("/_uploads/")[1] for f in item["files"]] == [f"{ident[1]}/hashstates/sha256/0"]
            continue
        assert len(item["multipart_uploads"]) == 1, ident
        session = f"docker/registry/v2/repositories/{ident[0]}/_uploads/{ident[1]}/"
        assert item["multipart_uploads"][0]["key"] == session + "data"
        assert all(p.startswith(session) for p in item["paths"])
    for ident in world["abandoned"] - {world["cancelled"]} | {live}:
        item = items[ident]
        assert item["class"] == "upload_session"
        names = {f["path"].rsplit("/", 1)[-1] for f in item["files"]}
        assert "startedat" in names and "0" in names  # startedat and hashstates/sha256/0
        assert item["flags"] == []
    # The PATCHed sessions' bytes include their parts.
    patched = {
        ident: items[ident]["multipart_uploads"][0]["bytes"] for ident in world["abandoned"] - {world["cancelled"]}
    }
    assert sorted(patched.values()) == [0, 120_000, 200_000, 300_000]
    assert items[live]["multipart_uploads"][0]["bytes"] == 10_000
    for ident in world["orphans"]:
        item = items[ident]
        assert item["class"] == "multipart_upload"
        assert item["files"] == [] and item["flags"] == []
        assert item["bytes"] == world["orphan_parts"][ident]
        assert "orphan multipart upload" in item["why"]
    assert plan["totals"]["multipart_upload"] == {
        "count": 2,
        "bytes": sum(world["orphan_parts"].values()),
    }
    assert plan["totals"]["upload_session"]["count"] == len(world["abandoned"]) + 1
    assert plan["bytes"] == sum(world["measured"].values())


def test_apply_deletes_and_aborts_them_and_skips_the_live_upload_as_changed(world):
    plan = _json(world["plan"])
    result = _json(world["apply"])
    debris_idents = world["abandoned"] | world["orphans"]
    assert result["confirmed"] is True
    assert idents(result["deleted"]) == debris_idents
    assert result["failed"] == [] and result["errors"] == [] and result["interrupted"] is False
    # The live upload was stale by the 1 s threshold when planned, but changed since: the gate skips it.
    assert idents(result["skipped"]) == {world["live_ident"]}
    assert result["skipped"][0]["reason"].startswith("changed since plan"), result["skipped"][0]
    planned = {(i["repository"], i["upload_id"]): i["bytes"] for i in plan["items"]}
    for d in result["deleted"]:
        assert d["bytes_freed"] == d["bytes"] == planned[(d["repository"], d["upload_id"])]
        aborted = [p for p in d["deleted_paths"] if "(multipart upload " in p]
        assert len(aborted) == (0 if (d["repository"], d["upload_id"]) == world["cancelled"] else 1), d
    assert result["bytes_freed"] == sum(planned[i] for i in debris_idents)
    assert result["bytes_freed"] == plan["bytes"] - planned[world["live_ident"]]


def test_nothing_of_the_debris_is_left_in_the_bucket(world):
    for ident in world["abandoned"] | world["orphans"]:
        assert world["left_objects"][ident] == {}, ident
        assert session_prefix(*ident) + "data" not in world["left_multiparts"], ident
    # Only the live upload is still open: its objects and its (restarted) multipart upload.
    live_data = session_prefix(*world["live_ident"]) + "data"
    assert list(world["left_multiparts"]) == [live_data]
    assert len(world["left_multiparts"][live_data]) == 1
    live_objects = world["left_objects"][world["live_ident"]]
    assert session_prefix(*world["live_ident"]) + "startedat" in live_objects
    # RGW's own accounting: the bucket shrank by exactly what debris says it freed.
    freed = _json(world["apply"])["bytes_freed"]
    assert world["stats_before"]["size"] - world["stats_after"]["size"] == freed
    assert world["stats_after"]["multipart_uploads"] == 1
    assert world["stats_before"]["multipart_uploads"] == 1 + len(with_multipart(world))


def test_json_reports_requests(world):
    for proc in (world["plan"], world["apply"], world["floor_plan"]):
        requests = _json(proc)["requests"]
        assert isinstance(requests, dict) and requests
        assert all(isinstance(n, int) and n > 0 for n in requests.values())
    assert _json(world["plan"])["requests"]["ListMultipartUploads"] >= 1
    applied = _json(world["apply"])["requests"]
    assert applied["AbortMultipartUpload"] == len(with_multipart(world))
    assert applied["DeleteObjects"] >= 1


def test_every_image_still_pulls_and_verifies(world):
    c = world["client"]
    for repo, tag in world["images"]:
        c.verify_image(repo, tag)
    for n, (repo, tag) in enumerate(world["images"]):
        skopeo_copy_to_dir(world["reg"].image_ref(repo, tag), world["work"] / f"pull{n}")


def test_gc_marks_the_same_set_as_before(world):
    before, after = world["gc_before"], world["gc_after"]
    assert before.blobs_marked > 0
    assert after.marked == before.marked
    assert after.marked_by_repo == before.marked_by_repo
    assert after.eligible_blobs == before.eligible_blobs == set()


def test_live_upload_completes_after_the_clean(world):
    c, live, layer = world["client"], world["live"], world["live_layer"]
    digest = live.complete(sha256_digest(layer), final_chunk=layer[20_000:])
    assert digest == sha256_digest(layer)
    assert c.get_blob("team/sub/app", digest) == layer
    c.push_image("team/sub/app", "after-clean", [layer], kind="oci")
    c.verify_image("team/sub/app", "after-clean")
    skopeo_copy_to_dir(world["reg"].image_ref("team/sub/app", "after-clean"), world["work"] / "live")
    # Its session is gone with the commit, as for any finished upload.
    assert session_objects(world["s3"], world["bucket"], *world["live_ident"]) == {}
    assert multipart_uploads(world["s3"], world["bucket"]) == {}


def test_second_plan_has_nothing_to_do(world):
    again = debris(
        "plan", world["store"], "--endpoint-url", world["ceph"].endpoint, "--older-than", "1s", "--force",
        "--json", "--detailed-exitcode", env=world["env"],
    )  # fmt: skip
    plan = _json(again)
    assert plan["items"] == [] and plan["active_sessions"]["count"] == 0


# -- a session PATCHed twice: its data is both an object and an open multipart upload -----------


def test_session_patched_twice_is_cleaned(ceph, tmp_path):
    bucket = f"twice-{uuid.uuid4().hex[:8]}"
    s3 = ceph.s3_client()
    env = debris_env(ceph)
    store = f"rgw://{bucket}/{ROOTDIR}"
    with registry_on_rgw(ceph, bucket, tmp_path) as reg:
        c = RegistryClient(reg.url)
        repo = "library/alpine"
        uid = abandon_upload(c, repo, [b"a" * 100_000, b"b" * 100_000])
        data_key = session_prefix(repo, uid) + "data"
        # The driver's doing, on RGW: data is a complete 100 kB object *and* an open upload of 200 kB.
        assert session_objects(s3, bucket, repo, uid)[data_key] == 100_000
        assert parts_bytes(s3, bucket, data_key, multipart_uploads(s3, bucket)[data_key]) == 200_000
        expected = session_bytes(s3, bucket, repo, uid)
        time.sleep(SETTLE)
        aged = ("--endpoint-url", ceph.endpoint, "--older-than", "1s", "--force", "--json")
        plan = _json(debris("plan", store, *aged, env=env))
        assert idents(plan["items"]) == {(repo, uid)}
        assert plan["bytes"] == expected  # the 100 kB object and the 200 kB of parts, both stored
        result = _json(debris("clean", store, *aged, "--confirm", env=env))
        assert idents(result["deleted"]) == {(repo, uid)}
        assert result["bytes_freed"] == expected
        assert session_objects(s3, bucket, repo, uid) == {}
        assert multipart_uploads(s3, bucket) == {}
        c.push_image(repo, "after", [make_layer("after", b"after")])


# -- the quota incident -----------------------------------------------------------------------


def test_quota_incident_clean_works_over_quota_and_frees_space(ceph, tmp_path):
    """Bucket quota just above usage; abandoned uploads with parts fill it; pushes fail with 500 UNKNOWN.

    ``debris clean --registry-config`` (credentials from the registry's own config.yml, as on-call
    would run it) must work while the bucket is over quota and give the space back: RGW's
    bucket stats drop, a PUT refused before is accepted, and the push that failed succeeds.
    """
    bucket = f"quota-{uuid.uuid4().hex[:8]}"
    s3 = ceph.s3_client(retries={"max_attempts": 1})
    with registry_on_rgw(ceph, bucket, tmp_path / "reg") as reg:
        c = RegistryClient(reg.url)
        base = c.push_image("library/alpine", "3.19", [make_layer("base", os.urandom(50_000))])
        headroom = 1024 * 1024
        ceph.set_bucket_quota(bucket, ceph.bucket_stats(bucket)["size_actual"] + headroom)

        abandoned = {("library/alpine", abandon_upload(c, "library/alpine", [os.urandom(300_000)])) for _ in range(3)}
        failure = None
        for n in range(8):
            layer = make_layer(f"big{n}", os.urandom(200_000))
            try:
                c.push_image("library/alpine", f"big{n}", [layer])
            except RegistryHTTPError as e:
                failure = e
                break
        assert failure is not None, f"8 pushes of 200 kB never failed: {ceph.bucket_stats(bucket)}"
        assert (failure.status, failure.codes) == (500, ["UNKNOWN"]), failure
        assert "QuotaExceeded" in reg.log_path.read_text(errors="replace")

        probe = b"p" * (256 * 1024)
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket=bucket, Key="probe-before", Body=probe)
        assert refused.value.response["Error"]["Code"] == "QuotaExceeded"
        full = ceph.bucket_stats(bucket)

        time.sleep(SETTLE)
        clean = debris(
            "clean", "--registry-config", str(reg.config_path), "--older-than", "1s", "--force", "--confirm",
            "--json", env=debris_env(None),
        )  # fmt: skip
        result = _json(clean)
        after = ceph.bucket_stats(bucket)
        assert result["failed"] == [] and result["skipped"] == [] and result["errors"] == []
        assert abandoned <= idents(result["deleted"])
        assert result["bytes_freed"] >= 3 * 300_000
        assert full["size"] - after["size"] == result["bytes_freed"]
        assert isinstance(result.get("requests"), dict) and result["requests"]["AbortMultipartUpload"] >= 3
        # Everything under _uploads is gone (nothing was live in this registry).
        left = s3.list_objects_v2(Bucket=bucket, Prefix=f"{V2}/repositories/library/alpine/_uploads/")
        assert "Contents" not in left
        assert multipart_uploads(s3, bucket) == {}

        s3.put_object(Bucket=bucket, Key="probe-after", Body=probe)
        s3.delete_object(Bucket=bucket, Key="probe-after")
        c.push_image("library/alpine", "big", [layer])
        c.verify_image("library/alpine", "big")
        c.verify_image("library/alpine", base)
        skopeo_copy_to_dir(reg.image_ref("library/alpine", "big"), tmp_path / "pull")
