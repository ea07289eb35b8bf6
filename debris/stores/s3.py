"""S3-family stores (the registry's ``s3`` storage driver): AWS S3, Ceph RGW, and friends.

Imported only for s3:// and rgw:// stores, so a local run never pays for boto3.

Listing is by delimiter, one directory at a time, so a plan never lists blobs, layer links or
manifests; where the caller wants a whole subtree (``_uploads/``) it is listed flat in one go.
Independent directories are listed in parallel on a bounded pool. Retries and back-off are
botocore's (``standard`` mode); every HTTP request is counted per operation for ``--json``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import boto3
import botocore.config
import botocore.exceptions

from debris.stores.base import (
    Capability,
    Changed,
    Entry,
    FileInfo,
    Listing,
    MultipartUpload,
    NotFound,
    Part,
    Removal,
    S,
    Store,
    StoreAuth,
    StoreError,
    StoreFull,
    StoreThrottled,
    StoreTimeout,
    WalkProblems,
)

DELETE_BATCH = 1000  # DeleteObjects' limit
_FULL_CODES = {"QuotaExceeded", "EntityTooLarge", "InsufficientCapacity"}
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"}
_MISSING_CODES = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}


def _ns(dt) -> int:
    return int(dt.timestamp() * 1_000_000_000)


def _etag(raw: str | None) -> str | None:
    return raw.strip('"') if raw else raw


def client_error(e: Exception, what: str) -> StoreError:
    """One-line StoreError (or NotFound/StoreFull) with the fix, for a botocore failure."""
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = err.get("Message") or code
        if code in _MISSING_CODES:
            return NotFound(f"{what}: {code}")
        if code in _FULL_CODES:
            return StoreFull(f"{what}: store full ({code}: {msg}); free space with debris clean or raise the quota")
        if code == "NoSuchBucket":
            return StoreError(f"{what}: bucket does not exist ({msg})")
        if code in _AUTH_CODES:
            return StoreAuth(f"{what}: access denied ({code}); check the credentials and the bucket policy")
        if code in ("SlowDown", "503", "ServiceUnavailable", "RequestTimeout"):
            return StoreThrottled(f"{what}: store unavailable after retries ({code or status}: {msg})")
        if code == "InternalError" or (status or 0) >= 500:
            return StoreError(f"{what}: store unavailable after retries ({code or status}: {msg})")
        return StoreError(f"{what}: {code or status}: {msg}")
    if isinstance(e, botocore.exceptions.NoCredentialsError):
        return StoreError(
            f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile, or the registry config's accesskey"
        )
    if isinstance(e, botocore.exceptions.ConnectTimeoutError):
        return StoreTimeout(f"{what}: the endpoint did not answer in time ({e})")
    if isinstance(e, botocore.exceptions.EndpointConnectionError):
        return StoreError(f"{what}: cannot reach the endpoint ({e}); check --endpoint-url")
    if isinstance(e, botocore.exceptions.ReadTimeoutError):
        return StoreTimeout(f"{what}: the store did not answer in time ({e})")
    return StoreError(f"{what}: {e}")


def _split_clean(key: str) -> bool:
    body = key[:-1] if key.endswith("/") else key
    return bool(body) and not key.startswith("/") and all(p not in ("", ".", "..") for p in body.split("/"))


class S3Store(Store):
    scheme = "s3"
    capabilities = frozenset({Capability.MULTIPART_UPLOADS, Capability.DELIMITER_LISTING})

    def __init__(
        self,
        bucket: str,
        root: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        verify: bool | str = True,
        access_key: str | None = None,
        secret_key: str | None = None,
        profile: str | None = None,
        max_attempts: int = 8,
        workers: int = 8,
        connect_timeout: float = 10,
        read_timeout: float = 60,
    ):
        self.bucket = bucket
        self.root = root.strip("/")
        self._prefix = f"{self.root}/" if self.root else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.workers = self.parallel_reads = max(1, workers)
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},  # the first try included
            s3={"addressing_style": "path" if path_style else "auto"},
            signature_version="s3v4",
            max_pool_connections=self.workers * 2,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        try:
            session = boto3.session.Session(
                profile_name=profile, aws_access_key_id=access_key, aws_secret_access_key=secret_key
            )
            self.client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", verify=verify, config=config
            )
        except botocore.exceptions.BotoCoreError as e:
            raise StoreError(f"cannot set up S3 client: {e}") from None
        self._counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        # before-send fires once per HTTP attempt, retries included: what is billed.
        self.client.meta.events.register("before-send.s3", self._count)

    def _count(self, event_name: str = "", **_kw) -> None:
        op = event_name.rsplit(".", 1)[-1]
        with self._count_lock:
            self._counts[op] += 1

    def request_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(sorted(self._counts.items()))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.root}" if self.root else f"{self.scheme}://{self.bucket}"

    def identity(self) -> dict:
        return {
            "kind": self.scheme,
            "endpoint": self.endpoint_url or f"aws:{self.region or 'us-east-1'}",
            "bucket": self.bucket,
            "root": self.root,
        }

    def close(self) -> None:
        self.client.close()

    def _s3key(self, key: str) -> str:
        if not _split_clean(key):
            raise StoreError(f"refusing unclean key {key!r}")
        return self._prefix + key

    def _rel(self, s3key: str) -> str | None:
        return s3key[len(self._prefix) :] if s3key.startswith(self._prefix) else None

    # -- reading ----------------------------------------------------------------------------

    def _list(self, dir_key: str, flat: bool) -> tuple[list[Entry], list[str]]:
        """Objects below ``dir_key`` (relative to it) and, unless ``flat``, its subdirectory names."""
        prefix = self._prefix + (f"{dir_key}/" if dir_key else "")
        args = {"Bucket": self.bucket, "Prefix": prefix}
        if not flat:
            args["Delimiter"] = "/"
        files: list[Entry] = []
        subdirs: list[str] = []
        try:
            # Pages are read by IsTruncated/NextContinuationToken: a missing KeyCount (RGW, Spaces) is fine.
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for obj in page.get("Contents", ()):
                    rel = obj["Key"][len(prefix) :]
                    files.append((rel, obj["Size"], _ns(obj["LastModified"]), _etag(obj.get("ETag")), True))
                for cp in page.get("CommonPrefixes", ()):
                    subdirs.append(cp["Prefix"][len(prefix) : -1])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"list {prefix or '/'}") from None
        return files, subdirs

    def walk(
        self,
        start_key: str,
        start_state: S,
        descend: Callable[[S, str, str], S | None],
        problems: WalkProblems,
        flat: Callable[[S], bool] | None = None,
        read: Callable[[S, str], bool] | None = None,  # a GET each: callers read what they need later
    ) -> Iterator[Listing[S]]:
        return self.walk_many([(start_key, start_state)], descend, problems, flat)

    def walk_many(
        self,
        starts: list[tuple[str, S]],
        descend: Callable[[S, str, str], S | None],
        problems: WalkProblems,
        flat: Callable[[S], bool] | None = None,
        read: Callable[[S, str], bool] | None = None,
    ) -> Iterator[Listing[S]]:
        """``walk`` from several independent directories at once, on one bounded pool."""
        flat = flat or (lambda _s: False)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="debris-list")
        pending: dict[Future, tuple[str, S, bool]] = {}

        def submit(key: str, state: S) -> None:
            is_flat = bool(flat(state))
            pending[pool.submit(self._list, key, is_flat)] = (key, state, is_flat)

        try:
            for key, state in starts:
                submit(key, state)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key, state, is_flat = pending.pop(fut)
                    try:
                        files, subdirs = fut.result()
                    except StoreError as e:
                        problems.errors.append(str(e))
                        continue
                    if is_flat:
                        yield from self._expand_flat(key, state, files, descend)
                        continue
                    if files:
                        yield Listing(state, key, files)
                    for name in subdirs:
                        child = descend(state, key, name)
                        if child is not None:
                            submit(f"{key}/{name}" if key else name, child)
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)

    @staticmethod
    def _expand_flat(base: str, base_state: S, files: list[Entry], descend) -> Iterator[Listing[S]]:
        """Turn one flat listing into per-directory listings, calling ``descend`` parents first."""
        states: dict[str, S | None] = {"": base_state}
        groups: dict[str, list[Entry]] = {}
        for entry in files:
            parts = entry[0].split("/")
            parent = ""
            state = base_state
            for name in parts[:-1]:
                here = f"{parent}/{name}" if parent else name
                if here not in states:
                    states[here] = descend(state, _join(base, parent), name)
                state = states[here]
                parent = here
                if state is None:
                    break
            if state is not None:
                groups.setdefault(parent, []).append((parts[-1], *entry[1:]))
        for rel, entries in groups.items():
            yield Listing(states[rel], _join(base, rel), entries)

    def check_layout(self) -> None:
        """Fail now, with the fix, on a missing bucket or a rootdirectory that holds no registry."""
        prefix = f"{self._prefix}docker/registry/v2/"
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"{self.url}") from None
        if not page.get("Contents") and not self._any_multipart(prefix):
            raise StoreError(
                f"{self.url} holds no docker/registry/v2/: check the bucket and the registry's rootdirectory "
                f"(s3://BUCKET/ROOTDIR, without docker/registry/v2)"
            )

    def _any_multipart(self, prefix: str) -> bool:
        try:
            answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix, MaxUploads=1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"{self.url}") from None
        return bool(answer.get("Uploads"))

    def common_prefixes(self, prefix_key: str, delimiter: str, problems: WalkProblems) -> tuple[list[str], list[Entry]]:
        """One delimiter listing with an arbitrary delimiter: (prefixes relative to ``prefix_key``
        without the delimiter, objects that contain no delimiter). Paginated, so one request per
        1000 results."""
        prefix = self._prefix + prefix_key
        prefixes: list[str] = []
        files: list[Entry] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", ()):
                    prefixes.append(cp["Prefix"][len(prefix) : -len(delimiter)])
                for obj in page.get("Contents", ()):
                    files.append(
                        (obj["Key"][len(prefix) :], obj["Size"], _ns(obj["LastModified"]), _etag(obj.get("ETag")), True)
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            problems.errors.append(str(client_error(e, f"list {prefix} by {delimiter!r}")))
        return prefixes, files

    def stat(self, key: str) -> FileInfo | None:
        # A one-key listing, not HEAD: HEAD's Last-Modified has whole seconds while listings carry
        # milliseconds (RGW), and the gate compares with what a listing showed. A key sorts before
        # every longer key it prefixes, so MaxKeys=1 finds it if it exists.
        s3key = self._s3key(key)
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=s3key, MaxKeys=1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"stat {key}") from None
        for obj in page.get("Contents", ()):
            if obj["Key"] == s3key:
                return FileInfo(obj["Size"], _ns(obj["LastModified"]), _etag(obj.get("ETag")))
        return None

    def read(self, key: str, limit: int) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._s3key(key), Range=f"bytes=0-{max(0, limit - 1)}")
            return obj["Body"].read(limit)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            err = client_error(e, f"read {key}")
            if isinstance(err, NotFound):
                return None
            if (
                isinstance(e, botocore.exceptions.ClientError)
                and e.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                return b""  # an empty object
            raise err from None

    def read_many(self, keys: Iterable[str], limit: int) -> Iterator[tuple[str, bytes | None, StoreError | None]]:
        """GETs on a bounded pool, a few in flight per worker; results as they complete."""
        window = self.workers * 4
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="debris-read") as pool:
            pending: set[Future] = set()
            for key in keys:
                pending.add(pool.submit(self._read_one, key, limit))
                if len(pending) >= window:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
            for fut in pending:
                yield fut.result()

    # -- multipart uploads ----------------------------------------------------------------------

    def list_multipart_uploads(self, prefix_key: str, problems: WalkProblems) -> Iterator[MultipartUpload]:
        prefix = self._prefix + prefix_key
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
                for up in page.get("Uploads", ()):
                    rel = self._rel(up["Key"])
                    if rel is not None:
                        yield MultipartUpload(rel, up["UploadId"], _ns(up["Initiated"]))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            problems.errors.append(str(client_error(e, f"list multipart uploads {prefix or '/'}")))

    def list_parts(self, upload: MultipartUpload) -> list[Part]:
        parts = []
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._s3key(upload.key), UploadId=upload.upload_id
            )
            for page in pages:
                for p in page.get("Parts", ()):
                    parts.append(Part(p["PartNumber"], p["Size"], _etag(p.get("ETag")) or "", _ns(p["LastModified"])))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"list parts of {upload.key} ({upload.upload_id})") from None
        return parts

    def abort_multipart(self, upload: MultipartUpload) -> int:
        now = self.list_parts(upload)
        if upload.parts is None or [(p.number, p.size, p.etag) for p in now] != [
            (p.number, p.size, p.etag) for p in upload.parts
        ]:
            raise Changed(f"{upload.key} ({upload.upload_id}): parts changed")
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._s3key(upload.key), UploadId=upload.upload_id
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"abort {upload.key} ({upload.upload_id})") from None
        return sum(p.size for p in now)

    # -- deleting: only debris.apply calls these -------------------------------------------------

    def write_new(self, key: str, data: bytes, created: list[str]) -> FileInfo:
        # No directories to make. The key holds a fresh upload id, so it cannot exist already.
        s3key = self._s3key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=s3key, Body=data)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise client_error(e, f"write {key}") from None
        info = self.stat(key)
        if info is None:
            raise StoreError(f"write {key}: the object is not there after a successful PUT")
        return info

    def remove_file(self, key: str, expected: FileInfo) -> int:
        current = self.stat(key)
        if current is None:
            raise NotFound(key)
        if (current.size, current.mtime_ns, current.etag) != (expected.size, expected.mtime_ns, expected.etag):
            raise Changed(f"{key}: size, LastModified or ETag changed")
        return self.remove_files([(key, expected)])[0].bytes_freed

    def remove_files(self, batch: list[tuple[str, FileInfo]]) -> list[Removal]:
        """DeleteObjects in batches of up to 1000 keys; every per-key error is reported.

        S3 (and RGW 16) have no conditional DeleteObjects: the fingerprint check is the gate's
        re-observation of the item, made immediately before this call.
        """
        results: dict[str, Removal] = {}
        sizes = {}
        for key, expected in batch:
            try:
                sizes[self._s3key(key)] = (key, expected.size)
            except StoreError as e:
                results[key] = Removal(key, 0, e)
        s3keys = list(sizes)
        for i in range(0, len(s3keys), DELETE_BATCH):
            chunk = s3keys[i : i + DELETE_BATCH]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": False}
                )
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                err = client_error(e, "DeleteObjects")
                for k in chunk:
                    results[sizes[k][0]] = Removal(sizes[k][0], 0, err)
                continue
            for d in answer.get("Deleted", ()):
                if d["Key"] in sizes:
                    key, size = sizes[d["Key"]]
                    results[key] = Removal(key, size)
            for err in answer.get("Errors", ()):
                if err.get("Key") in sizes:
                    key, _ = sizes[err["Key"]]
                    results[key] = Removal(key, 0, StoreError(f"{err.get('Code')}: {err.get('Message')}"))
            for k in chunk:
                key = sizes[k][0]
                if key not in results:
                    results[key] = Removal(key, 0, StoreError("DeleteObjects answered nothing for this key"))
        return [results[key] for key, _ in batch]


class RGWStore(S3Store):
    """Ceph RADOS Gateway: S3 with path-style addressing; QuotaExceeded means the store is full."""

    scheme = "rgw"

    def __init__(self, bucket: str, root: str = "", **options):
        options["path_style"] = True
        super().__init__(bucket, root, **options)


def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    return f"{base}/{rel}" if base else rel
