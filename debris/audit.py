"""What would the registry's garbage collector delete, and how much would it free? (read-only)

``debris audit`` is a mark and sweep over the distribution v2 layout that never deletes
anything. It is split in two:

* ``collect(store)``: the only I/O. One walk of ``blobs/`` and every repository's ``_layers``
  and ``_manifests`` (never ``_uploads``), reading link files, then the manifest blobs the
  links (and index children) name. The result is an ``Inventory``: plain data.
* ``audit(inventory, delete_untagged)``: a pure function from that inventory to an ``AuditResult``.

Semantics (docs: the brief's "what GC would delete", made precise):

Mark. A *repository* is a directory with ``_manifests``. A *revision* is
``_manifests/revisions/<alg>/<hex>/link``; it is *valid* when its link names the digest of its own
directory and that blob's ``data`` exists (garbage-collect 2.8 silently skips the others). A
manifest marks: Docker schema2 and OCI image manifests their config and layers (OCI: also
``blobs`` of an artifact manifest), their ``subject`` as a manifest; a manifest list / OCI index
its children as manifests, recursively (a kept index's children are kept, and what they reference
is marked, however deep); schema1 its ``fsLayers[].blobSum``. Every manifest reached is marked
itself. Without ``--delete-untagged`` every valid revision is a root; with it, only revisions a tag
points at (``_manifests/tags/<tag>/current/link``), as in 2.8's ``Tags().Lookup``.

Sweep. Every blob (``blobs/<alg>/<2hex>/<hex>/data``) that is not marked is eligible, with the size
of its ``data``. With ``--delete-untagged`` a valid revision that is not reached from a root of its
repository is an eligible manifest (``repo@digest``).

Held back (debris is never more aggressive than GC, and more careful where GC is blind):

* a repository with a corrupt or unreadable manifest (reached from any of its revisions): its
  references are unknown, so every revision of it is a root (no eligible manifest there), and every
  blob its ``_layers`` links name, every digest-looking string in the corrupt bytes and the corrupt
  manifest's own blob are held back: never eligible, listed as a finding.
* a repository with ``_manifests`` but no ``_layers``: 2.8's catalog never visits it, so GC would
  sweep what only it references. debris marks it as usual (every revision a root) and reports it.
* any walk error: references may be missing, so nothing at all is eligible (finding ``incomplete``).

``by_repository``: for each repository R, the bytes of eligible blobs whose only *claimant* is R.
The claimants of a digest are the repositories that have a ``_layers`` link to it, or a valid
revision from which it is reached (whether that revision is kept or eligible). An eligible blob
with no claimant (an orphan) or with several is in ``bytes_reclaimable`` but in no repository's
figure, so the figures sum to at most ``bytes_reclaimable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from debris import layout
from debris.inventory import ScanCounter, ScanReport, every_directory
from debris.layout import Dir, Kind, Level
from debris.stores.base import Listing, Store, StoreError

#: distribution 2.8 refuses manifests over 4 MiB on PUT; anything bigger is not a manifest it wrote.
MANIFEST_READ_LIMIT = 4 * 1024 * 1024
LINK_READ_LIMIT = 256
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}

# --------------------------------------------------------------------------------------------
# The inventory: plain data, what collect() saw
# --------------------------------------------------------------------------------------------


@dataclass
class RepoLinks:
    """One repository's links: directory digest -> link content (None: unreadable)."""

    has_layers: bool = False
    layers: dict[str, str | None] = field(default_factory=dict)
    revisions: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str | None] = field(default_factory=dict)  # tag -> current/link content


@dataclass
class Inventory:
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> apparent size of data
    repositories: dict[str, RepoLinks] = field(default_factory=dict)
    manifests: dict[str, bytes | str] = field(default_factory=dict)  # digest -> content, or why unreadable
    errors: list[str] = field(default_factory=list)  # walk and read errors


# --------------------------------------------------------------------------------------------
# Manifests (pure)
# --------------------------------------------------------------------------------------------


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class References:
    blobs: frozenset[str]  # config, layers, blobSums: marked, never parsed
    manifests: frozenset[str]  # index children, subject: marked and followed


def _digest_of(desc: object, where: str) -> str:
    d = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(d, str) or not _DIGEST.fullmatch(d):
        raise ManifestError(f"{where}: no valid digest")
    return d


def _descs(doc: dict, key: str) -> list:
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ManifestError(f"{key} is not a list")
    return v


