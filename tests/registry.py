"""A real-registry test harness: run Debian's ``docker-registry`` 2.8 and talk to it.

debris deletes data from a registry's storage, so its tests must be judged against the real
thing, not against our own idea of the layout: this module starts the real registry on
127.0.0.1, pushes real images through the distribution API, leaves real upload debris behind,
and checks afterwards with our own client, with ``skopeo`` (an independent client that
verifies every digest) and with the registry's own ``garbage-collect --dry-run``.

Standard library only (plus pytest for the skip marker), so it runs wherever the tests run.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

try:
    import pytest
except ImportError:  # scripts/sample_store.py uses this harness without the test extras
    pytest = None

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"

_MISSING = [b for b in (REGISTRY_BIN, SKOPEO_BIN) if not os.access(b, os.X_OK)]
#: Apply to tests that need a real registry: they are skipped, with the reason, only when
#: the tools are not installed (``apt-get install docker-registry skopeo``).
requires_registry_tools = (
    pytest.mark.skipif(bool(_MISSING), reason=f"real-registry tests need {' and '.join(_MISSING)} (not installed)")
    if pytest
    else None
)

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

#: Every manifest type we can push. 2.8 answers "manifest unknown" for an OCI manifest the
#: client did not list in Accept, and converts schema2 to schema1 without it, so always send all.
MANIFEST_ACCEPT = (MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST)
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
#: push_image kind -> (manifest, config, gzip layer, plain tar layer) media types.
_IMAGE_MEDIA_TYPES = {
    "docker-schema2": (MT_DOCKER_MANIFEST, MT_DOCKER_CONFIG, MT_DOCKER_LAYER_GZIP, MT_DOCKER_LAYER_TAR),
    "oci": (MT_OCI_MANIFEST, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_TAR),
}

#: ``startedat`` as the registry writes it: RFC3339 UTC, whole seconds, no newline.
STARTEDAT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _clean_env() -> dict[str, str]:
    """The environment for registry processes: without ``AWS_CA_BUNDLE``.

    The 2.8 s3 driver dies at start with ``LoadCustomCABundleError`` when it is set, and the
    registry never needs a CA bundle to reach a plain-http endpoint on 127.0.0.1.
    """
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log file)"


# --------------------------------------------------------------------------------------------
# The registry process
# --------------------------------------------------------------------------------------------


class RegistryServer:
    """One ``docker-registry serve`` subprocess on 127.0.0.1 with a port picked at start.

    Storage is the filesystem driver (``rootdirectory``) or the s3 driver (``s3``: the driver
    parameters, e.g. regionendpoint, bucket, rootdirectory, accesskey, secretkey, region,
    forcepathstyle, secure, v4auth, chunksize). Deletes are enabled, there is no auth, and the
    built-in upload purger is off unless asked for, so debris found by a test is debris the test
    made, not something the registry half-cleaned. ``storage.redirect.disable`` is always set
    so blob GETs are served by the registry itself (no presigned S3 URL to follow).

    stdout and stderr (the registry logs to stderr, its access log to stdout) go to
    ``log_path`` so tests can grep what the registry did. ``stop()`` signals only the PID this
    object started. Usable as a context manager; ``start()`` again after ``stop()`` restarts it
    on the same storage (on a new port, so re-read ``url``).
    """

    def __init__(
        self,
        *,
        rootdirectory: str | os.PathLike[str] | None = None,
        s3: dict[str, object] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        upload_purging: bool | dict[str, object] = False,
        readonly: bool = False,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """
        upload_purging: False (default) disables the purger; True enables it with the
        registry's defaults; a dict is written as ``storage.maintenance.uploadpurging`` with
        ``enabled: true`` added (keys: age, interval, dryrun). Its first run comes after a
        random 0-59 min delay, so it cannot be made to run on demand.
        readonly: ``storage.maintenance.readonly.enabled`` (pushes refused, pulls served), the
        mode garbage-collect wants.
        workdir: where config.yml and registry.log go; a new temp dir by default, kept after
        stop so the log stays readable.
        """
        if (rootdirectory is None) == (s3 is None):
            raise ValueError("give exactly one of rootdirectory= or s3=")
        self.rootdirectory = Path(rootdirectory) if rootdirectory is not None else None
        self.s3 = dict(s3) if s3 is not None else None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="registry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self.upload_purging = upload_purging
        self.readonly = readonly
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference (for skopeo)."""
        return self.url.removeprefix("http://")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("registry not started")
        return self.proc.pid

    def config(self) -> dict[str, object]:
        """The configuration as a dict (written as JSON, which YAML parsers accept)."""
        if self.upload_purging is False:
            purging: dict[str, object] = {"enabled": False}
        elif self.upload_purging is True:
            purging = {"enabled": True}
        else:
            purging = {**self.upload_purging, "enabled": True}
        storage: dict[str, object] = {
            "delete": {"enabled": True},
            "redirect": {"disable": True},
            "maintenance": {"uploadpurging": purging, "readonly": {"enabled": self.readonly}},
        }
        if self.rootdirectory is not None:
            storage["filesystem"] = {"rootdirectory": str(self.rootdirectory)}
        else:
            storage["s3"] = self.s3
        return {
            "version": "0.1",
            "log": {"level": "info", "fields": {"service": "registry"}},
            "storage": storage,
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                # A fixed secret: the upload _state tokens stay valid across a restart.
                "secret": "debris-test-secret",
            },
        }

    def start(self) -> RegistryServer:
        """Start the process and wait until ``GET /v2/`` answers 200.

        Retries with a new port if another process took the picked one in between.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"registry already running as PID {self.proc.pid}")
        for _attempt in range(3):
            self.port = _free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
            with open(self.log_path, "ab") as log:
                log.write(f"--- starting on port {self.port}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_clean_env(),
                )
            if self._wait_ready():
                return self
            if self.proc.poll() is None or "address already in use" not in _tail(self.log_path, 5):
                break
        tail = _tail(self.log_path)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer 200 on /v2/ at {self.url}; log tail:\n{tail}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with opener.open(self.url + "/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except OSError:  # refused, reset, timed out, or an HTTPError (non-200)
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM our own PID (SIGCONT too, in case it is paused), SIGKILL after a timeout."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP the registry: connections are accepted by the kernel but never answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def image_ref(self, repo: str, ref: str) -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``…/repo@sha256:…`` for skopeo."""
        sep = "@" if ":" in ref else ":"
        return f"{self.host}/{repo}{sep}{ref}"

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# garbage-collect --dry-run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GCResult:
    """What ``docker-registry garbage-collect --dry-run`` would do.

    ``repos`` are the repositories GC visited, in its order (2.8 only visits a directory with a
    ``_layers`` child). ``marked`` holds every digest GC keeps (manifests and blobs alike: a
    manifest is a blob), ``marked_by_repo`` the same per repository. The three counts come from
    the summary line; ``blobs_marked`` counts distinct digests.
    """

    repos: list[str]
    marked: set[str]
    marked_by_repo: dict[str, set[str]]
    eligible_blobs: set[str]
    eligible_manifests: set[str]
    blobs_marked: int
    blobs_eligible: int
    manifests_eligible: int
    stdout: str


