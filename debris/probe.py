"""Write-health probe: can the registry, and the store under it, take one more byte?

A registry whose store is full, over quota or read-only keeps serving reads: ``GET /v2/`` stays
green while every push fails with an opaque ``500 UNKNOWN``. This module asks both targets:

* the registry (``--registry URL``): read health is ``GET /v2/``; write health starts an upload in
  the probe repository (``POST /v2/<repo>/blobs/uploads/``), PATCHes a few bytes and cancels it
  (``DELETE``). Standard library HTTP only; basic and bearer-token auth.
* the store (STORE / ``--registry-config``): writes one tiny ``startedat`` into a fresh upload
  session of the probe repository with ``Store.write_new`` and removes it again through the
  gate (``debris.apply.remove_probe_write``), the only way the probe deletes anything.

Each answer is mapped onto one class (``Health``); when both targets are probed, the store's class
explains the registry's: a full bucket is a bare ``500 UNKNOWN`` to the registry's client but
``QuotaExceeded`` to the store probe, so the overall write class is ``insufficient_storage``.

One deadline bounds the whole run: both targets run at once in worker threads, every HTTP request
gets only the time that is left, and whatever has not answered at the deadline is ``hung``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial

from debris import layout
from debris.stores.base import (
    Capability,
    Store,
    StoreAuth,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreThrottled,
    StoreTimeout,
)

DEFAULT_PROBE_REPO = "debris-probe"
DEFAULT_TIMEOUT = 5.0
#: What the registry probe PATCHes into its upload before cancelling it.
PROBE_BYTES = b"debris write probe\n"
#: The most of any HTTP answer body we read (error bodies are a few hundred bytes).
BODY_LIMIT = 64 * 1024


class Health(StrEnum):
    HEALTHY = "healthy"
    INSUFFICIENT_STORAGE = "insufficient_storage"  # HTTP 507, ENOSPC/EDQUOT, QuotaExceeded
    READ_ONLY = "read_only"  # 405 on POST (2.8 read-only mode), EROFS
    HUNG = "hung"  # no answer before the deadline
    UNAUTHORIZED = "unauthorized"  # 401/403, a refused token or store credentials
    BACKEND_ERROR = "backend_error"  # the registry's storage driver failed (500), or the store throttles
    ERROR = "error"  # anything else: unreachable, an unexpected answer, a bad store


#: Documented exit codes of ``debris probe``, one per class, whichever target found it.
#: 1 (could not run) and 2 (usage) keep their meaning for every debris command.
EXIT_CODES: dict[Health, int] = {
    Health.HEALTHY: 0,
    Health.INSUFFICIENT_STORAGE: 10,
    Health.READ_ONLY: 11,
    Health.HUNG: 12,
    Health.UNAUTHORIZED: 13,
    Health.BACKEND_ERROR: 14,
    Health.ERROR: 15,
}

#: When targets disagree, the first unhealthy class in this order is the overall one: the most
#: specific cause first, so a store that says "full" explains a registry that says "500".
WRITE_PRECEDENCE = (
    Health.INSUFFICIENT_STORAGE,
    Health.READ_ONLY,
    Health.HUNG,
    Health.UNAUTHORIZED,
    Health.BACKEND_ERROR,
    Health.ERROR,
)
READ_PRECEDENCE = (Health.HUNG, Health.UNAUTHORIZED, Health.ERROR)

#: errno values the filesystem driver puts in its 500 answer ({"Enclosed": {"Err": 28}}).
_ERRNO_CLASS = {28: Health.INSUFFICIENT_STORAGE, 122: Health.INSUFFICIENT_STORAGE, 30: Health.READ_ONLY}
_ERRNO_NAME = {28: "ENOSPC", 122: "EDQUOT", 30: "EROFS"}

CLEANUP_HINT = (
    "2.8 re-writes hashstates/sha256/0 of a cancelled upload: such leftovers are ordinary stale "
    "sessions of the probe repository, removed by `debris clean STORE --probe-repo {repo} --confirm`"
)


@dataclass
class Check:
    """One health verdict with what it is based on."""

    cls: Health
    detail: str = ""
    status: int | None = None  # the HTTP status that decided it (registry only)

    def to_json(self) -> dict:
        out: dict = {"class": self.cls.value, "detail": self.detail}
        if self.status is not None:
            out["status"] = self.status
        return out


# -- classification (pure) ---------------------------------------------------------------------


def _error_summary(body: bytes) -> tuple[str, dict | None]:
    """'CODE: message {detail}' from a distribution error body, and the first error's detail."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") or []
        first = errors[0]
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return text, None
    parts = []
    for e in errors[:3]:
        if not isinstance(e, dict):
            continue
        piece = f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ")
        if e.get("detail") not in (None, "", {}):
            piece += " " + json.dumps(e["detail"], separators=(",", ":"))[:300]
        parts.append(piece)
    detail = first.get("detail") if isinstance(first, dict) else None
    return "; ".join(parts), detail if isinstance(detail, dict) else None


