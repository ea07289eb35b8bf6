"""Walk a store with the grammar and report what is there: facts, no decisions.

``observe`` gathers what planning needs (upload sessions, temp files, unknown paths) and
walks only where those can be; ``scan`` classifies every path. The gate re-observes a single
session with ``observe_session``, through the same code, so planning and deleting can never
disagree about what a session is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from debris import layout
from debris.layout import REGISTRY_DATA_LEVELS, SESSION_DIR_LEVELS, Dir, Kind, Level
from debris.stores.base import Capability, FileInfo, Listing, MultipartUpload, Store, StoreError, WalkProblems

UNKNOWN_SAMPLE_LIMIT = 1000
STARTEDAT_READ_LIMIT = 256


@dataclass
class UnknownReport:
    """Paths the grammar does not recognise. Counted in full, listed up to a limit."""

    count: int = 0
    bytes: int = 0
    unwalked_dirs: int = 0  # unknown directories a plan did not descend into: their size is not measured
    sample: list[str] = field(default_factory=list)

    def add(self, key: str, size: int | None) -> None:
        self.count += 1
        if size is None:
            self.unwalked_dirs += 1
        else:
            self.bytes += size
        if len(self.sample) < UNKNOWN_SAMPLE_LIMIT:
            self.sample.append(key)

    @property
    def truncated(self) -> bool:
        return self.count > len(self.sample)

    def merge(self, other: UnknownReport) -> None:
        self.count += other.count
        self.bytes += other.bytes
        self.unwalked_dirs += other.unwalked_dirs
        self.sample += other.sample[: max(0, UNKNOWN_SAMPLE_LIMIT - len(self.sample))]


def _merge_problems(into: WalkProblems, other: WalkProblems) -> None:
    into.errors += other.errors
    into.vanished += other.vanished


@dataclass
class SessionObservation:
    repository: str
    upload_id: str
    files: dict[str, FileInfo] = field(default_factory=dict)  # key -> info: session members and their temp files
    dirs: list[str] = field(default_factory=list)  # its directory keys (stores with directories)
    dir_mtimes_ns: list[int] = field(default_factory=list)  # read only when no file is left
    strangers: list[str] = field(default_factory=list)  # unknown or non-regular entries inside the session
    multiparts: list[MultipartUpload] = field(default_factory=list)  # incomplete uploads of its data (S3)
    startedat: bytes | None = None  # content, when it was read

    @property
    def key(self) -> str:
        return layout.session_dir_key(self.repository, self.upload_id)

    @property
    def startedat_key(self) -> str:
        return f"{self.key}/startedat"

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.files.values()) + sum(m.bytes for m in self.multiparts)

    def newest_mtime_ns(self) -> int | None:
        """Newest write seen: files, multipart parts (or their Initiated); directories only when nothing else."""
        stamps = [i.mtime_ns for i in self.files.values()] + [m.newest_ns() for m in self.multiparts]
        stamps = stamps or self.dir_mtimes_ns
        return max(stamps) if stamps else None


@dataclass
class Observation:
    sessions: dict[tuple[str, str], SessionObservation] = field(default_factory=dict)
    temp_files: list[tuple[layout.Entry, FileInfo]] = field(default_factory=list)
    folder_markers: list[tuple[str, FileInfo]] = field(default_factory=list)
    root_folder_marker: bool = False
    blob_multiparts: list[MultipartUpload] = field(default_factory=list)  # failed copies onto blobs/
    unknown: UnknownReport = field(default_factory=UnknownReport)
    problems: WalkProblems = field(default_factory=WalkProblems)
    probe_repo_data: dict[str, list[str]] = field(default_factory=dict)  # probe repo -> its tags/revisions


def _prune(*, into_registry_data: bool, into_unknown: bool, on_unknown_dir: Callable[[Dir, str], None]):
    def descend(parent: Dir, parent_key: str, name: str) -> Dir | None:
        child = layout.descend(parent, name)
        if child.level is Level.UNKNOWN:
            if into_unknown:
                return child
            on_unknown_dir(parent, f"{parent_key}/{name}/" if parent_key else f"{name}/")
            return None
        if not into_registry_data and child.level in REGISTRY_DATA_LEVELS:
            return None
        return child

    return descend


class _Collector:
    """Routes walked entries into an Observation."""

    def __init__(self, obs: Observation, want_temp_files: bool):
        self.obs = obs
        self.want_temp_files = want_temp_files

    def session(self, d: Dir) -> SessionObservation:
        sid = (d.repository, d.upload_id)
        s = self.obs.sessions.get(sid)
        if s is None:
            s = self.obs.sessions[sid] = SessionObservation(d.repository, d.upload_id)
        return s

    def unknown_dir(self, parent: Dir, key: str) -> None:
        if parent.upload_id is not None:
            self.session(parent).strangers.append(key)
        self.obs.unknown.add(key, None)

    def absorb(self, listing: Listing[Dir]) -> None:
        d = listing.state
        session = self.session(d) if d.upload_id is not None else None
        if session is not None and d.level in SESSION_DIR_LEVELS:
            session.dirs.append(listing.key)
            if listing.contents and "startedat" in listing.contents:
                session.startedat = listing.contents["startedat"]
        classify = layout.classify
        for name, size, mtime_ns, etag, regular in listing.files:
            if name == "":  # "dir/" object written by another S3 tool: no part of any session
                if listing.key:
                    self.obs.folder_markers.append((listing.key + "/", FileInfo(size, mtime_ns, etag)))
                else:  # the rootdirectory's own marker: outside the store's keys, left alone
                    self.obs.root_folder_marker = True
                continue
            kind = classify(d, name) if regular else Kind.UNKNOWN
            if kind is Kind.UNKNOWN:
                key = listing.file_key(name)
                self.obs.unknown.add(key, size)
                if session is not None:
                    session.strangers.append(key)
            elif session is not None:
                session.files[listing.file_key(name)] = FileInfo(size, mtime_ns, etag)
            elif kind is Kind.TEMP_FILE and self.want_temp_files:
                key = listing.file_key(name)
                self.obs.temp_files.append((layout.entry(d, name, key), FileInfo(size, mtime_ns, etag)))

    def multipart(self, mp: MultipartUpload) -> None:
        e = layout.parse(mp.key)
        if e.kind is Kind.UPLOAD_SESSION and e.member == "data":
            self.session(Dir(Level.SESSION, e.repository, e.upload_id)).multiparts.append(mp)
        elif e.kind is Kind.BLOB:
            self.obs.blob_multiparts.append(mp)
        else:
            self.obs.unknown.add(f"{mp.key} (incomplete multipart upload {mp.upload_id})", None)


def _startedat(d: Dir, name: str) -> bool:
    return name == "startedat" and d.level is Level.SESSION


def _uploads_flat(d: Dir) -> bool:
    # Everything under _uploads/ is session content: on S3 one flat listing beats one per directory.
    return d.level is Level.UPLOADS or d.upload_id is not None


def _detail(store: Store, jobs: list[Callable[[], None]]) -> None:
    """Run small per-item reads (startedat, ListParts), in parallel where the store is remote."""
    if store.parallel_reads > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=store.parallel_reads, thread_name_prefix="debris-read") as pool:
            for f in [pool.submit(j) for j in jobs]:
                f.result()
    else:
        for j in jobs:
            j()


def _with_parts(store: Store, mp: MultipartUpload, problems: WalkProblems) -> MultipartUpload:
    from dataclasses import replace

    try:
        return replace(mp, parts=tuple(store.list_parts(mp)))
    except StoreError as e:
        problems.errors.append(str(e))
        return mp


def _fill_parts(
    store: Store, sessions: Iterable[SessionObservation], blob_mps: list[MultipartUpload], problems
) -> list[MultipartUpload]:
    """List the parts of the sessions' multipart uploads (in place) and of ``blob_mps`` (returned)."""
    jobs: list[Callable[[], None]] = []
    for s in sessions:
        for i, mp in enumerate(s.multiparts):

            def job(s=s, i=i, mp=mp):
                s.multiparts[i] = _with_parts(store, mp, problems)

            jobs.append(job)
    filled = list(blob_mps)
    for i, mp in enumerate(blob_mps):

        def job(i=i, mp=mp):
            filled[i] = _with_parts(store, mp, problems)

        jobs.append(job)
    _detail(store, jobs)
    return filled