_GC_REPO = re.compile(r"^(?P<repo>[^\s:]+(?::\d+)?(?:/[^\s:]+)*)$")
_GC_MARK = re.compile(r"^(?P<repo>\S+): marking (?:manifest|blob) (?P<digest>\S+)$")
_GC_BLOB = re.compile(r"^blob eligible for deletion: (?P<digest>\S+)$")
_GC_MANIFEST = re.compile(r"^manifest eligible for deletion: (?P<digest>\S+)$")
_GC_SUMMARY = re.compile(
    r"^(?P<marked>\d+) blobs marked, (?P<blobs>\d+) blobs and (?P<manifests>\d+) manifests eligible for deletion$"
)


def parse_gc_output(stdout: str) -> GCResult:
    """Parse the dry-run's stdout; any line we do not recognise is an error (format drift).

    2.8 prints, per repository, a line with just its name, then ``<repo>: marking manifest <d> ``
    (trailing space) and ``<repo>: marking blob <d>`` lines, with ``-m`` also ``manifest eligible
    for deletion: <d>``; after all repositories the summary, then one ``blob eligible for
    deletion: <d>`` per blob.
    """
    result = GCResult([], set(), {}, set(), set(), -1, -1, -1, stdout)
    for line in map(str.strip, stdout.splitlines()):
        if not line:
            continue
        if m := _GC_REPO.match(line):
            result.repos.append(m["repo"])
        elif m := _GC_MARK.match(line):
            result.marked.add(m["digest"])
            result.marked_by_repo.setdefault(m["repo"], set()).add(m["digest"])
        elif m := _GC_BLOB.match(line):
            result.eligible_blobs.add(m["digest"])
        elif m := _GC_MANIFEST.match(line):
            result.eligible_manifests.add(m["digest"])
        elif m := _GC_SUMMARY.match(line):
            result.blobs_marked = int(m["marked"])
            result.blobs_eligible = int(m["blobs"])
            result.manifests_eligible = int(m["manifests"])
        else:
            raise ValueError(f"unrecognised garbage-collect output line: {line!r}")
    if result.blobs_marked < 0:
        raise ValueError(f"garbage-collect printed no summary line:\n{stdout}")
    return result


