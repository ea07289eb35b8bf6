"""`debris audit` on Ceph RGW, judged against the registry's own garbage-collect on the same bucket.

Debian's docker-registry (distribution 2.8) on its s3 driver writes the store into a real RGW
bucket through the same scenario as tests/test_audit.py (shared layers, an OCI index, a Docker
manifest list, a nested index, untagged revisions, a manifest deleted by digest), plus one
abandoned chunked upload (an upload session whose ``data`` is an open multipart upload). Then
``garbage-collect --dry-run [--delete-untagged]`` runs against the registry's config, and debris
audits the same bucket: by ``--registry-config`` (the CLI, as on-call would run it), by
``rgw://BUCKET/ROOT`` (the store API, and the CLI) — and must agree with GC exactly, except for
the one deliberate difference: 2.8 marks one level of a kept index and sweeps its untagged
children's layers, debris keeps a kept index's children and everything they reference.

Everything debris runs happens between two full listings of the bucket (objects with sizes, ETags
and mtimes; multipart uploads with their parts), which must be identical: the audit only reads.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from audit_scenario import AUDIT_JSON_KEYS, check_delete_untagged, push_scenario

from debris import audit
from debris.stores import open_store

from ceph import debris_env, requires_ceph
from ceph import run_debris as debris
from registry import (
    RegistryClient,
    RegistryHTTPError,
    abandon_upload,
    garbage_collect_dry_run,
    registry_on_rgw,
    requires_registry_tools,
)

pytestmark = [pytest.mark.rgw, pytest.mark.registry, requires_ceph, requires_registry_tools]

ROOTDIR = "registry"  # the s3 driver's rootdirectory, "/registry" in its config
BLOBS = f"{ROOTDIR}/docker/registry/v2/blobs/"
ABANDONED_REPO = "app"
ABANDONED_BYTES = 150_000  # one PATCH: one part of the session's open multipart upload
#: What an audit may ask S3 for: listings and reads only.
READ_OPERATIONS = {"ListObjectsV2", "ListMultipartUploads", "ListParts", "GetObject", "HeadObject", "HeadBucket"}


def bucket_state(s3, bucket: str) -> tuple[dict, dict]:
    """Every object (key -> size, ETag, LastModified) and every multipart upload with its parts."""
    objects = {
        o["Key"]: (o["Size"], o["ETag"], o["LastModified"])
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", ())
    }
    uploads = {}
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for u in page.get("Uploads", ()):
            parts = [
                (p["PartNumber"], p["Size"], p["ETag"])
                for pp in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
                for p in pp.get("Parts", ())
            ]
            uploads[(u["Key"], u["UploadId"])] = (u["Initiated"], parts)
    return objects, uploads


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def world(ceph, tmp_path_factory):
    work = tmp_path_factory.mktemp("audit-rgw")
    bucket = f"audit-{uuid.uuid4().hex[:8]}"
    s3 = ceph.s3_client()
    with registry_on_rgw(ceph, bucket, work, rootdirectory=ROOTDIR) as reg:
        c = RegistryClient(reg.url)
        pushed = push_scenario(c)
        abandoned = abandon_upload(c, ABANDONED_REPO, [b"a" * ABANDONED_BYTES])
        # The kept index children, as the registry serves them (each from the repository that has it).
        children: dict[str, bytes] = {}
        for child in pushed.kept_index_children:
            for repo in ("multi", "nested"):
                try:
                    children[child] = c.get_manifest(repo, child).body
                    break
                except RegistryHTTPError:
                    continue
        assert set(children) == pushed.kept_index_children
        gc = garbage_collect_dry_run(reg.config_path)
        gc_m = garbage_collect_dry_run(reg.config_path, delete_untagged=True)

        before = bucket_state(s3, bucket)
        # The CLI as on-call runs it: the store and its credentials from the registry's own config.
        by_config = {
            m: debris("audit", "--registry-config", str(reg.config_path), "--json", *flag, env=debris_env(None))
            for m, flag in ((False, ()), (True, ("--delete-untagged",)))
        }
        # rgw://BUCKET/ROOT through the store API (RGWStore), counting its S3 requests.
        by_rgw, requests = {}, {}
        for m in (False, True):
            st = open_store(
                f"rgw://{bucket}/{ROOTDIR}",
                endpoint_url=ceph.endpoint,
                access_key=ceph.access_key,
                secret_key=ceph.secret_key,
            )
            try:
                by_rgw[m] = audit.run(st, m)
                requests[m] = st.request_counts()
            finally:
                st.close()
        # rgw://BUCKET/ROOT through the CLI.
        rgw_cli = debris(
            "audit", f"rgw://{bucket}/{ROOTDIR}", "--endpoint-url", ceph.endpoint, "--json", env=debris_env(ceph)
        )
        after = bucket_state(s3, bucket)
    yield {
        "pushed": pushed, "abandoned": abandoned, "children": children, "gc": gc, "gc_m": gc_m,
        "before": before, "after": after, "by_config": by_config, "by_rgw": by_rgw, "requests": requests,
        "rgw_cli": rgw_cli,
    }  # fmt: skip


def _blob_sizes(world) -> dict[str, int]:
    """Blob digest -> size of its data object, from boto3's listing of the bucket."""
    objects, _ = world["before"]
    out = {}
    for key, (size, _etag, _mtime) in objects.items():
        if key.startswith(BLOBS) and key.endswith("/data"):
            alg, _prefix, hx, _data = key[len(BLOBS) :].split("/")
            out[f"{alg}:{hx}"] = size
    return out