def observe(
    store: Store,
    *,
    want_temp_files: bool,
    probe_repos: Iterable[str] = (),
    worth_detail: Callable[[SessionObservation], bool] = lambda s: True,
    progress: Callable[[int], None] | None = None,
) -> Observation:
    """Facts for planning. Walks repositories and their ``_uploads``; registry data only for temp files.

    ``worth_detail(session)`` says whether a session's details (``startedat`` where the walk did
    not read it, multipart parts) are worth a request each: one already too fresh by what the
    listing showed need not pay for them. ``progress(n)`` is told how many directories were listed.
    """
    obs = Observation()
    collector = _Collector(obs, want_temp_files)
    descend = _prune(into_registry_data=want_temp_files, into_unknown=False, on_unknown_dir=collector.unknown_dir)
    flat = (lambda d: True) if want_temp_files else _uploads_flat
    if Capability.DELIMITER_LISTING in store.capabilities and not want_temp_files:
        listings = _walk_uploads_by_repository(store, descend, collector, obs.problems)
    elif store.walk_processes > 1:
        _fork_observe(store, collector, want_temp_files)
        listings = iter(())
    else:
        listings = store.walk("", layout.STORE_ROOT, descend, obs.problems, flat, _startedat)
    for n, listing in enumerate(listings, 1):
        collector.absorb(listing)
        if progress:
            progress(n)
    if Capability.MULTIPART_UPLOADS in store.capabilities:
        for mp in store.list_multipart_uploads(layout.ROOT_PREFIX + "/", obs.problems):
            collector.multipart(mp)
    _stat_empty_session_dirs(store, obs.sessions.values(), obs.problems)
    # Details cost a request each on S3: only for sessions that may be stale by what is known so far.
    worth = [s for s in obs.sessions.values() if worth_detail(s)]
    unread = [s for s in worth if s.startedat is None and s.startedat_key in s.files]
    _detail(store, [lambda s=s: _read_startedat(store, s, obs.problems) for s in unread])
    # Parts of every session: active uploads' bytes are reported too, and there are few of them.
    obs.blob_multiparts = _fill_parts(store, obs.sessions.values(), obs.blob_multiparts, obs.problems)
    for repo in probe_repos:
        obs.probe_repo_data[repo] = repository_data(store, repo, obs.problems)
    return obs