def parse_manifest(digest: str, content: bytes) -> References:
    """What a manifest references. Raises ManifestError for anything that is not a manifest
    distribution would have stored under ``digest`` (wrong hash, not JSON, unknown shape)."""
    alg, _, hx = digest.partition(":")
    h = _HASHES.get(alg)
    if h is None or h(content).hexdigest() != hx:
        raise ManifestError("content does not hash to its digest")
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("not a JSON object")
    version = doc.get("schemaVersion")
    if version == 1:
        blobs = [
            _digest_of({"digest": layer.get("blobSum") if isinstance(layer, dict) else None}, "fsLayers")
            for layer in _descs(doc, "fsLayers")
        ]
        return References(frozenset(blobs), frozenset())
    if version != 2:
        raise ManifestError(f"unknown schemaVersion {version!r}")
    manifests = [_digest_of(d, "manifests[]") for d in _descs(doc, "manifests")]
    if "subject" in doc:
        manifests.append(_digest_of(doc["subject"], "subject"))
    blobs: list[str] = []
    if "config" in doc:
        blobs.append(_digest_of(doc["config"], "config"))
    blobs += [_digest_of(d, "layers[]") for d in _descs(doc, "layers")]
    blobs += [_digest_of(d, "blobs[]") for d in _descs(doc, "blobs")]  # OCI artifact manifest
    if not ("manifests" in doc or "config" in doc or "blobs" in doc):
        raise ManifestError("schemaVersion 2 but neither an image manifest nor an index")
    return References(frozenset(blobs), frozenset(manifests))


# --------------------------------------------------------------------------------------------
# The audit (pure)
# --------------------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # corrupt_manifest, revision_blob_missing, link_to_missing_blob, bad_link,
    #          reference_missing, repository_without_layers, held_back, incomplete
    detail: str
    repository: str | None = None
    digest: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "repository": self.repository, "digest": self.digest, "detail": self.detail}


@dataclass
class AuditResult:
    delete_untagged: bool
    blobs_marked: int
    blobs_eligible: list[str]
    manifests_eligible: list[str]
    bytes_reclaimable: int
    by_repository: dict[str, int]
    problems: list[Finding]
    held_back: list[str]  # digests that would be eligible but for a problem
    debris: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "blobs_marked": self.blobs_marked,
            "blobs_eligible": self.blobs_eligible,
            "manifests_eligible": self.manifests_eligible,
            "bytes_reclaimable": self.bytes_reclaimable,
            "by_repository": self.by_repository,
            "debris": self.debris,
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass
class _Reach:
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)


def _closure(roots: Iterable[str], refs: Callable[[str], References | None], exists: Callable[[str], bool]) -> _Reach:
    r = _Reach()
    stack = list(roots)
    while stack:
        d = stack.pop()
        if d in r.manifests:
            continue
        r.manifests.add(d)
        if not exists(d):
            r.missing.add(d)
            continue
        got = refs(d)
        if got is None:
            r.corrupt.add(d)
            continue
        r.blobs |= got.blobs
        r.missing |= {b for b in got.blobs if not exists(b)}
        stack += [m for m in got.manifests if m not in r.manifests]
    return r