def classify_read_answer(status: int, body: bytes = b"") -> Check:
    """``GET /v2/``: 200 healthy, 401/403 unauthorized, anything else an error."""
    if status == 200:
        return Check(Health.HEALTHY, "GET /v2/ 200", status)
    summary, _ = _error_summary(body)
    what = f"GET /v2/ {status}" + (f" {summary}" if summary else "")
    if status in (401, 403):
        return Check(Health.UNAUTHORIZED, what, status)
    return Check(Health.ERROR, what, status)


def classify_write_answer(status: int, body: bytes, what: str) -> Check:
    """An unexpected answer to a write request (``what`` is e.g. 'POST /v2/r/blobs/uploads/')."""
    summary, detail = _error_summary(body)
    said = f"{what} {status}" + (f" {summary}" if summary else "")
    if status == 507:
        return Check(Health.INSUFFICIENT_STORAGE, said, status)
    if status == 405:
        return Check(Health.READ_ONLY, f"{said} (the registry refuses writes: read-only mode)", status)
    if status in (401, 403):
        return Check(Health.UNAUTHORIZED, said, status)
    if status == 500:
        enclosed = detail.get("Enclosed") if detail else None
        err = enclosed.get("Err") if isinstance(enclosed, dict) else None
        if detail and detail.get("DriverName") == "filesystem" and isinstance(err, int) and err in _ERRNO_CLASS:
            return Check(_ERRNO_CLASS[err], f"{said} ({_ERRNO_NAME[err]} from the filesystem driver)", status)
        return Check(Health.BACKEND_ERROR, f"{said} (the storage driver failed; probe the store to see why)", status)
    if status in (429, 502, 503):
        return Check(Health.BACKEND_ERROR, said, status)
    if status == 504:
        return Check(Health.HUNG, f"{said} (a proxy gave up waiting for the registry)", status)
    return Check(Health.ERROR, said, status)


def classify_store_error(e: BaseException, *, write: bool) -> Check:
    """A store exception as a read or write verdict."""
    msg = str(e) or type(e).__name__
    if isinstance(e, StoreTimeout):
        return Check(Health.HUNG, msg)
    if isinstance(e, StoreAuth):
        return Check(Health.UNAUTHORIZED, msg)
    if write and isinstance(e, StoreFull):
        return Check(Health.INSUFFICIENT_STORAGE, msg)
    if write and isinstance(e, StoreReadOnly):
        return Check(Health.READ_ONLY, msg)
    if write and isinstance(e, StoreThrottled):
        return Check(Health.BACKEND_ERROR, f"{msg} (throttled)")
    return Check(Health.ERROR, msg)


def combine(checks: list[tuple[str, Check]], precedence: tuple[Health, ...]) -> Check:
    """The overall verdict over targets: healthy only if all are; else the first class in
    ``precedence`` any target found, with every unhealthy target's detail."""
    bad = [(t, c) for t, c in checks if c.cls is not Health.HEALTHY]
    if not checks:
        return Check(Health.ERROR, "nothing probed")
    if not bad:
        return Check(Health.HEALTHY, " and ".join(t for t, _ in checks) + " healthy")
    rank = {h: n for n, h in enumerate(precedence)}
    bad.sort(key=lambda tc: rank.get(tc[1].cls, len(rank)))
    target, first = bad[0]
    detail = f"{target}: {first.detail}"
    others = [f"{t}: {c.cls.value}: {c.detail}" for t, c in bad[1:]]
    if others and first.cls is not bad[1][1].cls and bad[1][1].cls in (Health.BACKEND_ERROR, Health.ERROR):
        detail += f" (this explains the {bad[1][0]}'s {bad[1][1].cls.value})"
    if others:
        detail += "; " + "; ".join(others)
    return Check(first.cls, detail)


