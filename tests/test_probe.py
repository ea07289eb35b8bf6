"""``debris probe``: read and write health of a registry and its store, under one deadline.

The incidents are made for real: a registry on Ceph RGW whose bucket quota is full (pushes fail
with a bare ``500 UNKNOWN``, only the store probe can say why), a registry frozen with SIGSTOP
(the kernel accepts the connection, nothing answers), a store on a full and on a read-only tmpfs,
and 2.8's read-only mode. Auth, the class mapping and ``--serve`` are checked against a tiny
stdlib registry stand-in that can be told what to answer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from debris import probe
from debris.cli import Exit
from debris.probe import EXIT_CODES, Check, Health, RegistryTarget, run_probe
from debris.stores.base import (
    FileInfo,
    Store,
    StoreAuth,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreThrottled,
    StoreTimeout,
)

from ceph import debris_env, requires_ceph
from registry import (
    RegistryClient,
    RegistryHTTPError,
    RegistryServer,
    abandon_upload,
    make_layer,
    registry_on_rgw,
    requires_registry_tools,
)
from tmpfs import fill, mounted_tmpfs
from treebuilder import make_tree, snapshot

REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE_REPO = "debris-probe"
S3_BODY = (
    b'{"errors":[{"code":"UNKNOWN","message":"unknown error",'
    b'"detail":{"DriverName":"s3aws","Enclosed":{"RequestFailure":{}}}}]}\n'
)


def debris(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "debris", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )


def report(proc: subprocess.CompletedProcess, code: int) -> dict:
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def classes(doc: dict) -> dict[str, str | None]:
    out = {"read": doc["read"]["class"], "write": doc["write"]["class"]}
    for target in ("registry", "store"):
        if doc[target] is not None:
            out[f"{target}.read"] = doc[target]["read"]["class"]
            out[f"{target}.write"] = doc[target]["write"]["class"]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- unit level: the class table ----------------------------------------------------------------


def test_exit_code_table_is_stable_and_distinct():
    assert {h.value: c for h, c in EXIT_CODES.items()} == {
        "healthy": 0,
        "insufficient_storage": 10,
        "read_only": 11,
        "hung": 12,
        "unauthorized": 13,
        "backend_error": 14,
        "error": 15,
    }
    assert set(EXIT_CODES) == set(Health)
    codes = [c for h, c in EXIT_CODES.items() if h is not Health.HEALTHY]
    assert len(set(codes)) == len(codes)
    assert not set(codes) & {int(e) for e in Exit}, "collides with another command's exit code"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (507, b"", Health.INSUFFICIENT_STORAGE),
        (405, b"Method not allowed\n", Health.READ_ONLY),
        (401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', Health.UNAUTHORIZED),
        (403, b"", Health.UNAUTHORIZED),
        (500, S3_BODY, Health.BACKEND_ERROR),
        (500, b"oops", Health.BACKEND_ERROR),
        # The filesystem driver says which errno: its 500 is specific.
        (500, b'{"errors":[{"code":"UNKNOWN","detail":{"DriverName":"filesystem","Enclosed":{"Err":28}}}]}',
         Health.INSUFFICIENT_STORAGE),
        (500, b'{"errors":[{"code":"UNKNOWN","detail":{"DriverName":"filesystem","Enclosed":{"Err":122}}}]}',
         Health.INSUFFICIENT_STORAGE),
        (500, b'{"errors":[{"code":"UNKNOWN","detail":{"DriverName":"filesystem","Enclosed":{"Err":30}}}]}',
         Health.READ_ONLY),
        (500, b'{"errors":[{"code":"UNKNOWN","detail":{"DriverName":"filesystem","Enclosed":{"Err":5}}}]}',
         Health.BACKEND_ERROR),
        (429, b"", Health.BACKEND_ERROR),
        (502, b"", Health.BACKEND_ERROR),
        (503, b"", Health.BACKEND_ERROR),
        (504, b"", Health.HUNG),
        (404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', Health.ERROR),
        (400, b"", Health.ERROR),
    ],
)  # fmt: skip
def test_write_answer_classes(status, body, expected):
    check = probe.classify_write_answer(status, body, "POST /v2/debris-probe/blobs/uploads/")
    assert check.cls is expected
    assert check.status == status and check.detail.startswith(f"POST /v2/debris-probe/blobs/uploads/ {status}")


def test_the_s3_drivers_bare_500_is_shown_as_it_came():
    check = probe.classify_write_answer(500, S3_BODY, "POST /v2/p/blobs/uploads/")
    assert '{"DriverName":"s3aws","Enclosed":{"RequestFailure":{}}}' in check.detail
    assert "UNKNOWN: unknown error" in check.detail


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, Health.HEALTHY), (401, Health.UNAUTHORIZED), (403, Health.UNAUTHORIZED), (500, Health.ERROR),
     (404, Health.ERROR)],
)  # fmt: skip
def test_read_answer_classes(status, expected):
    assert probe.classify_read_answer(status).cls is expected


@pytest.mark.parametrize(
    ("error", "write", "read"),
    [
        (StoreFull("full"), Health.INSUFFICIENT_STORAGE, Health.ERROR),
        (StoreReadOnly("ro"), Health.READ_ONLY, Health.ERROR),
        (StoreTimeout("slow"), Health.HUNG, Health.HUNG),
        (StoreThrottled("SlowDown"), Health.BACKEND_ERROR, Health.ERROR),
        (StoreAuth("denied"), Health.UNAUTHORIZED, Health.UNAUTHORIZED),
        (StoreError("other"), Health.ERROR, Health.ERROR),
    ],
)
def test_store_error_classes(error, write, read):
    assert probe.classify_store_error(error, write=True).cls is write
    assert probe.classify_store_error(error, write=False).cls is read


def test_the_store_explains_the_registrys_500():
    reg = Check(Health.BACKEND_ERROR, "POST … 500 UNKNOWN", 500)
    full = Check(Health.INSUFFICIENT_STORAGE, "write …: store full (QuotaExceeded)")
    overall = probe.combine([("registry", reg), ("store", full)], probe.WRITE_PRECEDENCE)
    assert overall.cls is Health.INSUFFICIENT_STORAGE
    assert "QuotaExceeded" in overall.detail and "500 UNKNOWN" in overall.detail
    assert "explains the registry's backend_error" in overall.detail
    ok = Check(Health.HEALTHY, "fine")
    assert probe.combine([("registry", ok), ("store", ok)], probe.WRITE_PRECEDENCE).cls is Health.HEALTHY
    hung = Check(Health.HUNG, "no answer")
    assert probe.combine([("registry", hung), ("store", ok)], probe.WRITE_PRECEDENCE).cls is Health.HUNG
    assert probe.combine([("registry", reg)], probe.WRITE_PRECEDENCE).cls is Health.BACKEND_ERROR
    assert probe.combine([("registry", hung), ("store", ok)], probe.READ_PRECEDENCE).cls is Health.HUNG


def test_exit_code_follows_write_then_read():
    def rep(read: Health, write: Health) -> probe.Report:
        return probe.Report(Check(read), Check(write), None, None, PROBE_REPO, 5, 0, "")

    assert rep(Health.HEALTHY, Health.HEALTHY).exit_code == 0
    assert rep(Health.HEALTHY, Health.INSUFFICIENT_STORAGE).exit_code == 10
    assert rep(Health.HUNG, Health.HUNG).exit_code == 12
    assert rep(Health.UNAUTHORIZED, Health.HEALTHY).exit_code == 13  # writes fine, reads not: still unhealthy


def test_challenge_parsing():
    scheme, params = probe.parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert probe.parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert probe.normalize_registry_url("reg.example:5000/") == "https://reg.example:5000"


# -- the store probe against stores that fail on purpose ------------------------------------------


class FailingStore(Store):
    """A store whose write_new raises ``error`` (or blocks until ``release`` is set)."""

    def __init__(self, error: StoreError | None = None, release: threading.Event | None = None):
        self.error = error
        self.release = release

    @property
    def url(self) -> str:
        return "test://failing"

    def identity(self) -> dict:
        return {}

    def walk(self, *a, **kw):
        return iter(())

    def stat(self, key):
        return None

    def read(self, key, limit):
        return None

    def remove_file(self, key, expected):
        raise AssertionError("the probe must not delete what it did not write")

    def write_new(self, key: str, data: bytes, created: list[str]) -> FileInfo:
        if self.release is not None:
            self.release.wait(30)
        raise self.error or StoreError("unreachable")


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (StoreFull("write k: store full (QuotaExceeded: …)"), Health.INSUFFICIENT_STORAGE),
        (StoreReadOnly("k: Read-only file system"), Health.READ_ONLY),
        (StoreTimeout("k: the store did not answer in time"), Health.HUNG),
        (StoreThrottled("k: store unavailable after retries (SlowDown)"), Health.BACKEND_ERROR),
        (StoreAuth("k: access denied"), Health.UNAUTHORIZED),
        (StoreError("k: Input/output error"), Health.ERROR),
    ],
)
def test_store_probe_maps_every_store_error(error, cls):
    rep = run_probe(None, lambda: FailingStore(error), PROBE_REPO, 5)
    assert rep.store.read.cls is Health.HEALTHY
    assert rep.write.cls is cls and rep.store.write.cls is cls
    assert rep.exit_code == EXIT_CODES[cls]
    assert str(error) in rep.write.detail


def test_whole_run_is_bounded_by_one_deadline():
    """A server that accepts and never answers, and a store that never returns: both hung, at once."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshake; nobody ever accepts
    release = threading.Event()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        rep = run_probe(RegistryTarget(url), lambda: FailingStore(release=release), PROBE_REPO, 1.0)
        elapsed = time.monotonic() - t0
    finally:
        release.set()
        silent.close()
    assert elapsed < 1.3, elapsed
    assert rep.read.cls is Health.HUNG and rep.write.cls is Health.HUNG
    assert rep.registry.read.cls is Health.HUNG and rep.store.write.cls is Health.HUNG
    assert "GET /v2/" in rep.registry.read.detail
    assert rep.exit_code == 12


