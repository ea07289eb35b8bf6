"""Policy + observations -> Plan. Pure: no I/O, the clock is passed in.

A Plan is a value: the store it was made for, the policy, and items that each name the
exact files (with fingerprints) to delete and why that is safe. It serialises to the plan
file; reading one back treats it as untrusted input (``Plan.from_json`` validates shape,
``debris.apply`` re-validates meaning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from debris import layout
from debris.inventory import Observation, SessionObservation, UnknownReport
from debris.layout import Kind
from debris.policy import Policy, PolicyError
from debris.stores.base import FileInfo, MultipartUpload, Part

PLAN_FORMAT = "debris-plan/1"

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

# Flags that explain an item (or a held-back session) to people.
FLAG_STARTEDAT_MISSING = "startedat_missing"  # the registry's own purge never removes such a session
FLAG_STARTEDAT_UNPARSEABLE = "startedat_unparseable"
FLAG_EMPTY = "empty"  # only directories left (e.g. an interrupted delete)


class PlanFormatError(ValueError):
    """A plan file that is not a well-formed debris plan."""


def parse_rfc3339(text: str) -> datetime | None:
    m = _RFC3339.fullmatch(text.strip())
    if not m:
        return None
    try:
        return datetime.fromisoformat(m.group(0).upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def format_age(td: timedelta) -> str:
    secs = max(0, int(td.total_seconds()))
    parts = []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= n or (unit == "s" and not parts):
            parts.append(f"{secs // n}{unit}")
            secs %= n
        if len(parts) == 2:
            break
    return "".join(parts)


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    mtime_ns: int
    etag: str | None = None

    def info(self) -> FileInfo:
        return FileInfo(self.size, self.mtime_ns, self.etag)

    def to_json(self) -> dict:
        d = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.etag is not None:
            d["etag"] = self.etag
        return d


def item_paths(files: list[PlannedFile], multiparts: list[MultipartUpload]) -> list[str]:
    """Objects to delete, then the keys of multipart uploads to abort, each key once.

    On S3 a session's ``data`` can be both: the driver completes a multipart upload into an
    object when a chunk is under 5 MiB, then opens a new upload on the same key.
    """
    return list(dict.fromkeys([f.path for f in files] + [m.key for m in multiparts]))


def multipart_to_json(mp: MultipartUpload) -> dict:
    return {
        "key": mp.key,
        "upload_id": mp.upload_id,
        "initiated_ns": mp.initiated_ns,
        "bytes": mp.bytes,
        "parts": [{"number": p.number, "size": p.size, "etag": p.etag, "mtime_ns": p.mtime_ns} for p in mp.parts or ()],
    }


@dataclass
class PlanItem:
    kind: Kind
    repository: str | None
    upload_id: str | None
    files: list[PlannedFile]
    last_activity: datetime
    why: str
    flags: list[str] = field(default_factory=list)
    multiparts: list[MultipartUpload] = field(default_factory=list)  # incomplete uploads to abort (S3)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files) + sum(m.bytes for m in self.multiparts)

    @property
    def paths(self) -> list[str]:
        return item_paths(self.files, self.multiparts)

    def label(self) -> str:
        if self.upload_id:
            return f"{self.repository}/_uploads/{self.upload_id}"
        return self.paths[0] if self.paths else "(nothing)"

    def to_json(self) -> dict:
        return {
            "class": self.kind.value,
            "repository": self.repository,
            "upload_id": self.upload_id,
            "paths": self.paths,
            "bytes": self.bytes,
            "last_activity": format_time(self.last_activity),
            "why": self.why,
            "flags": list(self.flags),
            "files": [f.to_json() for f in self.files],
            "multipart_uploads": [multipart_to_json(m) for m in self.multiparts],
        }


@dataclass
class HeldBack:
    """A stale session that looks like debris but is not planned, and why (loud, never silent)."""

    repository: str
    upload_id: str
    reason: str


@dataclass
class Plan:
    store_url: str
    store_identity: dict
    policy: Policy
    created_at: datetime
    items: list[PlanItem]
    unknown: UnknownReport = field(default_factory=UnknownReport)
    held_back: list[HeldBack] = field(default_factory=list)
    active_sessions: int = 0
    active_bytes: int = 0
    folder_markers: int = 0  # seen and left alone (deleted only with --include folder_marker)
    errors: list[str] = field(default_factory=list)
    requests: dict[str, int] | None = None  # API calls by operation, for stores billed per request

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for i in self.items:
            t = out.setdefault(i.kind.value, {"count": 0, "bytes": 0})
            t["count"] += 1
            t["bytes"] += i.bytes
        return out

    def by_repository(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for i in self.items:
            t = out.setdefault(i.repository or "", {"count": 0, "bytes": 0})
            t["count"] += 1
            t["bytes"] += i.bytes
        return dict(sorted(out.items()))

    def to_json(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "created_at": format_time(self.created_at),
            "store": {"url": self.store_url, "identity": self.store_identity},
            "policy": self.policy.to_json(),
            "items": [i.to_json() for i in self.items],
            "totals": self.totals(),
            "by_repository": self.by_repository(),
            "bytes": self.bytes,
            "active_sessions": {"count": self.active_sessions, "bytes": self.active_bytes},
            "held_back": [
                {"repository": h.repository, "upload_id": h.upload_id, "reason": h.reason} for h in self.held_back
            ],
            "unknown": {
                "count": self.unknown.count,
                "bytes": self.unknown.bytes,
                "unwalked_dirs": self.unknown.unwalked_dirs,
                "paths": list(self.unknown.sample),
                "truncated": self.unknown.truncated,
            },
            "folder_markers_left": self.folder_markers,
            "errors": list(self.errors),
            **({"requests": self.requests} if self.requests is not None else {}),
        }

    @classmethod
    def from_json(cls, data: object) -> Plan:
        """Read a plan file. Checks shape and types only; the gate decides what may be deleted."""
        try:
            return _plan_from_json(data)
        except PolicyError as e:
            raise PlanFormatError(f"plan policy: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanFormatError(f"not a debris plan ({type(e).__name__}: {e})") from None


def _want(value: object, typ: type | tuple[type, ...], what: str):
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise PlanFormatError(f"{what} has the wrong type")
    return value


def _multipart_from_json(m: object, where: str) -> MultipartUpload:
    m = _want(m, dict, f"{where}.multipart_uploads[]")
    parts = tuple(
        Part(
            _want(p["number"], int, "number"),
            _want(p["size"], int, "size"),
            _want(p["etag"], str, "etag"),
            _want(p["mtime_ns"], int, "mtime_ns"),
        )
        for p in (_want(x, dict, "part") for x in _want(m["parts"], list, "parts"))
    )
    key, upload_id = _want(m["key"], str, "key"), _want(m["upload_id"], str, "upload_id")
    return MultipartUpload(key, upload_id, _want(m["initiated_ns"], int, "initiated_ns"), parts)


def _plan_from_json(data: object) -> Plan:
    data = _want(data, dict, "plan")
    if data.get("format") != PLAN_FORMAT:
        raise PlanFormatError(f"not a {PLAN_FORMAT} file (format={data.get('format')!r})")
    store = _want(data["store"], dict, "store")
    items = []
    for n, raw in enumerate(_want(data["items"], list, "items")):
        raw = _want(raw, dict, f"items[{n}]")
        files = []
        for f in _want(raw["files"], list, f"items[{n}].files"):
            f = _want(f, dict, f"items[{n}].files[]")
            etag = f.get("etag")
            files.append(
                PlannedFile(
                    _want(f["path"], str, "path"),
                    _want(f["size"], int, "size"),
                    _want(f["mtime_ns"], int, "mtime_ns"),
                    _want(etag, str, "etag") if etag is not None else None,
                )
            )
        raw_mps = _want(raw.get("multipart_uploads", []), list, "multipart_uploads")
        multiparts = [_multipart_from_json(m, f"items[{n}]") for m in raw_mps]
        if raw.get("paths") != item_paths(files, multiparts):
            raise PlanFormatError(f"items[{n}]: paths disagree with files and multipart_uploads")
        last = parse_rfc3339(_want(raw["last_activity"], str, "last_activity"))
        if last is None:
            raise PlanFormatError(f"items[{n}]: last_activity is not RFC 3339")
        items.append(
            PlanItem(
                Kind(_want(raw["class"], str, "class")),
                _want(raw.get("repository"), (str, type(None)), "repository"),
                _want(raw.get("upload_id"), (str, type(None)), "upload_id"),
                files,
                last,
                str(raw.get("why", "")),
                [str(x) for x in _want(raw.get("flags", []), list, "flags")],
                multiparts,
            )
        )
    created = parse_rfc3339(_want(data["created_at"], str, "created_at"))
    if created is None:
        raise PlanFormatError("created_at is not RFC 3339")
    return Plan(
        store_url=_want(store["url"], str, "store.url"),
        store_identity=_want(store["identity"], dict, "store.identity"),
        policy=Policy.from_json(data["policy"]),
        created_at=created,
        items=items,
    )


# -- judging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    last: datetime | None
    flags: tuple[str, ...]


def session_activity(s: SessionObservation) -> Activity:
    """Newest of ``startedat`` (its content) and the mtimes of the session's files.

    Directory mtimes count only when no file is left: deleting a file touches its directory,
    so counting them would make a half-deleted session look fresh and unfinishable.
    """
    flags: list[str] = []
    stamps: list[datetime] = []
    newest = s.newest_mtime_ns()
    if newest is not None:
        stamps.append(from_ns(newest))
    if not s.files and not s.multiparts:
        flags.append(FLAG_EMPTY)
    if s.startedat_key not in s.files:
        flags.append(FLAG_STARTEDAT_MISSING)
    elif s.startedat is not None:
        started = parse_rfc3339(s.startedat.decode("ascii", "replace"))
        if started is None:
            flags.append(FLAG_STARTEDAT_UNPARSEABLE)
        else:
            stamps.append(started)
    return Activity(max(stamps) if stamps else None, tuple(flags))


def _delete_order(key: str) -> tuple[int, str]:
    # startedat first: without it the registry treats the upload as unknown (404) at once, so a
    # client resuming mid-delete is refused rather than appending to a half-deleted session.
    name = key.rsplit("/", 1)[-1]
    return (0 if name == "startedat" else 2 if name == "data" else 1, key)


@dataclass(frozen=True)
class Verdict:
    item: PlanItem | None
    held_back: str | None = None  # stale, but refused for this reason
    active: bool = False


def judge_session(s: SessionObservation, policy: Policy, now: datetime) -> Verdict:
    """Is this session deletable debris under ``policy`` at ``now``? The one rule plan and gate share."""
    kind, threshold = policy.threshold_for(s.repository)
    if not s.files and s.multiparts:
        # Only parts are left: the registry's own purge deleted the session's objects but never
        # aborts the multipart upload, so its parts stay stored, billed and counted against quota.
        kind = Kind.MULTIPART_UPLOAD
    if not policy.allows(kind):
        return Verdict(None)
    activity = session_activity(s)
    if activity.last is None:
        return Verdict(None, "no timestamps at all")
    idle = now - activity.last
    if idle < threshold:
        return Verdict(None, active=True)
    if s.strangers:
        shown = ", ".join(s.strangers[:3]) + (" ..." if len(s.strangers) > 3 else "")
        return Verdict(None, f"holds paths outside the registry grammar: {shown}")
    if any(m.parts is None for m in s.multiparts):
        return Verdict(None, "the parts of its multipart upload could not be listed")
    files = [
        PlannedFile(k, i.size, i.mtime_ns, i.etag)
        for k, i in sorted(s.files.items(), key=lambda kv: _delete_order(kv[0]))
    ]
    noun = {
        Kind.PROBE_REPO: "probe upload",
        Kind.UPLOAD_SESSION: "upload session",
        Kind.MULTIPART_UPLOAD: "orphan multipart upload of a purged session",
    }[kind]
    why = f"{noun} idle {format_age(idle)} (threshold {format_age(threshold)})"
    flags = list(activity.flags)
    if kind is Kind.MULTIPART_UPLOAD:
        flags = [f for f in flags if f != FLAG_STARTEDAT_MISSING]  # nothing of the session is left to flag
    elif FLAG_STARTEDAT_MISSING in flags or FLAG_STARTEDAT_UNPARSEABLE in flags:
        why += "; judged by mtimes, startedat missing or unreadable (the registry's purge never removes these)"
    multiparts = sorted(s.multiparts, key=lambda m: m.upload_id)
    if multiparts:
        why += f"; aborts {len(multiparts)} incomplete multipart upload(s)"
    return Verdict(PlanItem(kind, s.repository, s.upload_id, files, activity.last, why, flags, multiparts))


def judge_temp_file(entry: layout.Entry, info: FileInfo, policy: Policy, now: datetime) -> PlanItem | None:
    if not policy.allows(Kind.TEMP_FILE) or entry.in_session:
        return None
    last = from_ns(info.mtime_ns)
    idle = now - last
    if idle < policy.older_than:
        return None
    why = f"crash-left temp file of {entry.member} idle {format_age(idle)} (threshold {format_age(policy.older_than)})"
    return PlanItem(
        Kind.TEMP_FILE, entry.repository, None, [PlannedFile(entry.key, info.size, info.mtime_ns, info.etag)], last, why
    )


def judge_blob_multipart(mp: MultipartUpload, policy: Policy, now: datetime) -> PlanItem | None:
    """A multipart upload onto blobs/…/data is a failed copy (the final Move); only when old."""
    if not policy.allows(Kind.MULTIPART_UPLOAD) or mp.parts is None:
        return None
    last = from_ns(mp.newest_ns())
    idle = now - last
    if idle < policy.blob_multipart_older_than:
        return None
    why = (
        f"failed copy onto a blob path, idle {format_age(idle)} "
        f"(threshold {format_age(policy.blob_multipart_older_than)}); the blob itself is untouched"
    )
    return PlanItem(Kind.MULTIPART_UPLOAD, None, None, [], last, why, [], [mp])


def judge_folder_marker(key: str, info: FileInfo, policy: Policy) -> PlanItem | None:
    if not policy.allows(Kind.FOLDER_MARKER) or info.size != 0:
        return None
    why = "empty folder marker written by another S3 tool (the registry never writes these)"
    marker = PlannedFile(key, info.size, info.mtime_ns, info.etag)
    return PlanItem(Kind.FOLDER_MARKER, None, None, [marker], from_ns(info.mtime_ns), why)


def make_plan(obs: Observation, policy: Policy, now: datetime, store_url: str, store_identity: dict) -> Plan:
    """Decide what is safe to delete. Raises PolicyError when a probe repository holds tenant data."""
    policy.check()
    tainted = {repo: data for repo, data in obs.probe_repo_data.items() if data}
    if tainted and not policy.force:
        detail = "; ".join(f"{repo} has {', '.join(data[:5])}" for repo, data in sorted(tainted.items()))
        raise PolicyError(
            f"refusing --probe-repo that holds images ({detail}): a probe repository must be empty; --force overrides"
        )
    plan = Plan(store_url, store_identity, policy, now, [], obs.unknown, errors=list(obs.problems.errors))
    for s in sorted(obs.sessions.values(), key=lambda s: (s.repository, s.upload_id)):
        v = judge_session(s, policy, now)
        if v.item is not None:
            plan.items.append(v.item)
        elif v.active:
            plan.active_sessions += 1
            plan.active_bytes += s.bytes
        elif v.held_back:
            plan.held_back.append(HeldBack(s.repository, s.upload_id, v.held_back))
    for entry, info in sorted(obs.temp_files, key=lambda t: t[0].key):
        item = judge_temp_file(entry, info, policy, now)
        if item is not None:
            plan.items.append(item)
    for mp in obs.blob_multiparts:
        item = judge_blob_multipart(mp, policy, now)
        if item is not None:
            plan.items.append(item)
    plan.folder_markers += int(obs.root_folder_marker)
    for key, info in obs.folder_markers:
        item = judge_folder_marker(key, info, policy)
        if item is not None:
            plan.items.append(item)
        else:
            plan.folder_markers += 1
    return plan


#: How much newer than its own LastModified a startedat's content can be: the registry's clock
#: against the store's. SigV4 refuses requests skewed by over 15 minutes; an hour is generous.
STARTEDAT_SKEW_MARGIN = timedelta(hours=1)


def needs_startedat(policy: Policy, now: datetime, margin: timedelta = STARTEDAT_SKEW_MARGIN):
    """For ``inventory.observe``: is a session's ``startedat`` content worth a read (a GET on S3)?

    Only when the mtimes alone say stale, and by less than ``margin``: the content is written at the
    same moment as the object, so further back it cannot make the session fresh again.
    """

    def predicate(s: SessionObservation) -> bool:
        kind, threshold = policy.threshold_for(s.repository)
        newest = s.newest_mtime_ns()
        if not policy.allows(kind) and not policy.allows(Kind.MULTIPART_UPLOAD):
            return False
        if newest is None:
            return True
        idle = now - from_ns(newest)
        return threshold <= idle < threshold + margin

    return predicate