def _pruning_for(collector: _Collector):
    return _prune(
        into_registry_data=collector.want_temp_files, into_unknown=False, on_unknown_dir=collector.unknown_dir
    )


def _fork_observe(store: Store, collector: _Collector, want_temp_files: bool) -> None:
    """``observe``'s walk, with the repositories (and blob prefixes) dealt out to worker processes."""
    from debris import forkwalk

    obs = collector.obs
    top, starts = forkwalk.split_walk(store, _pruning_for(collector), obs.problems, read=_startedat)
    for listing in top:
        collector.absorb(listing)
    parts = forkwalk.fold(
        store, starts, _pruning_for, lambda: _Collector(Observation(), want_temp_files), _Collector.absorb,
        lambda c: c.obs.problems, store.walk_processes, read=_startedat,
    )  # fmt: skip
    for part in parts:
        o = part.obs
        obs.sessions.update(o.sessions)  # disjoint: a session lives below one repository directory
        obs.temp_files += o.temp_files
        obs.folder_markers += o.folder_markers
        obs.unknown.merge(o.unknown)
        _merge_problems(obs.problems, o.problems)


def _walk_uploads_by_repository(store: Store, descend, collector: _Collector, problems: WalkProblems):
    """Every repository's ``_uploads/`` without listing one directory per repository path level.

    No repository component starts with "_", so one listing of ``repositories/`` with the delimiter
    "/_" names every repository, nested ones too, in one request per 1000; then each repository's
    ``_uploads/`` is listed flat. The levels above ``repositories/`` are walked as usual.
    """
    repos_key = f"{layout.ROOT_PREFIX}/repositories"

    def above_repositories(parent: Dir, key: str, name: str) -> Dir | None:
        child = descend(parent, key, name)
        return None if child is not None and child.level is Level.REPOSITORIES else child

    yield from store.walk("", layout.STORE_ROOT, above_repositories, problems)
    names, loose = store.common_prefixes(repos_key + "/", "/_", problems)
    for rel, size, mtime_ns, etag, _regular in loose:
        if rel.endswith("/"):  # a folder marker such as repositories/team/
            collector.obs.folder_markers.append((f"{repos_key}/{rel}", FileInfo(size, mtime_ns, etag)))
        else:
            collector.obs.unknown.add(f"{repos_key}/{rel}", size)
    starts = []
    for name in names:
        if layout.is_valid_repository(name):
            starts.append((f"{repos_key}/{name}/{layout.RESERVED_UPLOADS}", Dir(Level.UPLOADS, name)))
        else:
            collector.obs.unknown.add(f"{repos_key}/{name}/_", None)
    yield from store.walk_many(starts, descend, problems, lambda d: True, _startedat)