def test_unreachable_registry_is_an_error():
    port = free_port()  # nothing listens there
    rep = run_probe(RegistryTarget(f"http://127.0.0.1:{port}"), None, PROBE_REPO, 2)
    assert (rep.read.cls, rep.write.cls) == (Health.ERROR, Health.ERROR)
    assert "cannot reach" in rep.registry.read.detail and rep.exit_code == 15


# -- a registry stand-in: auth, statuses ---------------------------------------------------------


class FakeRegistry:
    """Answers the probe's requests like distribution, with what a test says; optional basic or
    bearer-token auth (the token server is the same process, at /token)."""

    USER, PASSWORD = "prober", "s3cret"

    def __init__(self, auth: str | None = None):
        self.auth = auth
        self.v2_status = 200
        self.post = (202, b"")
        self.patch = (202, b"")
        self.delete = (204, b"")
        self.log: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.token_requests: list[tuple[dict, str | None]] = []
        self.tokens: dict[str, str] = {}  # token -> scope
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                fake.handle(self)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _basic_ok(self, header: str | None) -> bool:
        good = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        return header == f"Basic {good}"

    def handle(self, h) -> None:
        path = urllib.parse.urlsplit(h.path)
        auth = h.headers.get("Authorization")
        if path.path == "/token":
            query = dict(urllib.parse.parse_qsl(path.query))
            self.token_requests.append((query, auth))
            if not self._basic_ok(auth):
                h._answer(401, b'{"details":"bad credentials"}')
                return
            token = f"tok-{len(self.tokens)}"
            self.tokens[token] = query.get("scope", "")
            h._answer(200, json.dumps({"token": token, "expires_in": 60}).encode())
            return
        self.log.append((h.command, path.path, auth))
        parts = path.path.split("/blobs/uploads/")
        repo = parts[0].removeprefix("/v2/") if len(parts) == 2 else ""
        if self.auth == "basic" and not self._basic_ok(auth):
            h._answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="fake"'})
            return
        if self.auth == "bearer":
            scope = f"repository:{repo}:pull,push" if repo else ""
            token = (auth or "").removeprefix("Bearer ")
            if token not in self.tokens or (scope and self.tokens[token] != scope):
                challenge = f'Bearer realm="{self.url}/token",service="fake-registry"'
                if scope:
                    challenge += f',scope="{scope}"'
                h._answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
                return
        if path.path == "/v2/":
            h._answer(self.v2_status, b"{}")
            return
        uid = "6d0f6f4e-1d8a-4c43-9a1e-1f6c1d2b0a11"
        location = f"/v2/{repo}/blobs/uploads/{uid}?_state=x"
        status, body = {"POST": self.post, "PATCH": self.patch, "DELETE": self.delete}[h.command]
        headers = {"Docker-Upload-UUID": uid, "Location": location} if status in (202,) else {}
        h._answer(status, body, headers)


