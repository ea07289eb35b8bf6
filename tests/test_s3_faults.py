"""S3 faults: throttling and 5xx while listing and deleting, through a fault-injecting proxy in front of moto.

Transient errors must be retried (and every attempt counted in ``requests``); a persistent one must
end with exit code 3 and a report that names what failed and why; and nothing may be deleted that
was not meant to be. The proxy is a small threaded ``http.server`` on 127.0.0.1 that forwards to
moto with ``http.client`` and answers chosen requests itself with an S3 XML error.

botocore's back-off (up to 20 s a retry) is set to zero for speed. The number of attempts stays
debris's own: S3Store passes ``retries={"max_attempts": 8}`` explicitly, which overrides
AWS_MAX_ATTEMPTS / AWS_RETRY_MODE (and no CLI option sets it). botocore reads that key as 8
*retries*, so each call is tried 9 times, not the 8 docs/cli.md promises (see the xfail below).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import botocore.retries.standard
import pytest
from typer.testing import CliRunner

from debris.cli import app

from ceph import MotoServer

pytestmark = pytest.mark.moto

ROOT = "registry"
V2 = "docker/registry/v2"
IDLE = 1.05  # at least --older-than 1s after the last write (moto floors to whole seconds)
STALE = ("--older-than", "1s", "--force")
#: docs/cli.md: "Retries and back-off are botocore's standard mode (8 attempts)".
DOCUMENTED_ATTEMPTS = 8
SLOWDOWN = (503, "SlowDown", "Please reduce your request rate.")
INTERNAL = (500, "InternalError", "We encountered an internal error. Please try again.")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "content-length"}


# -- the fault-injecting proxy ------------------------------------------------------------------


@dataclass
class Fault:
    """Answer requests with ``method`` whose query has every key of ``query`` (and whose Prefix contains
    ``prefix``) with an S3 error: the first ``times`` of them, or all of them when ``times`` is None."""

    method: str
    query: tuple[str, ...]
    status: int
    code: str
    message: str
    times: int | None = None
    prefix: str | None = None
    injected: int = 0

    def take(self, method: str, query: dict[str, list[str]]) -> bool:
        if method != self.method or not all(k in query for k in self.query):
            return False
        if self.prefix is not None and self.prefix not in query.get("prefix", [""])[0]:
            return False
        if self.times is not None and self.injected >= self.times:
            return False
        self.injected += 1
        return True


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    faults: list[Fault] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)  # (method, first query key) -> requests, injected or not
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def inject(self, method: str, *query: str, error=SLOWDOWN, times: int | None = None, prefix=None) -> Fault:
        fault = Fault(method, query, *error, times=times, prefix=prefix)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def _decide(self, method: str, query: dict[str, list[str]]) -> Fault | None:
        with self.lock:
            self.seen[(method, next(iter(query), ""))] += 1
            for fault in self.faults:
                if fault.take(method, query):
                    return fault
        return None

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection ends its thread

            def log_message(self, *args) -> None:
                pass

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    raise NotImplementedError("chunked request bodies")
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _serve(self) -> None:
                body = self._read_body()
                url = urlsplit(self.path)
                query = parse_qs(url.query, keep_blank_values=True)
                fault = proxy._decide(self.command, query)
                if fault is not None:
                    xml = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
                        f"<RequestId>fault-{fault.injected}</RequestId><HostId>debris-fault-proxy</HostId></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            assert self.thread is not None
            self.thread.join(10)
            self.server = None


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> Iterator[MotoServer]:
    server = MotoServer.start(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(moto) -> Iterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", moto.port).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    """Retry at once: the attempts are what is under test, not botocore's sleeping."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)


def debris(proxy: FaultProxy, bucket: str, command: str, *args: str, env: dict | None = None):
    environment = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": None,
        "AWS_PROFILE": None,
        **(env or {}),
    }
    argv = [command, f"s3://{bucket}/{ROOT}", "--endpoint-url", proxy.endpoint, "--json", *args]
    result = CliRunner().invoke(app, argv, env=environment)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout) if result.stdout else None, result.stderr


def rfc3339(t: float) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)).encode()


def session_keys(repo: str, uid: str) -> dict[str, bytes]:
    base = f"{V2}/repositories/{repo}/_uploads/{uid}"
    return {
        f"{base}/startedat": rfc3339(time.time()),
        f"{base}/data": b"d" * 1000,
        f"{base}/hashstates/sha256/0": b"state-0",
    }


