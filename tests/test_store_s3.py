"""S3-family stores: the shared conformance suite on moto and on a real Ceph RGW, plus what only S3 has.

S3 objects cannot be back-dated, so runs that judge ages use ``--older-than 1s --force`` after a
short sleep. moto answers ListMultipartUploads with a fixed 2010 ``Initiated`` while its parts'
LastModified are real; RGW reports both for real.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from debris.cli import app
from debris.stores.s3 import RGWStore, S3Store

from ceph import MotoServer, requires_ceph
from conformance import StoreConformance, _all

ROOT = "registry"
V2 = "docker/registry/v2"
#: Sleep after the last write before planning with ``--older-than 1s`` (moto floors times to whole seconds).
IDLE = 1.05


class Backend:
    """One S3 server: an admin client to set buckets up, and stores and CLI arguments for debris."""

    def __init__(self, name: str, endpoint: str, access_key: str, secret_key: str, admin):
        self.name = name
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.admin = admin

    def new_bucket(self) -> str:
        bucket = f"debris-{self.name}-{uuid.uuid4().hex[:16]}"
        self.admin.create_bucket(Bucket=bucket)
        return bucket

    def put(self, bucket: str, files: dict[str, bytes]) -> None:
        def put_one(item):
            self.admin.put_object(Bucket=bucket, Key=f"{ROOT}/{item[0]}", Body=item[1])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put_one, files.items()))

    def store(self, bucket: str) -> S3Store:
        options = {"endpoint_url": self.endpoint, "access_key": self.access_key, "secret_key": self.secret_key}
        if self.name == "rgw":
            return RGWStore(bucket, ROOT, **options)
        return S3Store(bucket, ROOT, path_style=True, **options)

    def make_store(self, files: dict[str, bytes]) -> S3Store:
        bucket = self.new_bucket()
        self.put(bucket, files)
        return self.store(bucket)

    def args(self, bucket: str) -> list[str]:
        """STORE and endpoint as a person would type them."""
        scheme = "rgw" if self.name == "rgw" else "s3"
        return [f"{scheme}://{bucket}/{ROOT}", "--endpoint-url", self.endpoint]

    def objects(self, bucket: str) -> dict[str, tuple[int, str]]:
        """Every object in the bucket: key (relative to ROOT) -> (size, ETag)."""
        out = {}
        for page in self.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", ()):
                out[obj["Key"].removeprefix(f"{ROOT}/")] = (obj["Size"], obj["ETag"])
        return out

    def start_multipart(self, bucket: str, key: str, part_sizes: list[int]) -> str:
        upload_id = self.admin.create_multipart_upload(Bucket=bucket, Key=f"{ROOT}/{key}")["UploadId"]
        for n, size in enumerate(part_sizes, 1):
            body = bytes([n]) * size
            self.admin.upload_part(Bucket=bucket, Key=f"{ROOT}/{key}", UploadId=upload_id, PartNumber=n, Body=body)
        return upload_id

    def multiparts(self, bucket: str) -> dict[str, str]:
        """Incomplete multipart uploads: upload id -> key (relative to ROOT)."""
        answer = self.admin.list_multipart_uploads(Bucket=bucket)
        return {u["UploadId"]: u["Key"].removeprefix(f"{ROOT}/") for u in answer.get("Uploads", ())}


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[Backend]:
    server = MotoServer.start(tmp_path_factory.mktemp("moto"))
    try:
        yield Backend("moto", server.endpoint, server.access_key, server.secret_key, server.s3_client())
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rgw(ceph) -> Backend:
    return Backend("rgw", ceph.endpoint, ceph.access_key, ceph.secret_key, ceph.s3_client())


@pytest.fixture(
    params=[
        pytest.param("moto", marks=pytest.mark.moto),
        pytest.param("rgw", marks=[pytest.mark.rgw, requires_ceph]),
    ]
)
def backend(request) -> Backend:
    return request.getfixturevalue(request.param)


# -- the shared conformance suite ---------------------------------------------------------------


@pytest.mark.moto
class TestMotoConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, moto):
        return moto.make_store


@pytest.mark.rgw
@requires_ceph
class TestRGWConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, rgw):
        return rgw.make_store


# -- helpers --------------------------------------------------------------------------------------


def run(backend: Backend, *args: str, env: dict | None = None):
    """``debris ARGS`` in this process (so tests can hook the store's boto3 client), with the backend's keys."""
    environment = {
        "AWS_ACCESS_KEY_ID": backend.access_key,
        "AWS_SECRET_ACCESS_KEY": backend.secret_key,
        "AWS_ENDPOINT_URL": None,
        "AWS_PROFILE": None,
        **(env or {}),
    }
    result = CliRunner().invoke(app, list(args), env=environment)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_json(backend: Backend, *args: str, code: int = 0, env: dict | None = None) -> dict:
    result = run(backend, *args, "--json", env=env)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def new_stores(monkeypatch) -> list:
    """Callables run on every S3Store the CLI opens (to hook its boto3 client)."""
    hooks: list = []
    original = S3Store.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for hook in hooks:
            hook(self)

    monkeypatch.setattr(S3Store, "__init__", init)
    return hooks


def rfc3339(t: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)).encode()


def session(repo: str, upload_id: str | None = None, data: bytes = b"d" * 1000) -> tuple[str, dict[str, bytes]]:
    """An upload session as the s3 driver leaves it (startedat = now)."""
    uid = upload_id or str(uuid.uuid4())
    base = f"{V2}/repositories/{repo}/_uploads/{uid}"
    return uid, {
        f"{base}/startedat": rfc3339(time.time()),
        f"{base}/data": data,
        f"{base}/hashstates/sha256/0": b"state-0",
    }


def blob_key(content: bytes) -> tuple[str, str]:
    hx = hashlib.sha256(content).hexdigest()
    return f"sha256:{hx}", f"{V2}/blobs/sha256/{hx[:2]}/{hx}/data"


def layer(repo: str, content: bytes) -> dict[str, bytes]:
    """A blob and the layer link that grants ``repo`` access to it."""
    digest, key = blob_key(content)
    return {key: content, f"{V2}/repositories/{repo}/_layers/sha256/{digest[7:]}/link": digest.encode()}


def image(repo: str, layers: int = 3) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for n in range(layers):
        files.update(layer(repo, f"{repo} layer {n}".encode()))
    digest, key = blob_key(f"{repo} manifest".encode())
    files[key] = f"{repo} manifest".encode()
    files[f"{V2}/repositories/{repo}/_manifests/revisions/sha256/{digest[7:]}/link"] = digest.encode()
    files[f"{V2}/repositories/{repo}/_manifests/tags/latest/current/link"] = digest.encode()
    return files


def uploads_key(repo: str, upload_id: str) -> str:
    return f"{V2}/repositories/{repo}/_uploads/{upload_id}"


STALE = ("--older-than", "1s", "--force")


# -- (a) request counts ---------------------------------------------------------------------------


def test_plan_requests_do_not_grow_with_registry_data(backend):
    """A plan lists repositories and their _uploads, never blobs or links: 200 more of those cost nothing."""
    bucket = backend.new_bucket()
    repos = ["team/app", "team/web", "library/alpine"]
    files: dict[str, bytes] = {}
    for repo in repos:
        files.update(image(repo, layers=5))
        files.update(session(repo)[1])
    backend.put(bucket, files)
    first = run_json(backend, "plan", *backend.args(bucket))
    objects_before = len(backend.objects(bucket))

    more: dict[str, bytes] = {}
    for n in range(200):
        more.update(layer("team/app", f"extra layer {n}".encode()))
    backend.put(bucket, more)
    second = run_json(backend, "plan", *backend.args(bucket))

    # the extra objects are really there ...
    assert len(backend.objects(bucket)) == objects_before + 400
    # ... and the plan did not pay one request for them
    assert second["requests"] == first["requests"]
    # the layout check on open; "", docker, registry, v2; repositories/ by "/_" (names every
    # repository); each _uploads/ flat
    assert first["requests"] == {"ListMultipartUploads": 1, "ListObjectsV2": 1 + 4 + 1 + len(repos)}
    assert first["active_sessions"]["count"] == second["active_sessions"]["count"] == len(repos)
    assert first["items"] == second["items"] == []


# -- (b) ListObjectsV2 without KeyCount ---------------------------------------------------------


def test_listing_without_keycount_still_yields_everything(backend, new_stores):
    """Some servers omit KeyCount: pages must be followed by IsTruncated and the continuation token alone."""
    files: dict[str, bytes] = {}
    for _ in range(12):
        files.update(session("team/app")[1])
    files.update(image("team/app", layers=4))
    store = backend.make_store(files)
    expected = {k: len(v) for k, v in files.items()}
    plain, _ = _all(store)
    assert {k: i.size for k, i in plain.items()} == expected
    plain_pages = store.request_counts()["ListObjectsV2"]

    stripped: list[bool] = []
    parsed_keycounts: list[object] = []

    def small_pages(params, **_kw):
        params["MaxKeys"] = 3

    def strip_keycount(response_dict, **_kw):
        body = response_dict["body"]
        response_dict["body"] = re.sub(rb"<KeyCount>[0-9]+</KeyCount>", b"", body)
        stripped.append(response_dict["body"] != body)

    def record(parsed, **_kw):
        parsed_keycounts.append(parsed.get("KeyCount", "absent"))

    def hook(s: S3Store) -> None:
        events = s.client.meta.events
        events.register("before-parameter-build.s3.ListObjectsV2", small_pages)
        events.register("before-parse.s3.ListObjectsV2", strip_keycount)
        events.register("after-call.s3.ListObjectsV2", record)

    # one directory at a time (plan's walk)
    hook(store)
    walked, _ = _all(store)
    assert {k: i.size for k, i in walked.items()} == expected
    pages = store.request_counts()["ListObjectsV2"] - plain_pages
    assert pages >= plain_pages + 3  # _uploads alone holds 12 sessions: 4 pages instead of 1
    store.close()

    # the whole store in one flat listing (scan)
    new_stores.append(hook)
    scanned = run_json(backend, "scan", *backend.args(store.bucket))
    assert {k: v["count"] for k, v in scanned["totals"].items()} == {
        "upload_session": 36,
        "blob": 5,
        "layer_link": 4,
        "manifest": 1,
        "tag": 1,
    }
    assert scanned["errors"] == [] and scanned["unknown"]["count"] == 0
    # one flat listing of the whole store, 3 keys a page (unhooked: a single page)
    assert scanned["requests"]["ListObjectsV2"] >= len(files) / 3

    assert len(stripped) == pages + scanned["requests"]["ListObjectsV2"]
    assert all(stripped)
    assert parsed_keycounts == ["absent"] * len(stripped)


# -- (c) DeleteObjects per-key errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "answer"),
    [
        pytest.param("moto", "error", marks=pytest.mark.moto),
        pytest.param("moto", "nothing", marks=pytest.mark.moto),
        pytest.param("rgw", "error", marks=[pytest.mark.rgw, requires_ceph]),
    ],
    indirect=["backend"],
)
def test_deleteobjects_per_key_error_fails_that_item_only(backend, new_stores, answer):
    """One key refused inside a 200 OK DeleteObjects answer: that item failed, exit 3, the rest deleted."""
    bucket = backend.new_bucket()
    ok_id, ok_files = session("team/app")
    bad_id, bad_files = session("team/app")
    backend.put(bucket, {**ok_files, **bad_files, **image("team/app")})
    victim = f"{ROOT}/{uploads_key('team/app', bad_id)}/data"
    withheld: list[str] = []

    def withhold(params, **_kw):
        objects = params["Delete"]["Objects"]
        if any(o["Key"] == victim for o in objects):
            withheld.append(victim)
            params["Delete"]["Objects"] = [o for o in objects if o["Key"] != victim]

    def answer_for_victim(response_dict, **_kw):
        if withheld and answer == "error" and victim.encode() not in response_dict["body"]:
            error = f"<Error><Key>{victim}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            response_dict["body"] = response_dict["body"].replace(
                b"</DeleteResult>", error.encode() + b"</DeleteResult>"
            )

    def hook(store):
        store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", withhold)
        store.client.meta.events.register("before-parse.s3.DeleteObjects", answer_for_victim)

    new_stores.append(hook)
    time.sleep(IDLE)
    result = run_json(backend, "clean", *backend.args(bucket), *STALE, "--confirm", code=3)

    assert withheld == [victim]
    assert [(d["upload_id"], d["bytes_freed"]) for d in result["deleted"]] == [(ok_id, 1000 + 20 + 7)]
    [failed] = result["failed"]
    assert failed["upload_id"] == bad_id
    data_key = f"{uploads_key('team/app', bad_id)}/data"
    expected = "AccessDenied: Access Denied" if answer == "error" else "DeleteObjects answered nothing for this key"
    assert failed["reason"].startswith(f"{data_key}: ") and failed["reason"].endswith(expected)
    assert sorted(failed["deleted_paths"]) == sorted(k for k in bad_files if k != data_key)
    assert failed["bytes_freed"] == 20 + 7
    assert result["bytes_freed"] == 1000 + 20 + 7 + 20 + 7
    left = backend.objects(bucket)
    assert data_key in left
    assert not any(k in left for k in ok_files)


# -- (d) folder markers ---------------------------------------------------------------------------


def _markers(backend: Backend, bucket: str) -> tuple[dict, dict]:
    """Zero-byte 'dir/' objects other S3 tools write, a non-empty look-alike, and registry content."""
    uid, files = session("team/app")
    markers = {
        f"{V2}/repositories/team/app/_uploads/": b"",
        f"{V2}/repositories/team/": b"",
        f"{uploads_key('team/app', str(uuid.uuid4()))}/": b"",
        f"{uploads_key('team/app', uid)}/": b"",
    }
    not_a_marker = {f"{uploads_key('team/app', str(uuid.uuid4()))}/hashstates/": b"not empty"}
    backend.put(bucket, {**files, **image("team/app"), **markers, **not_a_marker})
    return markers, not_a_marker


FOLDER_MARKERS = ("--include", "upload_session,folder_marker")


def test_folder_markers_are_reported_and_planned_only_when_included(backend):
    bucket = backend.new_bucket()
    markers, not_a_marker = _markers(backend, bucket)
    before = backend.objects(bucket)

    default = run_json(backend, "plan", *backend.args(bucket))
    assert default["items"] == []
    assert default["folder_markers_left"] == len(markers) + len(not_a_marker)
    assert default["active_sessions"]["count"] == 1
    assert backend.objects(bucket) == before

    planned = run_json(backend, "plan", *backend.args(bucket), *FOLDER_MARKERS)
    assert sorted(p for i in planned["items"] for p in i["paths"]) == sorted(markers)
    assert {i["class"] for i in planned["items"]} == {"folder_marker"}
    assert all(i["bytes"] == 0 for i in planned["items"])
    # a "dir/" object with content is not a marker: left alone, but still reported
    assert planned["folder_markers_left"] == len(not_a_marker)
    assert planned["active_sessions"]["count"] == 1


def test_folder_markers_are_deleted_with_include_folder_marker(backend):
    # RGW lists LastModified in milliseconds but HEAD answers whole seconds: the gate's re-check must
    # compare like with like, or every marker is skipped as "changed since plan"
    bucket = backend.new_bucket()
    markers, _ = _markers(backend, bucket)
    before = backend.objects(bucket)
    cleaned = run_json(backend, "clean", *backend.args(bucket), *FOLDER_MARKERS, "--confirm")
    assert cleaned["skipped"] == cleaned["failed"] == []
    assert sorted(p for d in cleaned["deleted"] for p in d["deleted_paths"]) == sorted(markers)
    assert backend.objects(bucket) == {k: v for k, v in before.items() if k not in markers}


@pytest.mark.moto
def test_a_folder_marker_of_the_rootdirectory_does_not_block_the_plan(moto):
    bucket = moto.new_bucket()
    uid, files = session("team/app")
    moto.put(bucket, files)
    moto.admin.put_object(Bucket=bucket, Key=f"{ROOT}/", Body=b"")  # "Create folder" in a console
    time.sleep(IDLE)
    r = run(moto, "clean", *moto.args(bucket), *STALE, *FOLDER_MARKERS, "--confirm", "--json")
    assert r.exit_code == 0, r.stderr
    assert [d["upload_id"] for d in json.loads(r.stdout)["deleted"] if d["class"] == "upload_session"] == [uid]
    assert not any(k in moto.objects(bucket) for k in files)


@pytest.mark.moto
def test_tampered_plan_cannot_delete_a_non_empty_dir_object_as_a_folder_marker(moto, tmp_path):
    bucket = moto.new_bucket()
    key = f"{uploads_key('team/app', str(uuid.uuid4()))}/hashstates/"
    moto.put(bucket, {key: b"not empty", **image("team/app")})
    planfile = tmp_path / "plan.json"
    r = run(moto, "plan", *moto.args(bucket), *FOLDER_MARKERS, "--out", str(planfile))
    assert r.exit_code == 0, r.stderr
    plan = json.loads(planfile.read_text())
    assert plan["items"] == [] and plan["folder_markers_left"] == 1
    [listed] = moto.admin.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/{key}")["Contents"]
    fingerprint = {
        "path": key,
        "size": listed["Size"],
        "mtime_ns": int(listed["LastModified"].timestamp() * 1e9),
        "etag": listed["ETag"].strip('"'),
    }
    plan["items"] = [
        {
            "class": "folder_marker",
            "repository": None,
            "upload_id": None,
            "paths": [key],
            "bytes": listed["Size"],
            "last_activity": "2020-01-01T00:00:00Z",
            "why": "tampered",
            "flags": [],
            "files": [fingerprint],
            "multipart_uploads": [],
        }
    ]
    planfile.write_text(json.dumps(plan))
    before = moto.objects(bucket)
    r = run(moto, "apply", str(planfile), "--confirm", "--json")
    assert moto.objects(bucket) == before
    assert r.exit_code in (0, 1)


# -- (e) orphan multipart uploads of purged sessions -------------------------------------------


def test_orphan_multipart_upload_is_planned_and_aborted(backend):
    """The session's objects are gone but the multipart upload on its data is open: its parts are debris."""
    bucket = backend.new_bucket()
    uid = str(uuid.uuid4())
    key = f"{uploads_key('team/app', uid)}/data"
    backend.put(bucket, image("team/app"))
    upload_id = backend.start_multipart(bucket, key, [1000, 2345])
    registry_data = backend.objects(bucket)

    fresh = run_json(backend, "plan", *backend.args(bucket))
    assert fresh["items"] == []
    assert fresh["active_sessions"]["count"] == 1

    time.sleep(IDLE)
    plan = run_json(backend, "plan", *backend.args(bucket), *STALE)
    [item] = plan["items"]
    assert (item["class"], item["repository"], item["upload_id"]) == ("multipart_upload", "team/app", uid)
    assert item["paths"] == [key] and item["files"] == []
    assert item["bytes"] == 3345 and plan["totals"] == {"multipart_upload": {"count": 1, "bytes": 3345}}
    [mp] = item["multipart_uploads"]
    assert mp["upload_id"] == upload_id and [p["size"] for p in mp["parts"]] == [1000, 2345]

    result = run_json(backend, "clean", *backend.args(bucket), *STALE, "--confirm")
    assert [(d["class"], d["upload_id"], d["bytes_freed"]) for d in result["deleted"]] == [
        ("multipart_upload", uid, 3345)
    ]
    assert result["bytes_freed"] == 3345
    assert backend.multiparts(bucket) == {}
    assert backend.objects(bucket) == registry_data


# -- (f) failed copies onto blob paths ----------------------------------------------------------


def test_multipart_upload_on_a_blob_path_waits_for_its_own_threshold(backend):
    """activity = newest part, else Initiated; judged against --blob-multipart-older-than (default 7d)."""
    bucket = backend.new_bucket()
    content = b"the blob"
    _, key = blob_key(content)
    backend.put(bucket, {key: content, **layer("team/app", b"other")})
    with_parts = backend.start_multipart(bucket, key, [1500])
    without_parts = backend.start_multipart(bucket, key, [])
    uploads = backend.admin.list_multipart_uploads(Bucket=bucket)["Uploads"]
    initiated = {u["UploadId"]: u["Initiated"] for u in uploads}
    now = datetime.now(UTC)
    if backend.name == "moto":
        # moto's fixed Initiated: only the upload without parts is old by the rule
        assert all(now - t > timedelta(days=365) for t in initiated.values())
        old = {without_parts}
    else:
        assert all(abs(now - t) < timedelta(minutes=1) for t in initiated.values())
        old = set()

    def planned(*args):
        plan = run_json(backend, "plan", *backend.args(bucket), *args)
        assert all(i["class"] == "multipart_upload" and i["repository"] is None for i in plan["items"])
        return {m["upload_id"] for i in plan["items"] for m in i["multipart_uploads"]}

    assert planned() == old
    assert planned("--blob-multipart-older-than", "1d") == old

    result = run_json(backend, "clean", *backend.args(bucket), "--blob-multipart-older-than", "1d", "--confirm")
    assert {d["paths"][0] for d in result["deleted"]} == ({key} if old else set())
    assert set(backend.multiparts(bucket)) == {with_parts, without_parts} - old
    assert backend.objects(bucket)[key][0] == len(content)


# -- (g) a tampered plan cannot abort a failed copy as an upload session ------------------------


@pytest.mark.moto
def test_tampered_plan_aborting_a_blob_multipart_is_refused(moto, tmp_path):
    """A failed copy onto blobs/ may only be aborted as itself, and only when old: a plan cannot say otherwise."""
    bucket = moto.new_bucket()
    uid = str(uuid.uuid4())
    orphan_key = f"{uploads_key('team/app', uid)}/data"
    _, blob = blob_key(b"blob being copied")
    orphan = moto.start_multipart(bucket, orphan_key, [100])
    victim = moto.start_multipart(bucket, blob, [700, 300])
    time.sleep(IDLE)
    planfile = tmp_path / "plan.json"
    r = run(moto, "plan", *moto.args(bucket), *STALE, "--out", str(planfile))
    assert r.exit_code == 0, r.stderr
    plan = json.loads(planfile.read_text())
    [item] = plan["items"]
    assert (item["class"], item["upload_id"], item["paths"]) == ("multipart_upload", uid, [orphan_key])
    parts = moto.admin.list_parts(Bucket=bucket, Key=f"{ROOT}/{blob}", UploadId=victim)["Parts"]
    victim_json = {
        "key": blob,
        "upload_id": victim,
        "initiated_ns": item["multipart_uploads"][0]["initiated_ns"],
        "bytes": 1000,
        "parts": [
            {
                "number": p["PartNumber"],
                "size": p["Size"],
                "etag": p["ETag"].strip('"'),
                "mtime_ns": int(p["LastModified"].timestamp() * 1_000_000_000),
            }
            for p in parts
        ],
    }

    def apply_with(**changes):
        tampered = json.loads(json.dumps(plan))
        tampered["items"][0].update(paths=[blob], bytes=1000, multipart_uploads=[victim_json], **changes)
        planfile.write_text(json.dumps(tampered))
        return run(moto, "apply", str(planfile), "--confirm", "--force", "--json")

    for claimed in ("upload_session", "multipart_upload"):
        r = apply_with(**{"class": claimed})
        assert r.exit_code == 1, (claimed, r.stdout, r.stderr)
        assert r.stderr.startswith("debris: error: plan refused, nothing deleted: item 0 (team/app/_uploads/")
        assert f"multipart upload on '{blob}' is on a blob, not on an upload session's data" in r.stderr
        assert r.stdout == ""
        assert moto.multiparts(bucket) == {orphan: orphan_key, victim: blob}

    # shaped as a failed copy, it passes validation, but the gate re-judges its age (parts are fresh)
    r = apply_with(repository=None, upload_id=None)
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["deleted"] == [] and [s["reason"] for s in result["skipped"]] == ["younger than 1w"]
    assert moto.multiparts(bucket) == {orphan: orphan_key, victim: blob}


# -- (h) --registry-config with an s3 driver section ----------------------------------------------


def test_registry_config_s3_section_opens_the_same_store(backend, tmp_path):
    bucket = backend.new_bucket()
    backend.put(bucket, {f"{V2}/repositories/team/app/_uploads/": b"", **image("team/app")})
    host = backend.endpoint.removeprefix("http://")
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n"
        "  delete:\n    enabled: true\n"
        "  redirect:\n    disable: true\n"
        "  s3:\n"
        f"    bucket: {bucket}\n"
        f"    rootdirectory: /{ROOT}\n"
        f"    regionendpoint: {host}\n"
        "    region: us-east-1\n"
        "    forcepathstyle: true\n"
        "    secure: false\n"
        f"    accesskey: {backend.access_key}\n"
        f"    secretkey: {backend.secret_key}\n"
    )
    # no credentials in the environment: they must come from the file
    no_keys = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    from_config = run_json(backend, "plan", "--registry-config", str(config), env=no_keys)
    by_hand = run_json(backend, "plan", f"s3://{bucket}/{ROOT}", "--endpoint-url", backend.endpoint)
    assert from_config["store"] == by_hand["store"]
    assert from_config["store"] == {
        "url": f"s3://{bucket}/{ROOT}",
        "identity": {"kind": "s3", "endpoint": backend.endpoint, "bucket": bucket, "root": ROOT},
    }
    assert from_config["folder_markers_left"] == by_hand["folder_markers_left"] == 1
    assert from_config["errors"] == by_hand["errors"] == []


@pytest.mark.moto
def test_a_missing_bucket_is_a_bad_store(moto):
    r = run(moto, "plan", f"s3://debris-no-such-bucket-{uuid.uuid4().hex[:8]}/{ROOT}", "--endpoint-url", moto.endpoint)
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith("debris: error: ") and "bucket does not exist" in r.stderr