@pytest.fixture
def fake():
    registries: list[FakeRegistry] = []

    def make(auth: str | None = None) -> FakeRegistry:
        registries.append(FakeRegistry(auth))
        return registries[-1]

    yield make
    for r in registries:
        r.close()


def test_bearer_token_flow(fake):
    reg = fake("bearer")
    rep = run_probe(RegistryTarget(reg.url, FakeRegistry.USER, FakeRegistry.PASSWORD), None, PROBE_REPO, 5)
    assert (rep.read.cls, rep.write.cls) == (Health.HEALTHY, Health.HEALTHY), rep.to_json()
    assert rep.registry.auth == "bearer" and rep.registry.left_session is None
    # Tokens were asked for with the basic credentials, for the challenge's service and scope.
    scopes = [q.get("scope") for q, _ in reg.token_requests]
    assert scopes == [None, f"repository:{PROBE_REPO}:pull,push"]
    assert all(q["service"] == "fake-registry" for q, _ in reg.token_requests)
    assert all(a and a.startswith("Basic ") for _, a in reg.token_requests)
    # The upload's requests carried the push token; PATCH and DELETE sent it up front.
    push_token = next(t for t, s in reg.tokens.items() if s)
    answered = [(m, a) for m, p, a in reg.log if p != "/v2/" and a == f"Bearer {push_token}"]
    assert [m for m, _ in answered] == ["POST", "PATCH", "DELETE"]