def audit(inv: Inventory, delete_untagged: bool = False) -> AuditResult:
    """Mark and sweep over ``inv``; see the module docstring for the exact rules."""
    problems: list[Finding] = []
    parsed: dict[str, References | None] = {}
    why: dict[str, str] = {}

    def refs(d: str) -> References | None:
        if d not in parsed:
            content = inv.manifests.get(d)
            if content is None:
                why[d], parsed[d] = "not read", None
            elif isinstance(content, str):
                why[d], parsed[d] = content, None
            else:
                try:
                    parsed[d] = parse_manifest(d, content)
                except ManifestError as e:
                    why[d], parsed[d] = str(e), None
        return parsed[d]

    def exists(d: str) -> bool:
        return d in inv.blobs

    marked: set[str] = set()
    held: set[str] = set()
    eligible_manifests: list[str] = []
    claimants: dict[str, set[str]] = {}

    for repo, links in sorted(inv.repositories.items()):
        valid: set[str] = set()
        for dir_digest, target in sorted(links.revisions.items()):
            if target is None or not _DIGEST.fullmatch(target):
                problems.append(Finding("bad_link", f"revision link holds {target!r}", repo, dir_digest))
            elif target != dir_digest:
                problems.append(Finding("bad_link", f"revision link names {target}", repo, dir_digest))
            elif not exists(target):
                problems.append(Finding("revision_blob_missing", "revision whose manifest blob is gone", repo, target))
            else:
                valid.add(target)
        for dir_digest, target in sorted(links.layers.items()):
            if target is None or not _DIGEST.fullmatch(target):
                problems.append(Finding("bad_link", f"layer link holds {target!r}", repo, dir_digest))
            elif not exists(target):
                problems.append(Finding("link_to_missing_blob", "_layers link to a missing blob", repo, target))
        tagged: set[str] = set()
        for tag, target in sorted(links.tags.items()):
            if target is None or not _DIGEST.fullmatch(target):
                problems.append(Finding("bad_link", f"tag {tag}: current link holds {target!r}", repo))
                continue
            tagged.add(target)
            if not exists(target):
                problems.append(Finding("link_to_missing_blob", f"tag {tag} points at a missing blob", repo, target))

        full = _closure(valid, refs, exists)
        for d in full.manifests | full.blobs | {t for t in links.layers.values() if t}:
            claimants.setdefault(d, set()).add(repo)
        for d in sorted(full.missing - set(valid)):
            problems.append(Finding("reference_missing", "a manifest references a missing blob", repo, d))
        careful = False
        if full.corrupt:
            careful = True
            for d in sorted(full.corrupt):
                problems.append(Finding("corrupt_manifest", why.get(d, "unreadable"), repo, d))
                held.add(d)
                content = inv.manifests.get(d)
                if isinstance(content, bytes):
                    held |= set(_DIGEST.findall(content.decode("latin-1")))
            held |= {t for t in links.layers.values() if t}
        if not links.has_layers:
            careful = True
            problems.append(
                Finding(
                    "repository_without_layers",
                    "has _manifests but no _layers: garbage-collect 2.8 never visits it and would sweep "
                    "what only it references (debris keeps it)",
                    repo,
                )
            )
        roots = valid if (careful or not delete_untagged) else valid & tagged
        kept = _closure(roots, refs, exists)
        marked |= kept.manifests | kept.blobs
        if delete_untagged and not careful:
            eligible_manifests += [f"{repo}@{d}" for d in sorted(valid - kept.manifests)]

    if inv.errors:
        problems += [Finding("incomplete", f"could not read: {e}; nothing is counted eligible") for e in inv.errors]
        held |= set(inv.blobs)
        eligible_manifests = []
    unmarked = set(inv.blobs) - marked
    eligible = sorted(unmarked - held)
    held_back = sorted(unmarked & held)
    if held_back:
        problems.append(
            Finding(
                "held_back",
                f"{len(held_back)} unmarked blob(s), {sum(inv.blobs[d] for d in held_back)} bytes, not counted "
                "eligible because of the problems above",
            )
        )
    by_repo = dict.fromkeys(sorted(inv.repositories), 0)
    for d in eligible:
        who = claimants.get(d, set())
        if len(who) == 1:
            by_repo[next(iter(who))] += inv.blobs[d]
    return AuditResult(
        delete_untagged=delete_untagged,
        blobs_marked=len(inv.blobs) - len(eligible),
        blobs_eligible=eligible,
        manifests_eligible=sorted(eligible_manifests),
        bytes_reclaimable=sum(inv.blobs[d] for d in eligible),
        by_repository=by_repo,
        problems=problems,
        held_back=held_back,
    )


# --------------------------------------------------------------------------------------------
# The collector (I/O, through the Store interface only)
# --------------------------------------------------------------------------------------------

_LINK_LEVELS = frozenset({Level.LAYER_DIR, Level.REVISION_DIR, Level.TAG_CURRENT})


def _read_link(d: Dir, name: str) -> bool:
    return name == "link" and d.level in _LINK_LEVELS


def blob_key(digest: str) -> str:
    alg, _, hx = digest.partition(":")
    return f"{layout.ROOT_PREFIX}/blobs/{alg}/{hx[:2]}/{hx}/data"


def collect(
    store: Store, progress: Callable[[int], None] | None = None, counter: ScanCounter | None = None
) -> Inventory:
    """Walk the store once, then read the manifests. The walk covers every path, so ``counter``
    (when given) gets the ``debris scan`` totals from the same listings."""
    inv = Inventory()
    counter = counter or ScanCounter()
    problems = counter.report.problems

    def repo(name: str) -> RepoLinks:
        r = inv.repositories.get(name)
        if r is None:
            r = inv.repositories[name] = RepoLinks()
        return r

    def link(listing: Listing[Dir], name: str) -> str | None:
        raw = listing.contents.get(name) if listing.contents else None
        if raw is None:
            try:
                raw = store.read(listing.file_key(name), LINK_READ_LIMIT)
            except StoreError as e:
                inv.errors.append(str(e))
                return None
        return None if raw is None else raw.decode("ascii", "replace").strip()

    walk = store.walk("", layout.STORE_ROOT, every_directory, problems, None, _read_link)
    for n, listing in enumerate(walk, 1):
        if progress:
            progress(n)
        counter.add(listing)
        d = listing.state
        if d.level is Level.MANIFESTS:
            repo(d.repository)
        elif d.level is Level.LAYERS:
            repo(d.repository).has_layers = True
        for name, size, _mtime, _etag, regular in listing.files:
            if not regular or layout.classify(d, name) in (Kind.UNKNOWN, Kind.TEMP_FILE):
                continue
            if d.level is Level.BLOB_DIR:
                inv.blobs[f"{d.alg}:{d.hex}"] = size
            elif d.level is Level.LAYER_DIR:
                repo(d.repository).layers[f"{d.alg}:{d.hex}"] = link(listing, name)
            elif d.level is Level.REVISION_DIR:
                repo(d.repository).revisions[f"{d.alg}:{d.hex}"] = link(listing, name)
            elif d.level is Level.TAG_CURRENT:
                repo(d.repository).tags[d.tag] = link(listing, name)
    inv.errors += problems.errors
    _read_manifests(store, inv)
    return inv