def _stat_empty_session_dirs(store: Store, sessions: Iterable[SessionObservation], problems: WalkProblems) -> None:
    """A session with no file left (an interrupted delete) is judged by its directories' mtimes."""
    for s in sessions:
        if s.files or s.multiparts or not s.dirs:
            continue
        for key in s.dirs:
            try:
                info = store.stat(key)
            except StoreError as e:
                problems.errors.append(f"{key}: {e}")
                continue
            if info is not None:
                s.dir_mtimes_ns.append(info.mtime_ns)


def _read_startedat(store: Store, s: SessionObservation, problems: WalkProblems) -> None:
    try:
        s.startedat = store.read(s.startedat_key, STARTEDAT_READ_LIMIT)
    except StoreError as e:
        problems.errors.append(f"{s.startedat_key}: {e}")


def observe_session(store: Store, repository: str, upload_id: str, problems: WalkProblems) -> SessionObservation | None:
    """One session as it is now, or None if its directory (and every object of it) is gone."""
    obs = Observation(problems=problems)
    collector = _Collector(obs, want_temp_files=False)
    start = Dir(Level.SESSION, repository, upload_id)
    key = layout.session_dir_key(repository, upload_id)
    descend = _prune(into_registry_data=False, into_unknown=False, on_unknown_dir=collector.unknown_dir)
    s = collector.session(start)
    for listing in store.walk(key, start, descend, problems, lambda d: True, _startedat):
        collector.absorb(listing)
    _stat_empty_session_dirs(store, [s], problems)
    if Capability.MULTIPART_UPLOADS in store.capabilities:
        for mp in store.list_multipart_uploads(f"{key}/", problems):
            collector.multipart(mp)
        _fill_parts(store, [s], [], problems)
    if not (s.files or s.dirs or s.strangers or s.multiparts):
        return None
    if s.startedat is None and s.startedat_key in s.files:
        _read_startedat(store, s, problems)
    return s


def repository_data(store: Store, repository: str, problems: WalkProblems, limit: int = 20) -> list[str]:
    """Up to ``limit`` tags and manifest revisions of one repository ("tag:NAME", "revision:DIGEST")."""
    found_names: list[str] = []
    start = Dir(Level.MANIFESTS, repository)

    def descend(parent: Dir, _key: str, name: str) -> Dir | None:
        child = layout.descend(parent, name)
        return None if child.level in (Level.UNKNOWN, Level.TAG_INDEX) else child

    for listing in store.walk(f"{layout.ROOT_PREFIX}/repositories/{repository}/_manifests", start, descend, problems):
        d = listing.state
        for name, *_rest, regular in listing.files:
            kind = layout.classify(d, name) if regular else Kind.UNKNOWN
            if kind is Kind.TAG:
                found_names.append(f"tag:{d.tag}")
            elif kind is Kind.MANIFEST:
                found_names.append(f"revision:{d.alg}:{d.hex}")
        if len(found_names) >= limit:
            break
    return found_names[:limit]


@dataclass
class ClassTotals:
    count: int = 0
    bytes: int = 0