def test_bearer_token_refused(fake):
    reg = fake("bearer")
    rep = run_probe(RegistryTarget(reg.url, FakeRegistry.USER, "wrong"), None, PROBE_REPO, 5)
    assert (rep.read.cls, rep.write.cls) == (Health.UNAUTHORIZED, Health.UNAUTHORIZED)
    assert "token server refused" in rep.registry.read.detail
    assert rep.exit_code == 13
    anonymous = run_probe(RegistryTarget(reg.url), None, PROBE_REPO, 5)
    assert anonymous.write.cls is Health.UNAUTHORIZED


def test_basic_auth_from_the_environment(fake):
    reg = fake("basic")
    env = {
        **os.environ,
        "DEBRIS_REGISTRY_USERNAME": FakeRegistry.USER,
        "DEBRIS_REGISTRY_PASSWORD": FakeRegistry.PASSWORD,
    }
    doc = report(debris("probe", "--registry", reg.url, "--json", env=env), 0)
    assert doc["registry"]["auth"] == "basic"
    assert classes(doc) == {
        "read": "healthy",
        "write": "healthy",
        "registry.read": "healthy",
        "registry.write": "healthy",
    }
    without = report(debris("probe", "--registry", reg.url, "--json"), 13)
    assert "no credentials given" in without["registry"]["read"]["detail"]