def _read_manifests(store: Store, inv: Inventory) -> None:
    """Read every manifest a revision names, then every child an index names, until none is new."""
    todo = [t for r in inv.repositories.values() for t in r.revisions.values() if t and _DIGEST.fullmatch(t)]
    while todo:
        d = todo.pop()
        if d in inv.manifests or d not in inv.blobs:
            continue
        if inv.blobs[d] > MANIFEST_READ_LIMIT:
            inv.manifests[d] = f"{inv.blobs[d]} bytes: larger than any manifest the registry accepts"
            continue
        try:
            content = store.read(blob_key(d), MANIFEST_READ_LIMIT + 1)
        except StoreError as e:
            inv.manifests[d] = f"unreadable: {e}"
            continue
        if content is None:
            inv.manifests[d] = "vanished while reading"
            continue
        inv.manifests[d] = content
        with contextlib.suppress(ManifestError):  # audit() reports it
            todo += parse_manifest(d, content).manifests


def debris_totals(r: ScanReport) -> dict:
    """The scan totals (``debris scan``): every class's files and bytes, sessions, unknown paths."""
    return {
        "totals": {k.value: {"count": t.count, "bytes": t.bytes} for k, t in sorted(r.by_class.items())},
        "sessions": len(r.sessions),
        "bytes": r.total_bytes,
        "unknown": r.unknown.count,
        "errors": r.problems.errors,
    }


def run(store: Store, delete_untagged: bool = False, progress: Callable[[int], None] | None = None) -> AuditResult:
    counter = ScanCounter()
    result = audit(collect(store, progress, counter), delete_untagged)
    counter.add_multiparts(store)
    result.debris = debris_totals(counter.report)
    return result


# --------------------------------------------------------------------------------------------
# Human output
# --------------------------------------------------------------------------------------------


def text(result: AuditResult, store_url: str, rows: int = 50) -> str:
    from debris.render import size, table

    mode = "garbage-collect --delete-untagged" if result.delete_untagged else "garbage-collect"
    out = [
        f"store {store_url}: what {mode} would delete (nothing was deleted)",
        table(
            [
                ["blobs that stay (manifests included)", f"{result.blobs_marked:,}", ""],
                ["blobs eligible", f"{len(result.blobs_eligible):,}", size(result.bytes_reclaimable)],
                ["manifests eligible", f"{len(result.manifests_eligible):,}", ""],
            ],
            ["", "count", "reclaimable"],
        ),
    ]
    repo_rows = [[r, size(b)] for r, b in sorted(result.by_repository.items(), key=lambda kv: -kv[1]) if b]
    if repo_rows:
        out += ["", table(repo_rows[:rows], ["repository", "frees alone"])]
    if result.manifests_eligible:
        out += ["", "manifests eligible:"] + [f"  {m}" for m in result.manifests_eligible[:rows]]
        if len(result.manifests_eligible) > rows:
            out.append(f"  ... {len(result.manifests_eligible) - rows} more (--json lists all)")
    if result.problems:
        out += ["", f"{len(result.problems)} problem(s) garbage-collect does not see:"]
        prob_rows = [[p.kind, p.repository or "", p.digest or "", p.detail] for p in result.problems[:rows]]
        out.append(table(prob_rows, ["problem", "repository", "digest", "detail"]))
        if len(result.problems) > rows:
            out.append(f"  ... {len(result.problems) - rows} more (--json lists all)")
    d = result.debris
    if d:
        sessions = d["totals"].get(Kind.UPLOAD_SESSION.value, {"bytes": 0})["bytes"]
        out.append(
            f"\ndebris (never touched by garbage-collect): {d['sessions']:,} upload session(s), {size(sessions)}; "
            f"{d['unknown']:,} unknown path(s) (see `debris scan`)"
        )
    return "\n".join(out)
