"""The S3 test harness works, and RGW behaves as the debris design assumes.

debris must tell abandoned multipart uploads by age and must be able to clean up a bucket
that is over quota (that is when people reach for it). These tests pin down, on a real
radosgw, the facts the design depends on: incomplete uploads are invisible to ListObjectsV2
but listed with a real ``Initiated`` time and per-part sizes and times; a full bucket answers
403 ``QuotaExceeded`` to writes yet still accepts AbortMultipartUpload and DeleteObjects, after
which writes succeed again. A moto test checks the cheaper server used for the rest.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.ceph import CephCluster, MotoServer, requires_ceph

KIB = 1024
MIB = 1024 * KIB
#: Allowed difference between our clock and RGW's timestamps (same host; RGW rounds to ms).
CLOCK_SLACK = dt.timedelta(seconds=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _error(exc: ClientError) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a failed call."""
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def _new_bucket(s3, prefix: str) -> str:
    """A fresh bucket per test, so tests sharing one cluster or server don't see each other's data."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


# -- RGW -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgw(ceph: CephCluster):
    return ceph.s3_client()


@pytest.mark.rgw
@requires_ceph
def test_cluster_runs_from_its_own_directory(ceph: CephCluster) -> None:
    """The daemons (and the watchdog) are ours, alive, configured from the tmp dir, and the S3 user exists."""
    pids = ceph.pids()
    assert set(pids) == {"mon.a", "osd.0", "client.rgw", "watchdog"}
    for pid in pids.values():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert str(ceph.conf).encode() in cmdline
    assert ceph.conf.parent == ceph.directory
    assert ceph.endpoint == f"http://127.0.0.1:{ceph.port}"
    assert '"user_id": "debris"' in ceph.admin("user", "info", "--uid=debris")


@pytest.mark.rgw
@requires_ceph
def test_put_list_delete(ceph: CephCluster, rgw) -> None:
    bucket = _new_bucket(rgw, "objects")
    keys = ["docker/registry/v2/blobs/a", "docker/registry/v2/blobs/b", "docker/registry/v2/repositories/r/x"]
    for i, key in enumerate(keys):
        rgw.put_object(Bucket=bucket, Key=key, Body=b"x" * (i + 1))

    listing = rgw.list_objects_v2(Bucket=bucket, Prefix="docker/registry/v2/blobs/")
    assert [(o["Key"], o["Size"]) for o in listing["Contents"]] == [(keys[0], 1), (keys[1], 2)]
    # RGW 16.2 does send KeyCount (older RGW and some other stores omit it; don't rely on it).
    assert listing.get("KeyCount") in (None, 2)
    assert ceph.bucket_stats(bucket)["num_objects"] == 3

    rgw.delete_object(Bucket=bucket, Key=keys[0])
    result = rgw.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[1:]]})
    assert sorted(d["Key"] for d in result["Deleted"]) == keys[1:]
    assert not result.get("Errors")
    assert "Contents" not in rgw.list_objects_v2(Bucket=bucket)
    assert ceph.bucket_stats(bucket)["num_objects"] == 0


@pytest.mark.rgw
@requires_ceph
def test_incomplete_multipart_upload_is_listed_with_real_times(ceph: CephCluster, rgw) -> None:
    """The facts debris ages uploads by: a real ``Initiated`` and per-part sizes/LastModified."""
    bucket = _new_bucket(rgw, "multipart")
    key = f"docker/registry/v2/repositories/app/_uploads/{uuid.uuid4()}/data"
    before = _now()
    upload_id = rgw.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    sizes = {1: 5 * MIB, 2: 1234}
    for number, size in sizes.items():
        rgw.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=b"p" * size)
    after = _now()

    # Invisible to a plain listing: only ListMultipartUploads finds it.
    assert "Contents" not in rgw.list_objects_v2(Bucket=bucket)

    uploads = rgw.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, upload_id)]
    initiated = uploads[0]["Initiated"]
    assert before - CLOCK_SLACK <= initiated <= after + CLOCK_SLACK, initiated

    parts = rgw.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert {p["PartNumber"]: p["Size"] for p in parts} == sizes
    for part in parts:
        assert initiated - CLOCK_SLACK <= part["LastModified"] <= after + CLOCK_SLACK, part

    # Parts count against the bucket's usage (and so against its quota) until aborted.
    stats = ceph.bucket_stats(bucket)
    assert stats["size"] == sum(sizes.values())
    assert stats["multipart_uploads"] == 1

    rgw.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert "Uploads" not in rgw.list_multipart_uploads(Bucket=bucket)
    stats = ceph.bucket_stats(bucket)
    assert (stats["size"], stats["num_objects"], stats["multipart_uploads"]) == (0, 0, 0)


@pytest.mark.rgw
@requires_ceph
def test_cleanup_works_while_over_quota(ceph: CephCluster, rgw) -> None:
    """Over quota, writes fail with 403 QuotaExceeded but abort and delete still work.

    RGW refuses a write when usage + the new object's size would pass the quota, so "over
    quota" here means the next 384 KiB write is refused. Sizes are chosen so that aborting the
    64 KiB upload alone does not make room: the bucket is still full when DeleteObjects runs.
    """
    bucket = _new_bucket(rgw, "quota")
    ceph.set_bucket_quota(bucket, 1 * MIB)
    assert ceph.bucket_stats(bucket)["quota_max_size"] == 1 * MIB

    key = f"_uploads/{uuid.uuid4()}/data"
    upload_id = rgw.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    rgw.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * (64 * KIB))

    body = b"o" * (384 * KIB)
    stored = []
    for i in range(10):
        try:
            rgw.put_object(Bucket=bucket, Key=f"obj{i}", Body=body)
        except ClientError as exc:
            assert _error(exc) == (403, "QuotaExceeded")
            break
        stored.append(f"obj{i}")
    else:
        pytest.fail(f"10 PUTs of {len(body)} bytes never hit the 1 MiB quota: {ceph.bucket_stats(bucket)}")
    assert len(stored) == 2  # 64 KiB + 2 x 384 KiB = 832 KiB; a third would make 1216 KiB
    assert ceph.bucket_stats(bucket)["size_actual"] == 64 * KIB + 2 * len(body)

    # Writing a part is refused like a PUT...
    with pytest.raises(ClientError) as refused:
        rgw.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=body)
    assert _error(refused.value) == (403, "QuotaExceeded")

    # ...but aborting the upload works, and frees its part at once.
    rgw.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert "Uploads" not in rgw.list_multipart_uploads(Bucket=bucket)
    assert ceph.bucket_stats(bucket)["size_actual"] == 2 * len(body)

    # Still full (768 KiB + 384 KiB > 1 MiB), and DeleteObjects works anyway.
    with pytest.raises(ClientError) as still_full:
        rgw.put_object(Bucket=bucket, Key="still-full", Body=body)
    assert _error(still_full.value) == (403, "QuotaExceeded")
    result = rgw.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stored]})
    assert sorted(d["Key"] for d in result["Deleted"]) == stored
    assert not result.get("Errors")

    # Quota stats are current immediately (rgw bucket quota ttl = 0): the next PUT succeeds.
    rgw.put_object(Bucket=bucket, Key="after-cleanup", Body=body)
    assert ceph.bucket_stats(bucket)["size_actual"] == len(body)


# -- moto ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    with MotoServer.start(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.mark.moto
def test_moto_put_list_and_multipart_listing(moto: MotoServer) -> None:
    """moto serves the same calls; its upload ``Initiated`` is fake, but part times are real."""
    moto.reset()
    s3 = moto.s3_client()
    bucket = _new_bucket(s3, "moto")
    s3.put_object(Bucket=bucket, Key="docker/registry/v2/blobs/a", Body=b"abc")
    listing = s3.list_objects_v2(Bucket=bucket)
    assert [(o["Key"], o["Size"]) for o in listing["Contents"]] == [("docker/registry/v2/blobs/a", 3)]

    key = "docker/registry/v2/repositories/app/_uploads/u1/data"
    before = _now()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * 100)
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, upload_id)]
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 100)]
    # Part times have whole-second resolution on moto.
    assert before - CLOCK_SLACK <= parts[0]["LastModified"] <= _now() + CLOCK_SLACK
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["docker/registry/v2/blobs/a"]

    moto.reset()
    assert s3.list_buckets()["Buckets"] == []