@pytest.mark.parametrize(
    ("answers", "cls", "code"),
    [
        ({"post": (507, b"")}, Health.INSUFFICIENT_STORAGE, 10),
        ({"post": (405, b"Method not allowed\n")}, Health.READ_ONLY, 11),
        ({"post": (500, S3_BODY)}, Health.BACKEND_ERROR, 14),
        ({"patch": (500, S3_BODY)}, Health.BACKEND_ERROR, 14),
        ({"post": (403, b"")}, Health.UNAUTHORIZED, 13),
    ],
)
def test_registry_write_failures(fake, answers, cls, code):
    reg = fake()
    for k, v in answers.items():
        setattr(reg, k, v)
    rep = run_probe(RegistryTarget(reg.url), None, PROBE_REPO, 5)
    assert rep.read.cls is Health.HEALTHY
    assert rep.write.cls is cls and rep.exit_code == code
    if "patch" in answers:  # the upload was started: it is still cancelled
        assert [m for m, _, _ in reg.log] == ["GET", "POST", "PATCH", "DELETE"]
        assert rep.registry.left_session is None


def test_failed_cancel_names_the_session_left(fake):
    reg = fake()
    reg.delete = (500, S3_BODY)
    doc = report(debris("probe", "--registry", reg.url, "--json"), 14)
    uid = "6d0f6f4e-1d8a-4c43-9a1e-1f6c1d2b0a11"
    assert doc["registry"]["left_session"] == uid and doc["registry"]["upload_uuid"] == uid
    assert f"upload {uid} left open" in doc["write"]["detail"]
    assert any(uid in n and "--probe-repo debris-probe" in n for n in doc["notes"])
    text = debris("probe", "--registry", reg.url)
    assert text.returncode == 14 and f"upload session {uid}" in text.stdout
    assert text.stdout.split()[:4] == ["target", "read", "write", "detail"]


def test_usage_errors(tmp_path):
    assert debris("probe").returncode == 2
    assert debris("probe", "--registry", "http://127.0.0.1:1", "--probe-repo", "Bad Name").returncode == 2
    assert debris("probe", "--registry", "http://127.0.0.1:1", "--timeout", "0s").returncode == 2
    assert debris("probe", "--registry", "http://127.0.0.1:1", "--serve", ":9109").returncode == 2
    assert debris("probe", "rgw://bucket/root").returncode == 2  # rgw:// without --endpoint-url


# -- --serve --------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_answers_200_and_503_on_both_endpoints(fake):
    reg = fake()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "debris", "probe", "--registry", reg.url, "--serve", f"127.0.0.1:{port}",
         "--interval", "1s", "--timeout", "2s"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def wait_for(read: int, write: int) -> tuple[dict, dict]:
        deadline = time.monotonic() + 10
        last = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                r, w = _get(base + "/healthz/read"), _get(base + "/healthz/write")
            except OSError as e:  # not listening yet
                last = e
            else:
                last = (r, w)
                if (r[0], w[0]) == (read, write):
                    return r[1], w[1]
            time.sleep(0.1)
        raise AssertionError(f"never saw read {read} / write {write}; last: {last}")

    try:
        r, w = wait_for(200, 200)
        assert r["class"] == w["class"] == "healthy" and w["targets"] == {"registry": "healthy"}
        reg.post = (507, b"")  # the store fills: pushes are refused, reads keep flowing
        r, w = wait_for(200, 503)
        assert r["class"] == "healthy" and w["class"] == "insufficient_storage"
        reg.v2_status = 500  # now reads fail too
        r, w = wait_for(503, 503)
        assert r["class"] == "error"
        whole = _get(base + "/healthz")
        assert whole[0] == 503 and whole[1]["exit_code"] == 10
        assert _get(base + "/nope")[0] == 404
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "serving http://127.0.0.1:" in err and "write=insufficient_storage" in err


# -- a local store: healthy, full, read-only -------------------------------------------------------


