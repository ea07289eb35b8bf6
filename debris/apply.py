"""The one delete gate. Every deletion debris makes, in every store, passes through here.

A plan is untrusted input. Before anything is deleted the whole plan is validated: the store
must be the one planned, the policy must be allowed with this run's flags, and every path must
re-parse under the grammar into a safe class that belongs to its item. Then each item is
re-observed and re-judged with the same rule the planner used; anything changed, missing or no
longer stale is skipped with its reason. Only then, and only with ``confirm``, does
``_delete_file``/``_remove_dir`` call the store's destructive primitives, re-checking the grammar
for each single key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from debris import layout
from debris.inventory import SessionObservation, observe_session, repository_data
from debris.layout import SAFE_KINDS, SESSION_DIR_LEVELS, Kind, Level
from debris.plan import Plan, PlanItem, PlannedFile, from_ns, judge_session
from debris.policy import Policy, PolicyError, format_duration
from debris.stores.base import (
    Capability,
    Changed,
    FileInfo,
    MultipartUpload,
    NotFound,
    Removal,
    Store,
    StoreError,
    WalkProblems,
)

SESSION_KINDS = frozenset({Kind.UPLOAD_SESSION, Kind.PROBE_REPO})
#: What a single file of an item of each kind may parse as.
_FILE_KINDS_FOR_ITEM = {
    Kind.UPLOAD_SESSION: frozenset({Kind.UPLOAD_SESSION, Kind.TEMP_FILE}),
    Kind.PROBE_REPO: frozenset({Kind.UPLOAD_SESSION, Kind.TEMP_FILE}),
    Kind.TEMP_FILE: frozenset({Kind.TEMP_FILE}),
    Kind.MULTIPART_UPLOAD: frozenset(),  # aborts only; its session's objects are already gone
    Kind.FOLDER_MARKER: frozenset({Kind.FOLDER_MARKER}),
}


class PlanRefused(Exception):
    """The plan as a whole is not acceptable; nothing was deleted."""


class GateViolation(Exception):
    """A single key failed the grammar check at the moment of deletion. Never expected."""


@dataclass
class Outcome:
    item: PlanItem
    status: str  # deleted | would_delete | skipped | failed
    reason: str = ""
    bytes_freed: int = 0
    deleted_paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = {
            "class": self.item.kind.value,
            "repository": self.item.repository,
            "upload_id": self.item.upload_id,
            "paths": self.item.paths,
            "bytes": self.item.bytes,
        }
        if self.status in ("deleted", "failed"):
            d["bytes_freed"] = self.bytes_freed
            d["deleted_paths"] = self.deleted_paths
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class ApplyResult:
    confirmed: bool
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what re-verification could not read
    interrupted: bool = False

    def with_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def bytes_freed(self) -> int:
        return sum(o.bytes_freed for o in self.outcomes)

    @property
    def failed(self) -> bool:
        return bool(self.with_status("failed") or self.errors)

    def to_json(self) -> dict:
        return {
            "confirmed": self.confirmed,
            "deleted": [o.to_json() for o in self.with_status("deleted")],
            "would_delete": [o.to_json() for o in self.with_status("would_delete")],
            "skipped": [o.to_json() for o in self.with_status("skipped")],
            "failed": [o.to_json() for o in self.with_status("failed")],
            "bytes_freed": self.bytes_freed,
            "errors": list(self.errors),
            "interrupted": self.interrupted,
        }


# -- validation of the whole plan (no I/O but the store's identity) --------------------------


def validate(plan: Plan, store: Store, *, force: bool) -> None:
    """Raise PlanRefused unless every item of ``plan`` may be considered for deletion in ``store``."""
    if plan.store_url != store.url:
        raise PlanRefused(f"plan was made for {plan.store_url}, not {store.url}")
    if plan.store_identity != store.identity():
        raise PlanRefused(
            f"plan was made for another store at {plan.store_url} (identity {plan.store_identity} != {store.identity()})"
        )
    policy = plan.policy
    try:
        replace(policy, force=force).check()
    except PolicyError as e:
        raise PlanRefused(f"plan policy needs --force here too: {e}") from None
    seen: set[tuple] = set()
    for n, item in enumerate(plan.items):
        where = f"item {n} ({item.label()})"
        ident = (item.repository, item.upload_id) if item.upload_id else tuple(item.paths)
        if ident in seen:
            raise PlanRefused(f"{where}: listed twice")
        seen.add(ident)
        _validate_item(item, policy, store, where)


def _validate_item(item: PlanItem, policy: Policy, store: Store, where: str) -> None:
    if item.kind not in SAFE_KINDS or item.kind not in _FILE_KINDS_FOR_ITEM:
        raise PlanRefused(f"{where}: class {item.kind.value!r} cannot be deleted")
    if not policy.allows(item.kind):
        raise PlanRefused(f"{where}: class {item.kind.value!r} is not included by the plan's policy")
    if not item.files and not item.multiparts:
        raise PlanRefused(f"{where}: names nothing to delete")
    if len({f.path for f in item.files}) != len(item.files) or len({m.upload_id for m in item.multiparts}) != len(
        item.multiparts
    ):
        raise PlanRefused(f"{where}: a file or multipart upload is listed twice")
    if item.multiparts and Capability.MULTIPART_UPLOADS not in store.capabilities:
        raise PlanRefused(f"{where}: {store.url} has no multipart uploads")
    if item.upload_id is not None or item.kind in SESSION_KINDS:
        if not (item.repository and layout.is_valid_repository(item.repository)):
            raise PlanRefused(f"{where}: invalid repository {item.repository!r}")
        if not (item.upload_id and layout.is_upload_id(item.upload_id)):
            raise PlanRefused(f"{where}: invalid upload id {item.upload_id!r}")
        if item.kind is not Kind.MULTIPART_UPLOAD and item.kind is not policy.threshold_for(item.repository)[0]:
            raise PlanRefused(f"{where}: class {item.kind.value} does not match repository {item.repository}")
    elif item.kind is Kind.MULTIPART_UPLOAD:
        if len(item.multiparts) != 1:
            raise PlanRefused(f"{where}: a multipart upload outside a session is one upload")
    elif len(item.files) != 1 or item.multiparts:
        raise PlanRefused(f"{where}: a {item.kind.value} item names exactly one file")
    elif item.kind is Kind.FOLDER_MARKER and item.files[0].size != 0:
        raise PlanRefused(f"{where}: a folder marker is an empty object; {item.files[0].path!r} holds data")
    for f in item.files:
        reason = _file_refusal(f.path, item)
        if reason:
            raise PlanRefused(f"{where}: {f.path!r} {reason}")
    for m in item.multiparts:
        reason = _multipart_refusal(m, item)
        if reason:
            raise PlanRefused(f"{where}: multipart upload on {m.key!r} {reason}")


def _file_refusal(key: str, item: PlanItem) -> str | None:
    """Why ``key`` may not be deleted as part of ``item`` (None: it may)."""
    entry = layout.parse(key)
    if entry.kind not in _FILE_KINDS_FOR_ITEM.get(item.kind, ()):
        return f"parses as {entry.kind.value}, not as part of a {item.kind.value}"
    if item.upload_id is not None:
        if (entry.repository, entry.upload_id) != (item.repository, item.upload_id):
            return "belongs to another upload session"
    elif entry.in_session:
        return "is inside an upload session (deleted with its session only)"
    return None


def _multipart_refusal(mp: MultipartUpload, item: PlanItem) -> str | None:
    """Why the multipart upload ``mp`` may not be aborted as part of ``item`` (None: it may)."""
    entry = layout.parse(mp.key)
    if item.upload_id is not None:
        if entry.kind is not Kind.UPLOAD_SESSION or entry.member != "data":
            return f"is on a {entry.kind.value}, not on an upload session's data"
        if (entry.repository, entry.upload_id) != (item.repository, item.upload_id):
            return "belongs to another upload session"
    elif item.kind is not Kind.MULTIPART_UPLOAD or entry.kind is not Kind.BLOB:
        return f"is on a {entry.kind.value}: only a session's data or a failed copy onto a blob path may be aborted"
    if mp.parts is None:
        return "has no recorded parts to verify"
    return None


# -- execution --------------------------------------------------------------------------------


class Gate:
    """Executes a validated plan item by item. Use ``apply_plan``."""

    def __init__(self, store: Store, plan: Plan, *, confirm: bool, force: bool, now: Callable[[], datetime]):
        self.store = store
        self.plan = plan
        self.policy = plan.policy
        self.confirm = confirm
        self.force = force
        self.now = now
        self.problems = WalkProblems()
        self._probe_data: dict[str, list[str]] = {}

    def run_item(self, item: PlanItem) -> Outcome:
        if item.upload_id is not None:
            return self._session(item)
        if item.kind is Kind.MULTIPART_UPLOAD:
            return self._blob_multipart(item)
        return self._single_file(item)

    # sessions (and orphan multipart uploads of purged sessions)

    def _session(self, item: PlanItem) -> Outcome:
        errors_before = len(self.problems.errors)
        current = observe_session(self.store, item.repository, item.upload_id, self.problems)
        if len(self.problems.errors) > errors_before:
            return Outcome(item, "skipped", f"could not re-read the session: {self.problems.errors[-1]}")
        if current is None:
            return Outcome(item, "skipped", "gone since plan")
        change = _difference(item, current)
        if change:
            return Outcome(item, "skipped", f"changed since plan: {change}")
        verdict = judge_session(current, self.policy, self.now())
        if verdict.item is None or verdict.item.kind is not item.kind:
            return Outcome(item, "skipped", f"no longer deletable: {verdict.held_back or 'active again'}")
        if item.kind is Kind.PROBE_REPO and not self.force:
            data = self._probe_repo_data(item.repository)
            if data:
                return Outcome(item, "skipped", f"probe repository now holds {', '.join(data[:3])}")
        if not self.confirm:
            return Outcome(item, "would_delete")
        out = Outcome(item, "deleted")
        # startedat first, alone: without it the registry refuses the upload before any bytes go.
        files = verdict.item.files
        first = [f for f in files if f.path.endswith("/startedat")]
        rest = [f for f in files if not f.path.endswith("/startedat")]
        for group in (first, rest):
            if group and not self._delete(out, group):
                return out
        for mp in verdict.item.multiparts:
            if not self._abort(out, mp):
                return out
        if Capability.DIRECTORIES in self.store.capabilities:
            for key in sorted(current.dirs, key=lambda k: (-k.count("/"), k)):
                try:
                    if not _remove_dir(self.store, key, item):
                        out.status = "failed"
                        out.reason = f"{key} not empty after its files were deleted: something wrote into the session"
                        return out
                except (StoreError, GateViolation) as e:
                    out.status, out.reason = "failed", f"{key}: {e}"
                    return out
        return out

    def _probe_repo_data(self, repo: str) -> list[str]:
        if repo not in self._probe_data:
            self._probe_data[repo] = repository_data(self.store, repo, self.problems)
        return self._probe_data[repo]

    # failed copies onto blob paths

    def _blob_multipart(self, item: PlanItem) -> Outcome:
        planned = item.multiparts[0]
        found = [
            m
            for m in self.store.list_multipart_uploads(planned.key, self.problems)
            if m.upload_id == planned.upload_id and m.key == planned.key
        ]
        if not found:
            return Outcome(item, "skipped", "gone since plan (completed or aborted)")
        try:
            current = replace(found[0], parts=tuple(self.store.list_parts(found[0])))
        except NotFound:
            return Outcome(item, "skipped", "gone since plan (completed or aborted)")
        if _parts_fingerprint(current) != _parts_fingerprint(planned):
            return Outcome(item, "skipped", "changed since plan: its parts differ")
        if self.now() - from_ns(current.newest_ns()) < self.policy.blob_multipart_older_than:
            return Outcome(item, "skipped", f"younger than {format_duration(self.policy.blob_multipart_older_than)}")
        if not self.confirm:
            return Outcome(item, "would_delete")
        out = Outcome(item, "deleted")
        self._abort(out, current)
        return out

    # single files (temp files, folder markers)

    def _single_file(self, item: PlanItem) -> Outcome:
        f = item.files[0]
        info = self.store.stat(f.path)
        if info is None:
            return Outcome(item, "skipped", "gone since plan")
        if not info.regular or (info.size, info.mtime_ns, info.etag) != (f.size, f.mtime_ns, f.etag):
            return Outcome(item, "skipped", "changed since plan")
        if item.kind is Kind.TEMP_FILE and self.now() - from_ns(info.mtime_ns) < self.policy.older_than:
            return Outcome(item, "skipped", f"younger than {format_duration(self.policy.older_than)}")
        if not self.confirm:
            return Outcome(item, "would_delete")
        out = Outcome(item, "deleted")
        self._delete(out, [f])
        return out

    def _delete(self, out: Outcome, files: list[PlannedFile]) -> bool:
        try:
            removals = _delete_files(self.store, files, out.item)
        except (StoreError, GateViolation, OSError) as e:
            out.status, out.reason = "failed", str(e)
            return False
        ok = True
        for r in removals:
            if r.error is None:
                out.bytes_freed += r.bytes_freed
                out.deleted_paths.append(r.key)
            elif ok:
                ok = False
                out.status = "failed"
                changed = isinstance(r.error, Changed | NotFound)
                out.reason = f"changed during delete: {r.error}" if changed else f"{r.key}: {r.error}"
        return ok

    def _abort(self, out: Outcome, mp: MultipartUpload) -> bool:
        try:
            out.bytes_freed += _abort_multipart(self.store, mp, out.item)
            out.deleted_paths.append(f"{mp.key} (multipart upload {mp.upload_id})")
            return True
        except (Changed, NotFound) as e:
            out.status, out.reason = "failed", f"changed during abort: {e}"
        except (StoreError, GateViolation) as e:
            out.status, out.reason = "failed", f"{mp.key}: {e}"
        return False


def _parts_fingerprint(mp: MultipartUpload) -> list[tuple]:
    return [(p.number, p.size, p.etag, p.mtime_ns) for p in mp.parts or ()]


def _difference(item: PlanItem, current: SessionObservation) -> str | None:
    if current.strangers:
        return f"unknown entry {current.strangers[0]}"
    want = {f.path: f for f in item.files}
    for key in sorted(current.files):
        if key not in want:
            return f"new file {key}"
    for path, f in want.items():
        info = current.files.get(path)
        if info is None:
            return f"{path} vanished (re-plan to finish a half-deleted session)"
        if (info.size, info.mtime_ns, info.etag) != (f.size, f.mtime_ns, f.etag):
            return f"{path} was modified"
    planned = {m.upload_id: m for m in item.multiparts}
    now = {m.upload_id: m for m in current.multiparts}
    if set(now) - set(planned):
        return f"new multipart upload {sorted(set(now) - set(planned))[0]}"
    for uid, m in planned.items():
        if uid not in now:
            return f"multipart upload {uid} was completed or aborted"
        if now[uid].key != m.key or _parts_fingerprint(now[uid]) != _parts_fingerprint(m):
            return f"multipart upload {uid} has new or changed parts"
    return None


def _delete_files(store: Store, files: list[PlannedFile], item: PlanItem) -> list[Removal]:
    """The choke point for object/file deletion: re-parse every key, then let the store delete."""
    for f in files:
        reason = _file_refusal(f.path, item)
        if reason:
            raise GateViolation(f"{f.path} {reason}")
    return store.remove_files([(f.path, f.info()) for f in files])


def _abort_multipart(store: Store, mp: MultipartUpload, item: PlanItem) -> int:
    """The choke point for aborting a multipart upload: re-parse its key, then abort if unchanged."""
    reason = _multipart_refusal(mp, item)
    if reason:
        raise GateViolation(f"multipart upload on {mp.key} {reason}")
    return store.abort_multipart(mp)


def _remove_dir(store: Store, key: str, item: PlanItem) -> bool:
    """The choke point for directory removal: only an (empty) directory of this item's session."""
    d = layout.parse_dir(key)
    if d.level not in SESSION_DIR_LEVELS or (d.repository, d.upload_id) != (item.repository, item.upload_id):
        raise GateViolation(f"{key} is not a directory of upload session {item.upload_id}")
    return store.remove_empty_dir(key)