def garbage_collect_dry_run(
    config_path: str | os.PathLike[str], delete_untagged: bool = False, timeout: float = 60.0
) -> GCResult:
    """Run ``docker-registry garbage-collect --dry-run [--delete-untagged] CONFIG`` and parse it.

    The dry run is the registry's own answer to "what is referenced": a test asserts that
    every blob it pushed is still marked after debris ran. It only reads, so running it next to
    a live registry is safe.
    """
    cmd = [REGISTRY_BIN, "garbage-collect", "--dry-run"]
    if delete_untagged:
        cmd.append("--delete-untagged")
    cmd.append(str(config_path))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return parse_gc_output(proc.stdout)


# --------------------------------------------------------------------------------------------
# The distribution API client
# --------------------------------------------------------------------------------------------


class RegistryHTTPError(Exception):
    """An unexpected HTTP status; ``codes`` are the distribution error codes in the body."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.method, self.url, self.status, self.body = method, url, status, body
        try:
            self.codes = [e.get("code") for e in json.loads(body).get("errors", [])]
        except (ValueError, AttributeError):
            self.codes = []
        super().__init__(f"{method} {url} -> {status} {body[:500]!r}")


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # keys lower-cased
    body: bytes


class Manifest(NamedTuple):
    body: bytes
    media_type: str
    digest: str


class Upload:
    """One blob upload session. Tracks the latest ``Location``: 2.8 signs the offset into its
    ``_state`` token and rejects a request carrying a stale one (404 BLOB_UPLOAD_INVALID)."""

    def __init__(self, client: RegistryClient, repo: str, resp: Response) -> None:
        self.client = client
        self.repo = repo
        self.uuid = resp.headers["docker-upload-uuid"]
        self.location = client.absolute(resp.headers["location"])
        self.offset = 0

    def _update(self, resp: Response) -> None:
        if "location" in resp.headers:
            self.location = self.client.absolute(resp.headers["location"])

    def patch(self, chunk: bytes) -> None:
        """Append ``chunk`` with a ``Content-Range`` (inclusive end, as 2.8 expects)."""
        if not chunk:
            raise ValueError("empty chunk")
        end = self.offset + len(chunk) - 1
        resp = self.client.request(
            "PATCH",
            self.location,
            chunk,
            {"Content-Type": "application/octet-stream", "Content-Range": f"{self.offset}-{end}"},
            expect=(202,),
        )
        self.offset = end + 1
        self._update(resp)

    def complete(self, digest: str, final_chunk: bytes = b"") -> str:
        """``PUT ?digest=`` (with an optional last chunk); returns the registry's digest."""
        url = _add_query(self.location, digest=digest)
        resp = self.client.request("PUT", url, final_chunk, {"Content-Type": "application/octet-stream"}, expect=(201,))
        return resp.headers["docker-content-digest"]

    def cancel(self) -> None:
        self.client.request("DELETE", self.location, expect=(204,))

    def status(self) -> str:
        """The ``Range`` header of ``GET`` on the session, e.g. ``0-9`` after 10 bytes.

        2.8 answers ``0-0`` both for 0 and for 1 byte received, hence the raw string.
        """
        resp = self.client.request("GET", self.location, expect=(204,))
        self._update(resp)
        return resp.headers["range"]