def _layout(snap: dict[str, tuple]) -> dict[str, tuple]:
    """A snapshot without directories' mtimes: making and removing the probe's directories
    touches its parents' mtime, which is all a probe may change."""
    out = {}
    for path, (mode, size, mtime, target) in snap.items():
        out[path] = (mode, None, None, target) if (mode & 0o170000) == 0o040000 else (mode, size, mtime, target)
    return out


def test_store_probe_on_a_healthy_local_store_leaves_nothing(tmp_path):
    tree = make_tree(tmp_path / "root")
    tree.image("library/alpine")
    before = snapshot(tree.root)
    doc = report(debris("probe", str(tree.root), "--json"), 0)
    assert classes(doc) == {"read": "healthy", "write": "healthy", "store.read": "healthy", "store.write": "healthy"}
    assert doc["store"]["key"].startswith(f"docker/registry/v2/repositories/{PROBE_REPO}/_uploads/")
    assert doc["store"]["free"]["bytes_free"] > 0 and doc["store"]["free"]["inodes_free"] > 0
    assert doc["store"]["left"] == [] and doc["registry"] is None
    assert _layout(snapshot(tree.root)) == _layout(before)
    text = debris("probe", str(tree.root))
    assert text.returncode == 0 and "free " in text.stdout and "inodes" in text.stdout


@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", size="4m") as mnt:
        yield mnt


@pytest.mark.tmpfs
def test_store_probe_on_a_full_and_a_read_only_tmpfs(small_tmpfs):
    tree = make_tree(small_tmpfs / "root")
    tree.image("library/alpine")
    tree.session("library/alpine", age=60)
    fill(small_tmpfs)
    before = snapshot(tree.root)

    doc = report(debris("probe", str(tree.root), "--json"), 10)
    assert classes(doc) == {
        "read": "healthy", "write": "insufficient_storage",
        "store.read": "healthy", "store.write": "insufficient_storage",
    }  # fmt: skip
    assert "No space left on device" in doc["store"]["write"]["detail"]
    assert doc["store"]["free"]["bytes_free"] == 0
    # The refused write's directories (mkdir needs no data block) were removed through the gate too.
    assert doc["store"]["left"] == []
    assert _layout(snapshot(tree.root)) == _layout(before)
    assert not (tree.v2 / "repositories" / PROBE_REPO).exists()

    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        ro = report(debris("probe", str(tree.root), "--json"), 11)
        assert ro["write"]["class"] == "read_only" and ro["read"]["class"] == "healthy"
        assert "Read-only file system" in ro["store"]["write"]["detail"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    assert _layout(snapshot(tree.root)) == _layout(before)


@pytest.mark.tmpfs
@pytest.mark.registry
@requires_registry_tools
def test_registry_on_a_full_tmpfs_says_enospc(small_tmpfs, tmp_path):
    """The filesystem driver's 500 carries the errno: the registry alone is enough to say "full"."""
    tree = make_tree(small_tmpfs / "root")
    with RegistryServer(rootdirectory=tree.root, workdir=tmp_path / "reg") as reg:
        fill(small_tmpfs)
        doc = report(debris("probe", "--registry", reg.url, str(tree.root), "--json"), 10)
    assert doc["registry"]["read"]["class"] == "healthy"
    assert doc["registry"]["write"]["class"] == "insufficient_storage"
    assert "ENOSPC" in doc["registry"]["write"]["detail"] and doc["registry"]["write"]["status"] == 500
    assert doc["store"]["write"]["class"] == "insufficient_storage"


# -- a real registry: read-only mode, frozen --------------------------------------------------------


@pytest.mark.registry
@requires_registry_tools
def test_read_only_registry(tmp_path):
    tree = make_tree(tmp_path / "root")
    with RegistryServer(rootdirectory=tree.root, workdir=tmp_path / "reg", readonly=True) as reg:
        doc = report(debris("probe", "--registry", reg.url, "--json"), 11)
    assert classes(doc) == {"read": "healthy", "write": "read_only", "registry.read": "healthy",
                            "registry.write": "read_only"}  # fmt: skip
    assert doc["registry"]["write"]["status"] == 405


def _probe_sessions(root: Path) -> dict[str, list[str]]:
    uploads = root / "docker/registry/v2/repositories" / PROBE_REPO / "_uploads"
    if not uploads.is_dir():
        return {}
    return {d.name: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()) for d in uploads.iterdir()}