@dataclass
class Bucket:
    client: object
    name: str
    sessions: dict[tuple[str, str], dict[str, bytes]]

    def objects(self) -> dict[str, tuple[int, str]]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for obj in page.get("Contents", ()):
                out[obj["Key"].removeprefix(f"{ROOT}/")] = (obj["Size"], obj["ETag"])
        return out


def stale_bucket(moto: MotoServer, repos: dict[str, int]) -> Bucket:
    """A bucket with ``repos[repo]`` upload sessions per repository and some registry data; waits until stale."""
    client = moto.s3_client()
    name = f"debris-faults-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    sessions = {}
    files = {
        f"{V2}/blobs/sha256/ab/{'ab' * 32}/data": b"layer",
        f"{V2}/repositories/team/app/_layers/sha256/{'ab' * 32}/link": b"sha256:" + b"ab" * 32,
    }
    for repo, n in repos.items():
        for _ in range(n):
            uid = str(uuid.uuid4())
            sessions[(repo, uid)] = session_keys(repo, uid)
            files.update(sessions[(repo, uid)])
    for key, body in files.items():
        client.put_object(Bucket=name, Key=f"{ROOT}/{key}", Body=body)
    time.sleep(IDLE)
    return Bucket(client, name, sessions)


def startedat(repo: str, uid: str) -> str:
    return f"{V2}/repositories/{repo}/_uploads/{uid}/startedat"


def unavailable(what: str, error=SLOWDOWN) -> str:
    """The one-line reason debris gives once botocore has given up on a 5xx."""
    _, code, message = error
    return f"{what}: store unavailable after retries ({code}: {message})"


# -- transient errors are retried ----------------------------------------------------------------


@pytest.mark.parametrize("error", [SLOWDOWN, INTERNAL], ids=["503-SlowDown", "500-InternalError"])
def test_transient_errors_on_list_and_delete_are_retried(moto, proxy, error):
    bucket = stale_bucket(moto, {"team/app": 3})
    before = bucket.objects()
    code, dry, _ = debris(proxy, bucket.name, "clean", *STALE)
    assert code == 0 and len(dry["would_delete"]) == 3
    baseline = dry["requests"]
    assert "DeleteObjects" not in baseline
    assert bucket.objects() == before

    listing = proxy.inject("GET", "list-type", error=error, times=2)
    deleting = proxy.inject("POST", "delete", error=error, times=2)
    code, result, stderr = debris(proxy, bucket.name, "clean", *STALE, "--confirm")

    assert code == 0, (result, stderr)
    assert (listing.injected, deleting.injected) == (2, 2)
    assert sorted(d["upload_id"] for d in result["deleted"]) == sorted(uid for _, uid in bucket.sessions)
    assert result["failed"] == result["skipped"] == result["errors"] == []
    assert result["bytes_freed"] == 3 * (20 + 1000 + 7)
    # every attempt is counted: two more listings than the dry run, and 2 DeleteObjects per session + 2
    requests = result["requests"]
    assert requests["ListObjectsV2"] == baseline["ListObjectsV2"] + 2
    assert requests["DeleteObjects"] == 2 * 3 + 2
    assert {k: v for k, v in requests.items() if k not in ("ListObjectsV2", "DeleteObjects")} == {
        k: v for k, v in baseline.items() if k != "ListObjectsV2"
    }
    # ... and agree with what reached the wire (the proxy saw the dry run too)
    assert proxy.seen[("GET", "list-type")] == baseline["ListObjectsV2"] + requests["ListObjectsV2"]
    assert proxy.seen[("POST", "delete")] == requests["DeleteObjects"]
    # only the sessions went
    session_keys_all = {k for files in bucket.sessions.values() for k in files}
    assert bucket.objects() == {k: v for k, v in before.items() if k not in session_keys_all}


# -- persistent errors end loudly, deleting nothing ---------------------------------------------