def _add_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def make_layer(name: str, content: bytes) -> bytes:
    """A reproducible gzip-compressed tar holding one file: a layer a real runtime could unpack."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


class RegistryClient:
    """A minimal OCI distribution client over urllib, enough to push and check test images.

    Proxies from the environment are ignored: the registry is on 127.0.0.1.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def absolute(self, location: str) -> str:
        return urllib.parse.urljoin(self.url + "/", location)

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        expect: Iterable[int] = (200,),
    ) -> Response:
        """One request; a status outside ``expect`` raises RegistryHTTPError."""
        req = urllib.request.Request(self.absolute(url), data=body, headers=headers or {}, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status, hdrs, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            status, hdrs, data = err.code, err.headers, err.read()
        if status not in tuple(expect):
            raise RegistryHTTPError(method, req.full_url, status, data)
        return Response(status, {k.lower(): v for k, v in hdrs.items()}, data)

    # -- blobs -----------------------------------------------------------------------------

    def start_upload(self, repo: str) -> Upload:
        """POST a new session; on disk it is ``_uploads/<upload.uuid>/`` at once."""
        return Upload(self, repo, self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,)))

    def push_blob_monolithic(self, repo: str, data: bytes) -> str:
        """POST then one PUT ?digest= with the whole body (2.8 ignores a body on the POST)."""
        digest = sha256_digest(data)
        got = self.start_upload(repo).complete(digest, data)
        assert got == digest, f"registry says {got}, we computed {digest}"
        return digest

    def push_blob_chunked(self, repo: str, data: bytes, chunk_size: int) -> str:
        """POST, one PATCH per ``chunk_size`` bytes, then an empty PUT ?digest=."""
        digest = sha256_digest(data)
        upload = self.start_upload(repo)
        for start in range(0, len(data), chunk_size):
            upload.patch(data[start : start + chunk_size])
        got = upload.complete(digest)
        assert got == digest, f"registry says {got}, we computed {digest}"
        return digest

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}").body

    # -- manifests -------------------------------------------------------------------------

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type}, expect=(201,))
        digest = resp.headers["docker-content-digest"]
        assert digest == sha256_digest(body), f"registry stored {digest} for a body of {sha256_digest(body)}"
        return digest

    def get_manifest(self, repo: str, ref: str, accept: Sequence[str] = MANIFEST_ACCEPT) -> Manifest:
        resp = self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(accept)})
        return Manifest(resp.body, resp.headers["content-type"], resp.headers["docker-content-digest"])

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete by digest: 2.8 refuses a tag here (400 DIGEST_INVALID)."""
        self.request("DELETE", f"/v2/{repo}/manifests/{digest}", expect=(202,))

    def catalog(self) -> list[str]:
        """All repositories, following ``Link`` pagination."""
        repos: list[str] = []
        url: str | None = "/v2/_catalog?n=1000"
        while url:
            resp = self.request("GET", url)
            repos += json.loads(resp.body).get("repositories") or []
            link = re.match(r"<([^>]+)>", resp.headers.get("link", ""))
            url = link[1] if link else None
        return repos

    def tags(self, repo: str) -> list[str]:
        return json.loads(self.request("GET", f"/v2/{repo}/tags/list").body).get("tags") or []

    # -- whole images ----------------------------------------------------------------------

    def push_image(
        self,
        repo: str,
        tag: str | None,
        layers: Sequence[bytes],
        *,
        kind: str = "docker-schema2",
        chunked: bool = False,
        chunk_size: int | None = None,
        architecture: str = "amd64",
        os_name: str = "linux",
    ) -> str:
        """Push layers, a config blob and a manifest; returns the manifest digest.

        kind: ``docker-schema2`` or ``oci`` (media types follow). A layer starting with the
        gzip magic gets the gzip layer type and a diff_id of its uncompressed content, any
        other bytes the plain tar type. chunked: PATCH every blob in ``chunk_size`` pieces
        (default: about three per blob). tag None pushes by digest (an untagged manifest,
        e.g. an index child).
        """
        if kind not in _IMAGE_MEDIA_TYPES:
            raise ValueError(f"unknown image kind {kind!r}")
        mt_manifest, mt_config, mt_gzip, mt_tar = _IMAGE_MEDIA_TYPES[kind]

        def push(data: bytes) -> str:
            if chunked:
                return self.push_blob_chunked(repo, data, chunk_size or max(1, -(-len(data) // 3)))
            return self.push_blob_monolithic(repo, data)

        layer_descs, diff_ids = [], []
        for data in layers:
            is_gzip = data[:2] == b"\x1f\x8b"
            diff_ids.append(sha256_digest(gzip.decompress(data) if is_gzip else data))
            layer_descs.append({"mediaType": mt_gzip if is_gzip else mt_tar, "size": len(data), "digest": push(data)})
        config = json.dumps(
            {
                "architecture": architecture,
                "os": os_name,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [{"created_by": f"debris test layer {i}"} for i in range(len(layers))],
            },
            sort_keys=True,
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt_manifest,
                "config": {"mediaType": mt_config, "size": len(config), "digest": push(config)},
                "layers": layer_descs,
            },
            indent=3,
        ).encode()
        return self.put_manifest(repo, tag or sha256_digest(manifest), manifest, mt_manifest)

    def push_index(
        self,
        repo: str,
        tag: str,
        children: Sequence[tuple[str, int, str, dict[str, str]]],
        kind: str = "oci",
    ) -> str:
        """Push an OCI index or a Docker manifest list over already pushed children.

        children: ``(manifest_digest, size, media_type, platform)`` with platform like
        ``{"os": "linux", "architecture": "arm64"}``. 2.8 refuses the index (400) unless
        every child is in the same repository.
        """
        media_type = {"oci": MT_OCI_INDEX, "docker-list": MT_DOCKER_LIST}.get(kind)
        if media_type is None:
            raise ValueError(f"unknown index kind {kind!r}")
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": [
                    {"mediaType": mt, "size": size, "digest": digest, "platform": platform}
                    for digest, size, mt, platform in children
                ],
            },
            indent=3,
        ).encode()
        return self.put_manifest(repo, tag, body, media_type)

    def verify_image(self, repo: str, ref: str) -> None:
        """Fetch the manifest (for an index every child too) and every blob it references,
        and check each against its descriptor's digest and size: AssertionError otherwise."""
        manifest = self.get_manifest(repo, ref)
        where = f"{repo}@{ref}"
        assert manifest.digest == sha256_digest(manifest.body), (
            f"{where}: manifest body hashes to {sha256_digest(manifest.body)}, header says {manifest.digest}"
        )
        if ref.startswith("sha256:"):
            assert manifest.digest == ref, f"{where}: asked for {ref}, got {manifest.digest}"
        doc = json.loads(manifest.body)
        if manifest.media_type in _INDEX_TYPES:
            for child in doc["manifests"]:
                got = self.get_manifest(repo, child["digest"])
                assert len(got.body) == child["size"], (
                    f"{where}: child {child['digest']} is {len(got.body)} bytes, index says {child['size']}"
                )
                self.verify_image(repo, child["digest"])
            return
        for desc in [doc["config"], *doc["layers"]]:
            try:
                data = self.get_blob(repo, desc["digest"])
            except RegistryHTTPError as err:
                raise AssertionError(f"{where}: blob {desc['digest']} not served: {err}") from err
            assert sha256_digest(data) == desc["digest"], (
                f"{where}: blob {desc['digest']} has content {sha256_digest(data)}"
            )
            assert len(data) == desc["size"], f"{where}: blob {desc['digest']} is {len(data)} bytes, not {desc['size']}"