@pytest.mark.registry
@requires_registry_tools
def test_frozen_registry_is_hung_within_the_timeout(tmp_path):
    tree = make_tree(tmp_path / "root")
    timeout = 2
    with RegistryServer(rootdirectory=tree.root, workdir=tmp_path / "reg") as reg:
        reg.pause()
        try:
            t0 = time.monotonic()
            proc = debris("probe", "--registry", reg.url, str(tree.root), "--timeout", f"{timeout}s", "--json")
            wall = time.monotonic() - t0
        finally:
            reg.resume()
        doc = report(proc, 12)
        # The whole run, interpreter start included, stays within the timeout plus a little.
        assert wall <= timeout + 1.5, wall
        assert doc["elapsed_seconds"] <= timeout + 0.25
        assert classes(doc) == {
            "read": "hung", "write": "hung", "registry.read": "hung", "registry.write": "hung",
            "store.read": "healthy", "store.write": "healthy",
        }  # fmt: skip
        assert "GET /v2/" in doc["registry"]["read"]["detail"]

        # Thawed, it is healthy again; its cancelled uploads leave only 2.8's hashstate behind.
        doc = report(debris("probe", "--registry", reg.url, str(tree.root), "--json"), 0)
        uid = doc["registry"]["upload_uuid"]
        sessions = _probe_sessions(tree.root)
        assert sessions[uid] == ["hashstates/sha256/0"]
        # (the frozen run's own POST may be served only after the thaw, and nobody cancels it: a whole
        # session of the probe repository, which the clean below removes like the hashstate leftovers)
        # ... which are ordinary stale sessions of the probe repository for `clean --probe-repo`.
        time.sleep(1.1)
        clean = debris(
            "clean", str(tree.root), "--probe-repo", PROBE_REPO, "--probe-older-than", "1s", "--force", "--confirm",
            "--json",
        )  # fmt: skip
        cleaned = report(clean, 0)
        assert {d["upload_id"] for d in cleaned["deleted"]} == set(sessions)
        assert {d["class"] for d in cleaned["deleted"]} == {"probe_repo"}
        assert _probe_sessions(tree.root) == {}
        RegistryClient(reg.url).push_image("library/alpine", "after", [make_layer("a", b"a")])


# -- the quota incident on Ceph RGW ----------------------------------------------------------------

ROOTDIR = "registry"
V2 = f"{ROOTDIR}/docker/registry/v2"


def _probe_leftovers(s3, bucket: str) -> tuple[list[str], list[str]]:
    """startedat objects and open multipart uploads in the probe repository."""
    prefix = f"{V2}/repositories/{PROBE_REPO}/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    startedat = [o["Key"] for p in pages for o in p.get("Contents", ()) if o["Key"].endswith("/startedat")]
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return startedat, [u["Key"] for u in uploads]