def apply_plan(
    store: Store,
    plan: Plan,
    *,
    confirm: bool,
    force: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[int, int, Outcome], None] | None = None,
) -> ApplyResult:
    """Validate ``plan`` as a whole (PlanRefused: nothing deleted), then re-verify and run each item."""
    validate(plan, store, force=force)
    gate = Gate(store, plan, confirm=confirm, force=force, now=now)
    result = ApplyResult(confirmed=confirm)
    total = len(plan.items)
    try:
        for n, item in enumerate(plan.items, 1):
            try:
                outcome = gate.run_item(item)
            except StoreError as e:
                outcome = Outcome(item, "failed", str(e))
            result.outcomes.append(outcome)
            if progress:
                progress(n, total, outcome)
    except KeyboardInterrupt:
        result.interrupted = True
        done = {id(o.item) for o in result.outcomes}
        result.outcomes.extend(
            Outcome(i, "skipped", "interrupted (may be partly deleted: re-plan to finish)")
            for i in plan.items
            if id(i) not in done
        )
    result.errors = list(gate.problems.errors)
    return result


def remove_probe_write(store: Store, key: str, info: FileInfo | None, created: list[str], probe_repo: str) -> None:
    """The gate for the write-health probe's own cleanup: the one object it wrote (a member of an
    upload session of the probe repository; ``info`` None when the write itself failed) and then,
    deepest first, the empty directories it made for it. Raises GateViolation for anything else,
    StoreError if the store refuses."""
    entry = layout.parse(key)
    if entry.kind is not Kind.UPLOAD_SESSION or entry.repository != probe_repo:
        raise GateViolation(f"{key} is not an upload session file of probe repository {probe_repo}")
    if info is not None:
        store.remove_file(key, info)
    for d in sorted(created, key=lambda k: -k.count("/")):
        state = layout.parse_dir(d)
        ours = (state.level in SESSION_DIR_LEVELS and state.upload_id == entry.upload_id) or (
            state.level in (Level.UPLOADS, Level.REPO)
            and state.repository is not None
            and (probe_repo == state.repository or probe_repo.startswith(state.repository + "/"))
            and (state.level is Level.REPO or state.repository == probe_repo)
        )
        if not ours:
            raise GateViolation(f"{d} is not a directory the probe made for {key}")
        store.remove_empty_dir(d)