# -- results -----------------------------------------------------------------------------------


@dataclass
class RegistryResult:
    url: str
    repository: str
    read: Check | None = None
    write: Check | None = None
    auth: str = "none"  # none | basic | bearer
    upload_uuid: str | None = None
    left_session: str | None = None  # an upload of ours that may still be open (cancel failed)
    step: str = ""  # the request in flight, for a hung verdict
    requests: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "url": self.url,
            "repository": self.repository,
            "auth": self.auth,
            "read": self.read.to_json() if self.read else None,
            "write": self.write.to_json() if self.write else None,
            "upload_uuid": self.upload_uuid,
            "left_session": self.left_session,
            "requests": list(self.requests),
        }


@dataclass
class StoreResult:
    url: str
    repository: str
    key: str | None = None
    read: Check | None = None
    write: Check | None = None
    free: dict | None = None
    left: list[str] = field(default_factory=list)  # what the probe made and could not remove
    step: str = ""

    def to_json(self) -> dict:
        return {
            "url": self.url,
            "repository": self.repository,
            "key": self.key,
            "read": self.read.to_json() if self.read else None,
            "write": self.write.to_json() if self.write else None,
            "free": self.free,
            "left": list(self.left),
        }


@dataclass
class Report:
    read: Check
    write: Check
    registry: RegistryResult | None
    store: StoreResult | None
    repository: str
    timeout: float
    elapsed: float
    checked_at: str

    @property
    def exit_code(self) -> int:
        """The write class's code; when writes are healthy but reads are not, the read class's."""
        if self.write.cls is not Health.HEALTHY:
            return EXIT_CODES[self.write.cls]
        return EXIT_CODES[self.read.cls]

    def notes(self) -> list[str]:
        out = []
        reg = self.registry
        if reg and reg.left_session:
            out.append(
                f"upload session {reg.left_session} of {reg.repository} may be left open (its cancel did not "
                f"succeed): `debris clean STORE --probe-repo {reg.repository} --confirm` removes it once idle "
                "for --probe-older-than"
            )
        if self.store and self.store.left:
            out.append(
                f"the store probe could not remove {', '.join(self.store.left)}: "
                f"`debris clean STORE --probe-repo {self.repository} --confirm` removes a left session"
            )
        if reg and reg.upload_uuid:
            out.append(CLEANUP_HINT.format(repo=reg.repository))
        return out

    def to_json(self) -> dict:
        return {
            "read": self.read.to_json(),
            "write": self.write.to_json(),
            "registry": self.registry.to_json() if self.registry else None,
            "store": self.store.to_json() if self.store else None,
            "probe_repository": self.repository,
            "exit_code": self.exit_code,
            "timeout_seconds": self.timeout,
            "elapsed_seconds": round(self.elapsed, 3),
            "checked_at": self.checked_at,
            "notes": self.notes(),
        }

    def endpoint_json(self, which: str) -> dict:
        """The body of ``/healthz/read`` or ``/healthz/write``."""
        check = self.read if which == "read" else self.write
        targets = {}
        for name, res in (("registry", self.registry), ("store", self.store)):
            if res is not None:
                c = getattr(res, which)
                targets[name] = c.cls.value if c else None
        return {**check.to_json(), "targets": targets, "checked_at": self.checked_at}


# -- the registry probe ------------------------------------------------------------------------


class _Hung(Exception):
    pass