# -- the audit is read-only -------------------------------------------------------------------


def test_bucket_unchanged_by_the_audits(world):
    objects, uploads = world["before"]
    assert world["after"] == world["before"]
    # The listing is not vacuous: the pushed store and the abandoned session's open multipart upload are in it.
    assert len(_blob_sizes(world)) > 20
    session = f"{ROOTDIR}/docker/registry/v2/repositories/{ABANDONED_REPO}/_uploads/{world['abandoned']}/"
    assert f"{session}startedat" in objects
    assert [(k, [p[1] for p in parts]) for (k, _), (_, parts) in uploads.items()] == [
        (f"{session}data", [ABANDONED_BYTES])
    ]


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_audit_sends_only_read_requests(world, delete_untagged):
    # The store API's own counts (rgw://) and what the CLI reports in its JSON (--registry-config).
    for requests in (world["requests"][delete_untagged], _json(world["by_config"][delete_untagged])["requests"]):
        assert requests.get("ListObjectsV2", 0) > 0 and requests.get("GetObject", 0) > 0
        assert set(requests) <= READ_OPERATIONS, requests
        assert requests["ListMultipartUploads"] >= 1  # the debris totals count the open upload


# -- the same answer by every way in ------------------------------------------------------------


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_registry_config_and_rgw_store_give_the_same_audit(world, delete_untagged):
    cli = _json(world["by_config"][delete_untagged])
    cli.pop("requests")  # added by the CLI on S3 (checked above)
    direct = json.loads(json.dumps(world["by_rgw"][delete_untagged].to_json()))
    assert cli == direct


def test_cli_audits_rgw_url(world):
    """``debris audit rgw://BUCKET/ROOT --endpoint-url URL`` (what its --help promises) gives the same audit."""
    via_url, via_config = _json(world["rgw_cli"]), _json(world["by_config"][False])
    via_url.pop("requests"), via_config.pop("requests")
    assert via_url == via_config


# -- judged against garbage-collect --------------------------------------------------------------


def test_eligible_sets_equal_garbage_collect(world):
    gc = world["gc"]
    data = _json(world["by_config"][False])
    assert set(data) == AUDIT_JSON_KEYS | {"requests"}
    assert set(data["blobs_eligible"]) == gc.eligible_blobs
    assert data["blobs_eligible"]  # the deleted manifest's blobs (and the re-tag's) are there to find
    assert data["manifests_eligible"] == [] and gc.eligible_manifests == set()
    assert data["problems"] == []
    sizes = _blob_sizes(world)
    # bytes are the data objects' sizes as S3 lists them
    assert data["bytes_reclaimable"] == sum(sizes[d] for d in data["blobs_eligible"])
    # blobs_marked: blobs in the bucket that stay
    assert data["blobs_marked"] == len(gc.marked & sizes.keys()) == len(sizes) - len(data["blobs_eligible"])


def test_delete_untagged_never_more_aggressive_and_differs_only_by_kept_index_children(world):
    data = _json(world["by_config"][True])
    check_delete_untagged(world["pushed"], world["gc_m"], data, world["children"])
    mine_b = set(data["blobs_eligible"])
    sizes = _blob_sizes(world)
    assert data["bytes_reclaimable"] == sum(sizes[d] for d in mine_b)


def test_gc_2_8_sweeps_a_kept_child_layer_that_debris_keeps(world):
    """The deliberate difference is real on S3 too: some kept child's layer is in GC's -m sweep."""
    kid_layers = set()
    for child, body in world["children"].items():
        kid_layers |= audit.parse_manifest(child, body).blobs
    assert kid_layers & world["gc_m"].eligible_blobs
    assert not kid_layers & set(_json(world["by_config"][True])["blobs_eligible"])


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_by_repository(world, delete_untagged):
    data = _json(world["by_config"][delete_untagged])
    # The deleted manifest's repository frees its own layer; shared layers are nobody's alone.
    assert data["by_repository"]["gone"] > 0
    assert sum(data["by_repository"].values()) <= data["bytes_reclaimable"]


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["all-revisions", "delete-untagged"])
def test_debris_totals_count_the_abandoned_upload(world, delete_untagged):
    objects, uploads = world["before"]
    totals = _json(world["by_config"][delete_untagged])["debris"]
    assert totals["sessions"] == 1
    assert totals["totals"]["multipart_upload"] == {"count": 1, "bytes": ABANDONED_BYTES}
    session = f"{ROOTDIR}/docker/registry/v2/repositories/{ABANDONED_REPO}/_uploads/{world['abandoned']}/"
    mine = [size for key, (size, _, _) in objects.items() if key.startswith(session)]
    assert len(mine) >= 2  # startedat and a hashstate
    assert totals["totals"]["upload_session"] == {"count": len(mine), "bytes": sum(mine)}
    sizes = _blob_sizes(world)
    assert totals["totals"]["blob"] == {"count": len(sizes), "bytes": sum(sizes.values())}
    # Every object and every part is counted, in some class.
    parts = sum(p[1] for _, ps in uploads.values() for p in ps)
    assert totals["bytes"] == sum(size for size, _, _ in objects.values()) + parts
    assert totals["unknown"] == 0 and totals["errors"] == []