@dataclass
class ScanReport:
    by_class: dict[Kind, ClassTotals] = field(default_factory=dict)
    by_repository: dict[str, dict[Kind, ClassTotals]] = field(default_factory=dict)
    sessions: set[tuple[str, str]] = field(default_factory=set)
    unknown: UnknownReport = field(default_factory=UnknownReport)
    problems: WalkProblems = field(default_factory=WalkProblems)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.by_class.values())


class ScanCounter:
    """Classifies listings into a ScanReport; ``scan`` feeds it, and so can any full walk (audit)."""

    def __init__(self, by_repository: bool = False):
        self.report = ScanReport()
        self.by_repository = by_repository

    def count(self, kind: Kind, repository: str | None, size: int) -> None:
        t = self.report.by_class.get(kind)
        if t is None:
            t = self.report.by_class[kind] = ClassTotals()
        t.count += 1
        t.bytes += size
        if self.by_repository and repository is not None:
            per = self.report.by_repository.setdefault(repository, {})
            rt = per.get(kind)
            if rt is None:
                rt = per[kind] = ClassTotals()
            rt.count += 1
            rt.bytes += size

    def add(self, listing: Listing[Dir]) -> None:
        d = listing.state
        if d.upload_id is not None:
            self.report.sessions.add((d.repository, d.upload_id))
        classify, count, unknown = layout.classify, self.count, self.report.unknown
        for name, size, _mtime, _etag, regular in listing.files:
            if name == "":
                kind = Kind.FOLDER_MARKER
            elif regular:
                kind = classify(d, name)
            else:
                kind = Kind.UNKNOWN
            count(kind, d.repository, size)
            if kind is Kind.UNKNOWN:
                unknown.add(listing.file_key(name), size)

    def merge(self, other: ScanCounter) -> None:
        for kind, t in other.report.by_class.items():
            mine = self.report.by_class.setdefault(kind, ClassTotals())
            mine.count += t.count
            mine.bytes += t.bytes
        for repo, per in other.report.by_repository.items():
            for kind, t in per.items():
                mine = self.report.by_repository.setdefault(repo, {}).setdefault(kind, ClassTotals())
                mine.count += t.count
                mine.bytes += t.bytes
        self.report.sessions |= other.report.sessions
        self.report.unknown.merge(other.report.unknown)
        _merge_problems(self.report.problems, other.report.problems)

    def add_multiparts(self, store: Store) -> None:
        """Incomplete multipart uploads are not objects: a walk never sees them."""
        if Capability.MULTIPART_UPLOADS not in store.capabilities:
            return
        problems = self.report.problems
        uploads = list(store.list_multipart_uploads(layout.ROOT_PREFIX + "/", problems))
        for mp in _fill_parts(store, [], uploads, problems):
            e = layout.parse(mp.key)
            if e.upload_id is not None:
                self.report.sessions.add((e.repository, e.upload_id))
            self.count(Kind.MULTIPART_UPLOAD, e.repository, mp.bytes)


def every_directory(parent: Dir, _key: str, name: str) -> Dir:
    """A ``descend`` that prunes nothing: every path gets classified."""
    return layout.descend(parent, name)


def scan(store: Store, by_repository: bool = False, progress: Callable[[int], None] | None = None) -> ScanReport:
    """Classify every path in the store and sum sizes per class (and per repository)."""
    counter = ScanCounter(by_repository)
    if store.walk_processes > 1:
        from debris import forkwalk

        top, starts = forkwalk.split_walk(store, every_directory, counter.report.problems)
        for listing in top:
            counter.add(listing)
        parts = forkwalk.fold(
            store, starts, lambda _c: every_directory, lambda: ScanCounter(by_repository), ScanCounter.add,
            lambda c: c.report.problems, store.walk_processes,
        )  # fmt: skip
        for part in parts:
            counter.merge(part)
    else:
        walk = store.walk("", layout.STORE_ROOT, every_directory, counter.report.problems, lambda d: True)
        for n, listing in enumerate(walk, 1):
            if progress:
                progress(n)
            counter.add(listing)
    counter.add_multiparts(store)
    return counter.report