def test_persistent_slowdown_on_delete_fails_every_item_and_deletes_nothing(moto, proxy):
    bucket = stale_bucket(moto, {"team/app": 2, "library/alpine": 1})
    before = bucket.objects()
    fault = proxy.inject("POST", "delete")
    # botocore would read these, but S3Store's explicit retry Config wins: still retried
    env = {"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "legacy"}
    code, result, stderr = debris(proxy, bucket.name, "clean", *STALE, "--confirm", env=env)

    assert code == 3, stderr
    assert result["deleted"] == [] and result["skipped"] == [] and result["errors"] == []
    assert result["bytes_freed"] == 0
    assert sorted((f["repository"], f["upload_id"], f["reason"], f["bytes_freed"]) for f in result["failed"]) == sorted(
        (repo, uid, f"{startedat(repo, uid)}: {unavailable('DeleteObjects')}", 0) for repo, uid in bucket.sessions
    )
    assert all(f["deleted_paths"] == [] for f in result["failed"])
    # startedat goes first and alone; once it fails the session is left whole: one batch per item,
    # each tried as often as the others (and more than once)
    assert result["requests"]["DeleteObjects"] == fault.injected == proxy.seen[("POST", "delete")]
    assert fault.injected % 3 == 0 and fault.injected // 3 > 1
    assert bucket.objects() == before


def test_a_persistent_error_is_tried_as_often_as_documented(moto, proxy):
    bucket = stale_bucket(moto, {"team/app": 1})
    fault = proxy.inject("POST", "delete")
    code, result, _ = debris(proxy, bucket.name, "clean", *STALE, "--confirm")
    assert code == 3
    assert fault.injected == result["requests"]["DeleteObjects"] == DOCUMENTED_ATTEMPTS


def test_persistent_slowdown_on_every_listing_cannot_run(moto, proxy):
    """Nothing can be listed: the store is checked when it is opened, so exit 1 with the reason."""
    bucket = stale_bucket(moto, {"team/app": 2})
    before = bucket.objects()
    listing = proxy.inject("GET", "list-type")

    for command in (("plan", *STALE), ("clean", *STALE, "--confirm")):
        code, out, stderr = debris(proxy, bucket.name, *command)
        assert code == 1, stderr
        assert out is None or out == {}
        assert f"debris: error: s3://{bucket.name}/{ROOT}: store unavailable after retries (SlowDown" in stderr
    assert listing.injected > 1
    assert bucket.objects() == before


def test_a_repository_that_cannot_be_listed_is_reported_and_the_rest_is_cleaned(moto, proxy):
    bucket = stale_bucket(moto, {"team/app": 2, "team/bad": 1})
    before = bucket.objects()
    uploads = f"{ROOT}/{V2}/repositories/team/bad/_uploads/"
    fault = proxy.inject("GET", "list-type", prefix=uploads)

    code, result, stderr = debris(proxy, bucket.name, "clean", *STALE, "--confirm")
    assert code == 3, stderr
    assert result["errors"] == [unavailable(f"list {uploads}")]
    assert fault.injected > 1
    assert sorted((d["repository"], d["upload_id"]) for d in result["deleted"]) == sorted(
        k for k in bucket.sessions if k[0] == "team/app"
    )
    assert result["failed"] == result["skipped"] == []
    gone = {k for (repo, _), files in bucket.sessions.items() if repo == "team/app" for k in files}
    assert bucket.objects() == {k: v for k, v in before.items() if k not in gone}


def test_listing_that_fails_during_apply_deletes_nothing(moto, proxy, tmp_path):
    """The plan was made while the store answered; at apply time it throttles every listing."""
    bucket = stale_bucket(moto, {"team/app": 2})
    before = bucket.objects()
    planfile = tmp_path / "plan.json"
    code, plan, stderr = debris(proxy, bucket.name, "plan", *STALE, "--out", str(planfile))
    assert code == 0 and len(plan["items"]) == 2, stderr
    proxy.inject("GET", "list-type", prefix=f"{ROOT}/{V2}/repositories/team/app/_uploads/")
    result = CliRunner().invoke(
        app,
        ["apply", str(planfile), "--confirm", "--force", "--json"],
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    assert result.exit_code == 3, result.stderr
    data = json.loads(result.stdout)
    assert data["deleted"] == [] and data["failed"] == []
    prefixes = sorted(f"{ROOT}/{V2}/repositories/team/app/_uploads/{uid}/" for _, uid in bucket.sessions)
    assert sorted(data["errors"]) == [unavailable(f"list {p}") for p in prefixes]
    # skipped, and saying why: not "gone since plan"
    assert sorted(s["reason"] for s in data["skipped"]) == [
        f"could not re-read the session: {unavailable(f'list {p}')}" for p in prefixes
    ]
    assert "DeleteObjects" not in data["requests"]
    assert bucket.objects() == before