class _Unreachable(Exception):
    pass


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` -> ('bearer', {realm, service, scope})."""
    if not header:
        return "", {}
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        params[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return scheme.lower(), params


def normalize_registry_url(url: str) -> str:
    """``host:5000`` -> ``https://host:5000``; no trailing slash; a path prefix is kept."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--registry {url!r}: use http://HOST[:PORT] or https://HOST[:PORT]")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass
class RegistryTarget:
    url: str
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None


class _Client:
    """HTTP against one registry under a deadline: every request gets only the time left."""

    def __init__(self, target: RegistryTarget, deadline: float, result: RegistryResult):
        self.target = target
        self.base = urllib.parse.urlsplit(target.url)
        self.deadline = deadline
        self.result = result
        self.scheme = ""  # the auth scheme the registry challenged with
        self.tokens: dict[str, str] = {}  # scope -> bearer token
        self.bearer: str | None = None  # the latest token, sent to the registry up front
        self.token_failure: Answer | None = None  # the token server's refusal, if any

    def _creds(self) -> str | None:
        if self.target.username is None:
            return None
        raw = f"{self.target.username}:{self.target.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _same_origin(self, url: str) -> bool:
        u = urllib.parse.urlsplit(url)
        return (u.scheme, u.netloc) == (self.base.scheme, self.base.netloc)

    def absolute(self, path_or_url: str) -> str:
        """Our own ``/v2/…`` paths go below the registry URL (a path prefix is kept); a Location
        header is resolved against it."""
        if path_or_url.startswith("/v2/"):
            return self.target.url + path_or_url
        return urllib.parse.urljoin(self.target.url + "/", path_or_url)

    def raw(self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        """One request on a new connection, bounded by the time left. Raises _Hung, _Unreachable."""
        remaining = self.deadline - time.monotonic()
        u = urllib.parse.urlsplit(url)
        shown = f"{method} {u.path}"
        if remaining <= 0:
            raise _Hung(f"{shown}: no time left")
        port = u.port or (443 if u.scheme == "https" else 80)
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, port, timeout=remaining, context=self.target.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(u.hostname, port, timeout=remaining)
        target = u.path + (f"?{u.query}" if u.query else "")
        started = time.monotonic()
        try:
            conn.request(method, target or "/", body=body, headers={"Connection": "close", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read(BODY_LIMIT)
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        except TimeoutError:
            raise _Hung(f"{shown}: no answer in the {remaining:.1f}s left of the timeout") from None
        except ssl.SSLError as e:
            raise _Unreachable(f"{shown}: TLS: {e.reason or e}") from None
        except (OSError, http.client.HTTPException) as e:
            text = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise _Unreachable(f"{shown}: {text}") from None
        finally:
            conn.close()
        self.result.requests.append(f"{shown} {answer.status} {time.monotonic() - started:.3f}s")
        return answer

    def request(self, method: str, path_or_url: str, body: bytes | None = None, headers: dict | None = None) -> Answer:
        """``raw`` plus auth: answer a 401 challenge once (basic credentials, or a bearer token)."""
        url = self.absolute(path_or_url)
        self.result.step = f"{method} {urllib.parse.urlsplit(url).path}"
        hdrs = dict(headers or {})
        auth = self._authorization(url)
        if auth:
            hdrs["Authorization"] = auth
        answer = self.raw(method, url, body, hdrs)
        if answer.status != 401:
            return answer
        scheme, params = parse_challenge(answer.headers.get("www-authenticate"))
        if scheme == "bearer" and params.get("realm"):
            self.scheme = "bearer"
            self.result.auth = "bearer"
            token = self._token(params)
            if token is None or hdrs.get("Authorization") == f"Bearer {token}":
                return answer
            self.bearer = token
            hdrs["Authorization"] = f"Bearer {token}"
        elif scheme == "basic" and self._creds() and "Authorization" not in hdrs:
            self.scheme = "basic"
            self.result.auth = "basic"
            hdrs["Authorization"] = self._creds()  # type: ignore[assignment]
        else:
            return answer
        self.result.step = f"{method} {urllib.parse.urlsplit(url).path}"
        return self.raw(method, url, body, hdrs)

    def _authorization(self, url: str) -> str | None:
        """What to send up front: only to the registry itself, only once it has challenged."""
        if not self._same_origin(url):
            return None
        if self.scheme == "basic":
            return self._creds()
        if self.scheme == "bearer" and self.bearer:
            return f"Bearer {self.bearer}"
        return None

    def _token(self, params: dict[str, str]) -> str | None:
        """Fetch a bearer token for the challenge's scope (basic credentials if given)."""
        scope = params.get("scope", "")
        if scope in self.tokens:
            return self.tokens[scope]
        query = {k: v for k, v in (("service", params.get("service")), ("scope", scope)) if v}
        realm = params["realm"]
        url = realm + (("&" if "?" in realm else "?") + urllib.parse.urlencode(query) if query else "")
        hdrs = {}
        creds = self._creds()
        if creds:
            hdrs["Authorization"] = creds
        self.result.step = f"GET {urllib.parse.urlsplit(realm).path} (token)"
        answer = self.raw("GET", url, None, hdrs)
        if answer.status != 200:
            self.token_failure = answer
            return None
        try:
            doc = json.loads(answer.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            self.token_failure = Answer(502, {}, b"token server answered no token")
            return None
        self.tokens[scope] = token
        return token


def _auth_failure(client: _Client, answer: Answer, what: str) -> Check:
    """A 401 after the challenge was answered (or could not be)."""
    tf = client.token_failure
    if tf is not None:
        client.token_failure = None
        if tf.status in (401, 403):
            return Check(
                Health.UNAUTHORIZED, f"{what} 401; the token server refused the credentials ({tf.status})", 401
            )
        return Check(Health.ERROR, f"{what} 401; the token server answered {tf.status}", 401)
    scheme, _ = parse_challenge(answer.headers.get("www-authenticate"))
    hint = "no credentials given (--username/--password)" if client.target.username is None else "credentials refused"
    return Check(Health.UNAUTHORIZED, f"{what} 401 ({scheme or 'no'} challenge; {hint})", 401)


def _strip_state(location: str) -> str:
    return urllib.parse.urlsplit(location).path


def probe_registry(target: RegistryTarget, repo: str, deadline: float, result: RegistryResult) -> None:
    """Fill ``result`` (read, then write) before ``deadline``. Never raises for the registry's sake."""
    client = _Client(target, deadline, result)
    try:
        answer = client.request("GET", "/v2/")
    except _Hung as e:
        result.read = Check(Health.HUNG, str(e))
        result.write = Check(Health.HUNG, "not attempted: the registry did not answer GET /v2/")
        return
    except _Unreachable as e:
        result.read = Check(Health.ERROR, f"cannot reach the registry: {e}")
        result.write = Check(Health.ERROR, "not attempted: the registry cannot be reached")
        return
    if answer.status == 401:
        result.read = _auth_failure(client, answer, "GET /v2/")
    else:
        result.read = classify_read_answer(answer.status, answer.body)
    result.write = _probe_write(client, repo, result)


def _probe_write(client: _Client, repo: str, result: RegistryResult) -> Check:
    start = f"/v2/{repo}/blobs/uploads/"
    try:
        answer = client.request("POST", start)
    except _Hung as e:
        return Check(Health.HUNG, str(e))
    except _Unreachable as e:
        return Check(Health.ERROR, str(e))
    if answer.status == 401:
        return _auth_failure(client, answer, f"POST {start}")
    if answer.status != 202:
        return classify_write_answer(answer.status, answer.body, f"POST {start}")
    location = answer.headers.get("location")
    if not location:
        return Check(Health.ERROR, f"POST {start} 202 without a Location header", 202)
    uid = answer.headers.get("docker-upload-uuid") or _strip_state(location).rstrip("/").rsplit("/", 1)[-1]
    result.upload_uuid = uid
    result.left_session = uid  # until its cancel succeeds
    verdict = Check(Health.HEALTHY, f"POST {start} 202, PATCH {len(PROBE_BYTES)} bytes 202", 202)
    try:
        patch = client.request(
            "PATCH",
            location,
            PROBE_BYTES,
            {"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(PROBE_BYTES) - 1}"},
        )
        if patch.status == 401:
            verdict = _auth_failure(client, patch, f"PATCH {_strip_state(location)}")
        elif patch.status != 202:
            verdict = classify_write_answer(patch.status, patch.body, f"PATCH {_strip_state(location)}")
        else:
            location = patch.headers.get("location") or location
    except _Hung as e:
        return Check(Health.HUNG, f"{e} (upload {uid} left open)")
    except _Unreachable as e:
        verdict = Check(Health.ERROR, str(e))
    what = f"DELETE {_strip_state(location)}"
    try:
        cancel = client.request("DELETE", location)
    except _Hung as e:
        cancel_check = Check(Health.HUNG, f"{e}: upload {uid} left open")
    except _Unreachable as e:
        cancel_check = Check(Health.ERROR, f"{e}: upload {uid} left open")
    else:
        if cancel.status in (200, 202, 204):
            result.left_session = None
            if verdict.cls is Health.HEALTHY:
                verdict.detail += f", DELETE {cancel.status}: upload {uid} started and cancelled"
            return verdict
        cancel_check = (
            _auth_failure(client, cancel, what)
            if cancel.status == 401
            else classify_write_answer(cancel.status, cancel.body, what)
        )
        cancel_check.detail += f" (upload {uid} left open)"
    if verdict.cls is Health.HEALTHY:
        return cancel_check
    verdict.detail += f"; the cancel failed too: {cancel_check.detail}"
    return verdict


# -- the store probe ---------------------------------------------------------------------------


def probe_key(repo: str, upload_id: str) -> str:
    return f"{layout.session_dir_key(repo, upload_id)}/startedat"


def probe_store(open_store: Callable[[], Store], repo: str, result: StoreResult) -> None:
    """Write one startedat into a fresh session of ``repo`` and remove it through the gate."""
    from debris.apply import GateViolation, remove_probe_write
    from debris.stores import StoreSpecError

    result.step = "open"
    try:
        st = open_store()
    except StoreSpecError:
        raise  # a usage error: the caller says so and exits 2
    except StoreError as e:
        result.read = classify_store_error(e, write=False)
        result.write = Check(result.read.cls, f"not attempted: {e}")
        return
    try:
        result.url = st.url
        key = probe_key(repo, str(uuid_mod.uuid4()))
        result.key = key
        if Capability.FREE_SPACE in st.capabilities:
            try:
                result.free = st.free_space()
            except (OSError, StoreError) as e:  # informational: shown, never hides the write check
                result.free = {"error": str(e)}
        result.step = f"stat {key}"
        try:
            if st.stat(key) is not None:
                result.read = Check(Health.ERROR, f"{key} exists before the probe wrote it")
                result.write = Check(Health.ERROR, "not attempted: the probe's fresh key already exists")
                return
        except StoreError as e:
            result.read = classify_store_error(e, write=False)
            result.write = Check(result.read.cls, f"not attempted: {e}")
            return
        result.read = Check(Health.HEALTHY, f"opened {st.url} and looked up a fresh key")
        data = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        created: list[str] = []
        result.step = f"write {key}"
        try:
            info = st.write_new(key, data, created)
        except StoreError as e:
            result.write = classify_store_error(e, write=True)
            if created:
                _remove_failed_write_dirs(st, key, created, repo, result)
            return
        result.step = f"remove {key}"
        try:
            remove_probe_write(st, key, info, created, repo)
        except (StoreError, GateViolation) as e:
            result.left.append(key)
            bad = classify_store_error(e, write=True) if isinstance(e, StoreError) else Check(Health.ERROR, str(e))
            result.write = Check(bad.cls, f"wrote {key} but could not remove it: {e}")
            return
        where = key.split("/_uploads/", 1)[1]
        result.write = Check(Health.HEALTHY, f"wrote and removed {len(data)} bytes at {repo}/_uploads/{where}")
    finally:
        result.step = "close"
        # The verdict is already made; releasing a descriptor or connection cannot change it.
        with contextlib.suppress(OSError, StoreError):
            st.close()


def _remove_failed_write_dirs(st: Store, key: str, created: list[str], repo: str, result: StoreResult) -> None:
    """A failed write can leave the directories made for it (a full disk refuses the data, not the
    mkdir); the gate removes them when they are empty."""
    from debris.apply import GateViolation, remove_probe_write

    try:
        remove_probe_write(st, key, None, created, repo)
    except (StoreError, GateViolation) as e:
        result.left.extend(sorted(created, key=lambda k: -k.count("/")))
        result.write.detail += f"; could not remove the directories made for it ({e})"


# -- one run under one deadline ----------------------------------------------------------------


class Prober:
    """Runs probes; remembers workers that outlived their deadline so a server never piles them up."""

    def __init__(
        self,
        registry: RegistryTarget | None,
        open_store: Callable[[], Store] | None,
        repo: str = DEFAULT_PROBE_REPO,
        timeout: float = DEFAULT_TIMEOUT,
        store_label: str = "",
    ):
        if registry is None and open_store is None:
            raise ValueError("nothing to probe")
        self.registry = registry
        self.open_store = open_store
        self.repo = repo
        self.timeout = timeout
        self.store_label = store_label
        self._running: dict[str, tuple[threading.Thread, float]] = {}

    def run(self) -> Report:
        """Probe every target at once; raises StoreSpecError (a usage error) from the store's opening."""
        from debris.stores import StoreSpecError

        started = time.monotonic()
        deadline = started + self.timeout
        checked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        errors: dict[str, BaseException] = {}
        jobs: list[tuple[str, RegistryResult | StoreResult, Callable[[], None]]] = []
        if self.open_store is not None:
            sres = StoreResult(self.store_label, self.repo)
            jobs.append(("store", sres, partial(probe_store, self.open_store, self.repo, sres)))
        if self.registry is not None:
            rres = RegistryResult(self.registry.url, self.repo)
            jobs.append(("registry", rres, partial(probe_registry, self.registry, self.repo, deadline, rres)))
        # The store's worker first: opening an S3 store imports boto3, the slowest step of all.
        threads = [(name, res, self._start(name, fn, started, errors)) for name, res, fn in jobs]

        done: dict[str, RegistryResult | StoreResult] = {}
        for name, res, thread in threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
            snap = copy.deepcopy(res)  # the worker may go on writing into ``res``
            if thread is None or thread.is_alive():
                self._hang(name, snap, busy=thread is None)
            else:
                self._running.pop(name, None)
                err = errors.get(name)
                if isinstance(err, StoreSpecError):
                    raise err
                if err is not None:
                    self._fail(snap, Check(Health.ERROR, f"probe failed: {type(err).__name__}: {err}"))
            done[name] = snap

        registry = done.get("registry")
        store = done.get("store")
        present = [(n, r) for n, r in (("registry", registry), ("store", store)) if r is not None]
        return Report(
            read=combine([(n, r.read) for n, r in present if r.read], READ_PRECEDENCE),
            write=combine([(n, r.write) for n, r in present if r.write], WRITE_PRECEDENCE),
            registry=registry,  # type: ignore[arg-type]
            store=store,  # type: ignore[arg-type]
            repository=self.repo,
            timeout=self.timeout,
            elapsed=time.monotonic() - started,
            checked_at=checked_at,
        )

    def _start(
        self, name: str, fn: Callable[[], None], now: float, errors: dict[str, BaseException]
    ) -> threading.Thread | None:
        """A daemon worker, or None if the previous one for this target is still running.

        A worker that outlives the deadline is left to finish on its own (it still removes what it
        wrote); a one-shot run exits without waiting for it.
        """
        previous = self._running.get(name)
        if previous is not None and previous[0].is_alive():
            return None

        def body() -> None:
            try:
                fn()
            except BaseException as e:
                errors[name] = e

        thread = threading.Thread(target=body, name=f"debris-probe-{name}", daemon=True)
        self._running[name] = (thread, now)
        thread.start()
        return thread

    def _hang(self, name: str, res, busy: bool) -> None:
        limit = f"{self.timeout:g}s"
        if busy:
            since = time.monotonic() - self._running[name][1]
            why = f"the previous probe has not finished after {since:.0f}s"
        else:
            why = f"no answer within the {limit} timeout" + (f" (during {res.step})" if res.step else "")
        if res.read is None:
            res.read = Check(Health.HUNG, why)
            res.write = Check(Health.HUNG, f"not attempted: {why}")
        elif res.write is None:
            res.write = Check(Health.HUNG, why)
        if isinstance(res, StoreResult) and res.key and res.write.cls is Health.HUNG and not busy:
            res.left.append(f"{res.key} (if the write lands; the worker removes it when it finishes)")

    @staticmethod
    def _fail(res, check: Check) -> None:
        if res.read is None:
            res.read = check
        if res.write is None:
            res.write = check


def run_probe(
    registry: RegistryTarget | None,
    open_store: Callable[[], Store] | None,
    repo: str = DEFAULT_PROBE_REPO,
    timeout: float = DEFAULT_TIMEOUT,
    store_label: str = "",
) -> Report:
    return Prober(registry, open_store, repo, timeout, store_label).run()


# -- output ------------------------------------------------------------------------------------


def _free_text(free: dict | None) -> str:
    if not free:
        return ""
    if "error" in free:
        return f"free space unknown: {free['error']}"
    import humanize

    return (
        f"free {humanize.naturalsize(free['bytes_free'], binary=True)} of "
        f"{humanize.naturalsize(free['bytes_total'], binary=True)}, {free['inodes_free']:,} inodes"
    )


def _target_row(label: str, res: RegistryResult | StoreResult, extra: str = "") -> list[str]:
    read, write = res.read, res.write
    details = []
    if read and read.cls is not Health.HEALTHY:
        details.append(read.detail)
    if write and (write.cls is not Health.HEALTHY or not details) and not write.detail.startswith("not attempted"):
        details.append(write.detail)
    cells = [label, read.cls.value if read else "-", write.cls.value if write else "-"]
    return [*cells, "; ".join(p for p in (*details, extra) if p)]


def _overall_summary(report: Report) -> str:
    """Which target decided the overall class (the details are in the rows above)."""
    targets = [(n, r) for n, r in (("registry", report.registry), ("store", report.store)) if r is not None]
    for which in ("write", "read"):
        overall = getattr(report, which).cls
        if overall is Health.HEALTHY:
            continue
        verdicts = {n: getattr(r, which).cls for n, r in targets if getattr(r, which) is not None}
        found = [n for n, c in verdicts.items() if c is overall]
        text = f"{which}: {overall.value} from the {' and the '.join(found)}"
        for n, c in verdicts.items():
            if n in found or c is Health.HEALTHY:
                continue
            vague = c in (Health.BACKEND_ERROR, Health.ERROR)
            text += f"; it explains the {n}'s {c.value}" if vague else f"; the {n} says {c.value}"
        return text
    return "all healthy"


def report_text(report: Report) -> str:
    from tabulate import tabulate

    rows = []
    if report.registry is not None:
        rows.append(_target_row(f"registry {report.registry.url}", report.registry))
    if report.store is not None:
        rows.append(_target_row(f"store {report.store.url}", report.store, _free_text(report.store.free)))
    if len(rows) > 1:
        rows.append(["overall", report.read.cls.value, report.write.cls.value, _overall_summary(report)])
    table = tabulate(
        rows,
        headers=["target", "read", "write", "detail"],
        tablefmt="simple",
        disable_numparse=True,
        maxcolwidths=[None, None, None, 100],
    )
    worst = report.write.cls if report.write.cls is not Health.HEALTHY else report.read.cls
    lines = [
        table,
        "",
        f"exit {report.exit_code} ({worst.value}); probe repository {report.repository}; "
        f"{report.elapsed:.2f}s of the {report.timeout:g}s timeout",
    ]
    lines += [f"note: {n}" for n in report.notes()]
    return "\n".join(lines)


# -- --serve -----------------------------------------------------------------------------------


def parse_listen(addr: str) -> tuple[str, int]:
    """``127.0.0.1:9109`` or ``[::1]:9109``; the host is required (nothing is bound implicitly)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", addr.strip())
    if not m:
        raise ValueError(f"--serve {addr!r}: give HOST:PORT, e.g. 127.0.0.1:9109")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"--serve {addr!r}: port out of range")
    return host, port


class HealthServer:
    """``/healthz/read`` and ``/healthz/write`` (200 healthy, 503 otherwise) and ``/healthz`` (the
    whole report), answered from the latest probe; ``refresh`` runs a new one."""

    def __init__(self, addr: str, prober: Prober):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = parse_listen(addr)
        self.prober = prober
        self.latest: Report | None = None
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "debris-probe"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                report = server_self.latest
                if path not in ("/healthz", "/healthz/read", "/healthz/write"):
                    self._send(404, {"error": "not found: use /healthz/read, /healthz/write or /healthz"})
                    return
                if report is None:
                    self._send(503, {"class": "unknown", "detail": "no probe has finished yet"})
                    return
                if path == "/healthz":
                    self._send(200 if report.exit_code == 0 else 503, report.to_json())
                    return
                which = path.rsplit("/", 1)[1]
                body = report.endpoint_json(which)
                self._send(200 if body["class"] == Health.HEALTHY.value else 503, body)

            do_HEAD = do_GET

            def _send(self, status: int, doc: dict) -> None:
                data = (json.dumps(doc) + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((host, port), Handler)
        bound = self.httpd.server_address[1]
        self.address = f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
        self._thread: threading.Thread | None = None

    def refresh(self) -> Report:
        report = self.prober.run()
        self.latest = report
        return report

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.1,), name="debris-probe-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()


def serve(server: HealthServer, interval: float, stop: threading.Event, log: Callable[[str], None]) -> None:
    """Probe every ``interval`` seconds (start to start) until ``stop`` is set; log class changes."""
    previous: tuple[str, str] | None = None
    began = time.monotonic()
    report = server.latest or server.refresh()
    while True:
        now = (report.read.cls.value, report.write.cls.value)
        if now != previous:
            log(f"{report.checked_at} read={now[0]} write={now[1]}: {report.write.detail or report.read.detail}")
            previous = now
        if stop.wait(max(0.0, began + interval - time.monotonic())):
            return
        began = time.monotonic()
        report = server.refresh()