# --------------------------------------------------------------------------------------------
# skopeo: the independent real client
# --------------------------------------------------------------------------------------------


def skopeo_copy_to_dir(image_ref: str, dest_dir: str | os.PathLike[str], timeout: float = 60.0) -> Path:
    """Pull ``127.0.0.1:PORT/repo:tag`` (or ``…@digest``) with skopeo into a ``dir:`` layout.

    skopeo checks every blob against its digest while copying, so a successful copy means a
    real client can pull the image. ``--all`` copies every child of an index (without it skopeo
    picks only the host's platform); for a plain image it changes nothing. ``--insecure-policy``
    spares us /etc/containers/policy.json; ``--src-tls-verify=false`` allows plain http.
    """
    dest = Path(dest_dir)
    cmd = [
        SKOPEO_BIN,
        "--insecure-policy",
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://{image_ref.removeprefix('http://')}",
        f"dir:{dest}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo could not pull {image_ref} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return dest


# --------------------------------------------------------------------------------------------
# Making real debris
# --------------------------------------------------------------------------------------------


def upload_session_dir(rootdirectory: str | os.PathLike[str], repo: str, uuid: str) -> Path:
    return Path(rootdirectory) / "docker/registry/v2/repositories" / repo / "_uploads" / uuid


def abandon_upload(client: RegistryClient, repo: str, data_chunks: Iterable[bytes] = ()) -> str:
    """POST a session, PATCH each chunk, then walk away as a crashed client would; returns its UUID."""
    upload = client.start_upload(repo)
    for chunk in data_chunks:
        upload.patch(chunk)
    return upload.uuid


def age_session(rootdirectory: str | os.PathLike[str], repo: str, uuid: str, seconds: float) -> None:
    """Make a filesystem upload session look ``seconds`` old.

    ``startedat`` (if present) is rewritten in place, in the registry's own format, to now minus
    ``seconds``; then the atime and mtime of every file and directory of the session, the
    session dir included, are moved back by ``seconds`` (so their order is kept). Symlinks are
    not followed. Rewriting in place keeps the directory's mtime unchanged.
    """
    session = upload_session_dir(rootdirectory, repo, uuid)
    if not session.is_dir():
        raise FileNotFoundError(session)
    startedat = session / "startedat"
    if startedat.exists():
        startedat.write_text(time.strftime(STARTEDAT_FORMAT, time.gmtime(time.time() - seconds)))
    for dirpath, dirnames, filenames in os.walk(session, topdown=False):
        for name in [*filenames, *dirnames]:
            _shift_times(os.path.join(dirpath, name), seconds)
    _shift_times(session, seconds)


def _shift_times(path: str | os.PathLike[str], seconds: float) -> None:
    st = os.lstat(path)
    delta = int(seconds * 1e9)
    os.utime(path, ns=(st.st_atime_ns - delta, st.st_mtime_ns - delta), follow_symlinks=False)


def push_sample_images(c: RegistryClient, *, chunk_size: int = 7000) -> list[tuple[str, str]]:
    """The image mix the end-to-end tests push; returns (repository, tag) of each.

    Docker schema2 with monolithic uploads; OCI with chunked uploads into a nested repository
    name; two repositories sharing a layer; a multi-arch OCI index over children pushed by digest.
    """
    shared = make_layer("shared", b"shared layer" * 100)
    c.push_image("library/alpine", "3.19", [make_layer("a1", b"alpine" * 500), shared])
    c.push_image(
        "team/sub/app", "v1", [make_layer("app", os.urandom(40_000))], kind="oci", chunked=True, chunk_size=chunk_size
    )
    c.push_image("shared/one", "latest", [shared, make_layer("one", b"one")])
    c.push_image("shared/two", "latest", [shared, make_layer("two", b"two")], kind="oci")
    children = []
    for arch in ("amd64", "arm64"):
        d = c.push_image("multi/arch", None, [make_layer(arch, arch.encode() * 300)], kind="oci", architecture=arch)
        size = len(c.get_manifest("multi/arch", d).body)
        children.append((d, size, MT_OCI_MANIFEST, {"os": "linux", "architecture": arch}))
    c.push_index("multi/arch", "latest", children)
    return [
        ("library/alpine", "3.19"),
        ("team/sub/app", "v1"),
        ("shared/one", "latest"),
        ("shared/two", "latest"),
        ("multi/arch", "latest"),
    ]


def registry_on_rgw(ceph, bucket: str, workdir, rootdirectory: str = "registry") -> RegistryServer:
    """A registry whose s3 driver points at a CephCluster's RGW, configured as people do for Ceph.

    The bucket is created first (the driver does not create it). Returned unstarted: use ``with``.
    """
    ceph.s3_client().create_bucket(Bucket=bucket)
    return RegistryServer(
        s3={
            "regionendpoint": ceph.endpoint,
            "forcepathstyle": True,
            "secure": False,
            "v4auth": True,
            "region": "us-east-1",
            "bucket": bucket,
            "rootdirectory": f"/{rootdirectory}",
            "chunksize": 5242880,
            "accesskey": ceph.access_key,
            "secretkey": ceph.secret_key,
        },
        workdir=workdir,
    )