@pytest.mark.rgw
@pytest.mark.registry
@requires_ceph
@requires_registry_tools
def test_quota_incident_on_rgw(ceph, tmp_path):
    bucket = f"probe-{uuid.uuid4().hex[:8]}"
    s3 = ceph.s3_client(retries={"max_attempts": 1})
    env = debris_env(ceph)
    store = f"rgw://{bucket}/{ROOTDIR}"
    reg = registry_on_rgw(ceph, bucket, tmp_path / "reg", ROOTDIR)
    with reg:
        both = ("probe", "--registry", reg.url, store, "--endpoint-url", ceph.endpoint, "--json")
        c = RegistryClient(reg.url)
        c.push_image("library/alpine", "3.19", [make_layer("base", os.urandom(50_000))])
        assert report(debris(*both, env=env), 0)["write"]["class"] == "healthy"

        # The incident: a quota just above usage, filled by abandoned uploads until pushes fail ...
        ceph.set_bucket_quota(bucket, ceph.bucket_stats(bucket)["size_actual"] + 1024 * 1024)
        for _ in range(3):
            abandon_upload(c, "library/alpine", [os.urandom(300_000)])
        with pytest.raises(RegistryHTTPError) as failed:
            for n in range(8):
                c.push_image("library/alpine", f"big{n}", [make_layer(f"big{n}", os.urandom(200_000))])
        assert (failed.value.status, failed.value.codes) == (500, ["UNKNOWN"])
        # ... and then to the last 4 KiB block (RGW counts objects rounded up to 4 KiB).
        for size in (50_000, 10_000, 4_000):
            try:
                for _ in range(40):
                    abandon_upload(c, "library/alpine", [os.urandom(size)])
            except RegistryHTTPError:
                pass
        with pytest.raises(ClientError, match="QuotaExceeded"):
            s3.put_object(Bucket=bucket, Key=f"{ROOTDIR}/one-byte", Body=b"x")

        # Registry and store: the store explains the registry's bare 500.
        doc = report(debris(*both, env=env), 10)
        assert classes(doc) == {
            "read": "healthy", "write": "insufficient_storage",
            "registry.read": "healthy", "registry.write": "backend_error",
            "store.read": "healthy", "store.write": "insufficient_storage",
        }  # fmt: skip
        assert doc["registry"]["write"]["status"] == 500
        assert '{"DriverName":"s3aws","Enclosed":{"RequestFailure":{}}}' in doc["registry"]["write"]["detail"]
        assert "QuotaExceeded" in doc["store"]["write"]["detail"]
        assert "QuotaExceeded" in doc["write"]["detail"] and "500" in doc["write"]["detail"]
        assert _probe_leftovers(s3, bucket) == ([], [])  # the refused writes left nothing
        text = debris(*both[:-1], env=env)
        assert text.returncode == 10
        rows = {
            " ".join(line.split()[:2]): line.split()[2:4]
            for line in text.stdout.splitlines()
            if line.startswith(("registry ", "store "))
        }
        assert rows[f"registry {reg.url}"] == ["healthy", "backend_error"], text.stdout
        assert rows[f"store {store}"] == ["healthy", "insufficient_storage"], text.stdout
        assert "it explains the registry's backend_error" in text.stdout
        # The registry alone can only say its backend failed.
        alone = report(debris("probe", "--registry", reg.url, "--json", env=env), 14)
        assert (alone["read"]["class"], alone["write"]["class"]) == ("healthy", "backend_error")

        time.sleep(2.2)  # every abandoned upload idle > 1 s by RGW's clock
        clean = debris(
            "clean", store, "--endpoint-url", ceph.endpoint, "--older-than", "1s", "--probe-repo", PROBE_REPO,
            "--probe-older-than", "1s", "--force", "--confirm", "--json", env=env,
        )  # fmt: skip
        assert report(clean, 0)["bytes_freed"] >= 900_000

        doc = report(debris(*both, env=env), 0)
        assert classes(doc) == {
            "read": "healthy", "write": "healthy", "registry.read": "healthy", "registry.write": "healthy",
            "store.read": "healthy", "store.write": "healthy",
        }  # fmt: skip
        assert doc["registry"]["left_session"] is None
        # The same with the store (and its credentials) from the registry's own config.yml.
        bare_env = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
        by_config = debris(
            "probe", "--registry", reg.url, "--registry-config", str(reg.config_path), "--json", env=bare_env
        )
        assert report(by_config, 0)["store"]["url"] == f"s3://{bucket}/{ROOTDIR}"
        # The probe left no startedat and no open multipart upload (2.8's cancel re-writes only a hashstate).
        startedat, uploads = _probe_leftovers(s3, bucket)
        assert startedat == [] and uploads == []
        c.push_image("library/alpine", "after", [make_layer("after", b"after")])
