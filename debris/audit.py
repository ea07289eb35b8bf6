"""What would the registry's garbage collector delete, and how much would it free? (read-only)

``debris audit`` is a mark and sweep over the distribution v2 layout that never deletes
anything. It is split in two:

* ``collect(store)``: the only I/O, through the Store interface. One walk of the whole store
  (blobs, every repository, sessions too: the same listings give the ``debris scan`` totals),
  reading revision link files (and, for ``--delete-untagged``, tags' ``current/link``), then the
  manifest blobs the revisions name and, recursively, the children indexes name. A local store
  walks and reads in forked processes (``debris.forkwalk``); an S3 store lists blob prefixes and
  repositories flat, in parallel, and reads on its pool (``Store.read_many``). The result is an
  ``Inventory``: plain data.
* ``audit(inventory, delete_untagged)``: a pure function from that inventory to an ``AuditResult``.

Semantics (docs/safety.md "What audit reports"):

Mark. A *repository* is a directory with ``_manifests`` or ``_layers``. A *revision* is
``_manifests/revisions/<alg>/<hex>/link``; it is *valid* when its link names the digest of its own
directory and that blob's ``data`` exists. A manifest marks: Docker schema2 and OCI image
manifests their config and layers (OCI: also ``blobs`` of an artifact manifest), their
``subject`` as a manifest; a manifest list / OCI index its children as manifests, recursively (a
kept index's children are kept, and what they reference is marked, however deep); schema1 its
``fsLayers[].blobSum``. Every manifest reached is marked itself. Without ``--delete-untagged``
every valid revision is a root; with it, only revisions a tag points at
(``_manifests/tags/<tag>/current/link``), as in 2.8's ``Tags().Lookup``.

Sweep. Every blob (``blobs/<alg>/<2hex>/<hex>/data``) that is not marked is eligible, with the size
of its ``data``. With ``--delete-untagged`` a valid revision that is not reached from a root of its
repository is an eligible manifest (``repo@digest``).

Held back (debris is never more aggressive than GC, and more careful where GC is blind). A
repository is handled *carefully* when it has a corrupt or unreadable manifest (reached from any
revision), a revision or tag link that does not name a digest, a revision link naming another
digest than its directory, or ``_manifests`` without ``_layers`` (2.8's catalog never visits
it, so GC would sweep what only it references). Careful means: every revision is a root (no
eligible manifest there; a link naming another digest roots that digest too), and for the first
three causes every blob its ``_layers`` name, every digest-looking string in a corrupt manifest
and the corrupt manifest's own blob are held back: never eligible, listed as a finding. A blob
whose ``data`` is not a regular file (a symlink GC's driver would follow) is held back too. Any
walk or read error makes the whole result *incomplete*, and so does an *opaque path* (a symlink
GC would follow under a repository's ``_manifests`` or among repository directories, a ``link``
in a directory outside the grammar): nothing at all is eligible.

Where 2.8 would break a kept index (it marks each root and one level of what it references, so
with ``--delete-untagged`` it deletes an index's untagged children and sweeps what only they
reference), each such revision and blob is reported (``gc_deletes_kept_manifest``,
``gc_sweeps_kept_blob``); debris keeps them.

Layer links are taken by their directory (``_layers/<alg>/<hex>/`` holding a ``link`` file): GC
never reads them, and the name is what the registry looks them up by. Their contents are not read.

``by_repository``: for each repository R, the bytes of eligible blobs whose only *claimant* is R.
The claimants of a digest are the repositories that have a ``_layers`` link to it, or a valid
revision from which it is reached (whether that revision is kept or eligible). An eligible blob
with no claimant (an orphan) or with several is in ``bytes_reclaimable`` but in no repository's
figure, so the figures sum to at most ``bytes_reclaimable``.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from debris import layout
from debris.inventory import ScanCounter, ScanReport, every_directory
from debris.layout import Dir, Level
from debris.stores.base import Listing, Store

#: distribution 2.8 refuses manifests over 4 MiB on PUT; anything bigger is not a manifest it wrote.
MANIFEST_READ_LIMIT = 4 * 1024 * 1024
LINK_READ_LIMIT = 256
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
_DIGEST_LIST = re.compile(rf"{_DIGEST.pattern}(?: {_DIGEST.pattern})*")
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}

# --------------------------------------------------------------------------------------------
# The inventory: plain data, what collect() saw
# --------------------------------------------------------------------------------------------


class References(NamedTuple):
    blobs: frozenset[str]  # config, layers, blobSums: marked, never parsed
    manifests: frozenset[str]  # index children and subject: marked and followed
    subject: frozenset[str] = frozenset()  # the subject alone: 2.8 does not know the field


class Unreadable(NamedTuple):
    """A manifest blob that could not be read or is not a manifest."""

    why: str
    mentions: frozenset[str] = frozenset()  # digest-looking strings in what was read: held back


@dataclass
class RepoLinks:
    """One repository's links."""

    has_layers: bool = False
    layers: set[str] = field(default_factory=set)  # digests of _layers/<alg>/<hex>/ holding a link
    revisions: dict[str, str | None] = field(default_factory=dict)  # directory digest -> link content
    tags: dict[str, str | None] = field(default_factory=dict)  # tag -> current/link content (if read)

    def merge(self, other: RepoLinks) -> None:
        self.has_layers |= other.has_layers
        self.layers |= other.layers
        self.revisions.update(other.revisions)
        self.tags.update(other.tags)


@dataclass
class Inventory:
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> apparent size of data
    repositories: dict[str, RepoLinks] = field(default_factory=dict)
    manifests: dict[str, References | Unreadable] = field(default_factory=dict)  # digest -> what it references
    irregular: set[str] = field(default_factory=set)  # blobs whose data is a symlink, FIFO...: held back
    opaque: list[str] = field(default_factory=list)  # paths GC may read references from and debris cannot
    errors: list[str] = field(default_factory=list)  # walk and read errors

    def repository(self, name: str) -> RepoLinks:
        r = self.repositories.get(name)
        if r is None:
            r = self.repositories[name] = RepoLinks()
        return r

    def merge(self, other: Inventory) -> None:
        self.blobs.update(other.blobs)
        for name, links in other.repositories.items():
            self.repository(name).merge(links)
        self.manifests.update(other.manifests)
        self.irregular |= other.irregular
        self.opaque += other.opaque
        self.errors += other.errors


# --------------------------------------------------------------------------------------------
# Manifests (pure)
# --------------------------------------------------------------------------------------------


class ManifestError(ValueError):
    pass


def _digests(doc: dict, key: str, field: str = "digest") -> list[str]:
    """The ``field`` of every descriptor in the list ``doc[key]``, each a valid digest."""
    descs = doc.get(key)
    if descs is None:
        return []
    if type(descs) is not list:
        raise ManifestError(f"{key} is not a list")
    try:
        found = [desc[field] for desc in descs]
        # One regex over the joined list: a digest has no space, so this checks each of them.
        ok = not found or _DIGEST_LIST.fullmatch(" ".join(found))
    except (TypeError, KeyError, IndexError):
        ok = False
    if not ok:
        raise ManifestError(f"{key}[]: a descriptor without a valid {field}")
    return found


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
    if type(doc) is not dict:
        raise ManifestError("not a JSON object")
    version = doc.get("schemaVersion")
    if version == 1:
        return References(frozenset(_digests(doc, "fsLayers", "blobSum")), frozenset())
    if version != 2:
        raise ManifestError(f"unknown schemaVersion {version!r}")
    if not ("manifests" in doc or "config" in doc or "blobs" in doc):
        raise ManifestError("schemaVersion 2 but neither an image manifest nor an index")
    manifests = _digests(doc, "manifests")
    subject = _digests({"subject": [doc["subject"]]}, "subject") if "subject" in doc else []
    manifests += subject
    blobs = _digests(doc, "layers") + _digests(doc, "blobs")  # blobs: OCI artifact manifest
    if "config" in doc:
        blobs += _digests({"config": [doc["config"]]}, "config")
    return References(frozenset(blobs), frozenset(manifests), frozenset(subject))


def examine_manifest(digest: str, content: bytes) -> References | Unreadable:
    """``parse_manifest``, with a failure kept as data (what the bytes mention is held back)."""
    try:
        return parse_manifest(digest, content)
    except ManifestError as e:
        return Unreadable(str(e), frozenset(_DIGEST.findall(content.decode("latin-1"))))


# --------------------------------------------------------------------------------------------
# The audit (pure)
# --------------------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # corrupt_manifest, revision_blob_missing, link_to_missing_blob, bad_link,
    #          reference_missing, repository_without_layers, irregular_blob, held_back, incomplete,
    #          gc_deletes_kept_manifest, gc_sweeps_kept_blob (where 2.8 would break a kept index), opaque_path
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


class _Reach:
    """What a closure reached: manifests (marked and followed), blobs (marked), and the problems."""

    __slots__ = ("blobs", "corrupt", "manifests", "missing")

    def __init__(self) -> None:
        self.manifests: set[str] = set()
        self.blobs: set[str] = set()
        self.corrupt: set[str] = set()
        self.missing: set[str] = set()


def _closure(roots: Iterable[str], manifests: dict[str, References | Unreadable], blobs: dict[str, int]) -> _Reach:
    r = _Reach()
    stack = list(roots)
    while stack:
        d = stack.pop()
        if d in r.manifests:
            continue
        r.manifests.add(d)
        if d not in blobs:
            r.missing.add(d)
            continue
        got = manifests.get(d)
        if type(got) is not References:
            r.corrupt.add(d)
            continue
        r.blobs |= got.blobs
        for b in got.blobs:
            if b not in blobs:
                r.missing.add(b)
        stack += got.manifests
    return r


def _why(got: References | Unreadable | None) -> str:
    return got.why if isinstance(got, Unreadable) else "not read"


def _repository_roots(
    repo: str, links: RepoLinks, blobs: dict[str, int], tags_read: bool, problems: list[Finding]
) -> tuple[set[str], set[str], bool]:
    """(valid revisions, revisions a tag points at, careful?) with findings for every bad link."""
    valid: set[str] = set()
    careful = False
    for dir_digest, target in sorted(links.revisions.items()):
        if target is None or not _DIGEST.fullmatch(target):
            what = "unreadable or not a regular file" if target is None else f"holds {target!r}"
            problems.append(Finding("bad_link", f"revision link {what}", repo, dir_digest))
            careful = True
            if dir_digest in blobs:
                valid.add(dir_digest)
        elif target != dir_digest:
            # The registry follows the link: the target is what it serves under this revision.
            problems.append(Finding("bad_link", f"revision link names {target}", repo, dir_digest))
            careful = True
            valid |= {d for d in (dir_digest, target) if d in blobs}
        elif target not in blobs:
            problems.append(Finding("revision_blob_missing", "revision whose manifest blob is gone", repo, target))
        else:
            valid.add(target)
    for d in sorted(links.layers):
        if d not in blobs:
            problems.append(Finding("link_to_missing_blob", "_layers link to a missing blob", repo, d))
    tagged: set[str] = set()
    if tags_read:
        for tag, target in sorted(links.tags.items()):
            if target is None or not _DIGEST.fullmatch(target):
                what = "unreadable or not a regular file" if target is None else f"holds {target!r}"
                problems.append(Finding("bad_link", f"tag {tag}: current link {what}", repo))
                careful = True
                continue
            tagged.add(target)
            if target not in blobs:
                problems.append(Finding("link_to_missing_blob", f"tag {tag} points at a missing blob", repo, target))
    return valid, tagged, careful


def _one_level(roots: set[str], manifests: dict[str, References | Unreadable]) -> set[str]:
    """What garbage-collect 2.8 marks from ``roots``: each root and what it references directly."""
    out = set(roots)
    for d in roots:
        got = manifests.get(d)
        if type(got) is References:
            out |= got.blobs
            out |= got.manifests - got.subject
    return out


def _what_gc_2_8_breaks(
    losses: list[tuple[str, _Reach, set[str]]], gc_marked: set[str], blobs: dict[str, int]
) -> list[Finding]:
    """Where 2.8 would delete what a kept manifest still needs: it marks one level of an index, so
    an index's untagged children (with -m) go, and so do the blobs only they reference."""
    out: list[Finding] = []
    reported: set[str] = set()
    for repo, kept, gc_deletes in losses:
        for d in sorted(gc_deletes & kept.manifests):
            out.append(
                Finding(
                    "gc_deletes_kept_manifest",
                    "garbage-collect 2.8 deletes this untagged revision although a kept manifest references it "
                    "(an index child, a referrer's subject); debris keeps it",
                    repo,
                    d,
                )
            )
        for d in sorted(((kept.manifests | kept.blobs) & blobs.keys()) - gc_marked - reported):
            reported.add(d)
            out.append(
                Finding(
                    "gc_sweeps_kept_blob",
                    "garbage-collect 2.8 sweeps this blob although a kept manifest needs it through such a "
                    "revision (2.8 marks one level); debris keeps it",
                    repo,
                    d,
                )
            )
    return out


def audit(inv: Inventory, delete_untagged: bool = False) -> AuditResult:
    """Mark and sweep over ``inv``; see the module docstring for the exact rules."""
    problems: list[Finding] = []
    blobs, manifests = inv.blobs, inv.manifests
    marked: set[str] = set()
    held: set[str] = set()
    eligible_manifests: list[str] = []
    claims: list[tuple[str, set[str]]] = []  # (repository, digests it claims)
    gc_marked: set[str] = set()  # what 2.8 marks: its roots and one level of what they reference
    gc_loses: list[tuple[str, _Reach, set[str]]] = []  # (repository, what debris keeps, what 2.8 deletes)

    for repo, links in sorted(inv.repositories.items()):
        valid, tagged, careful = _repository_roots(repo, links, blobs, delete_untagged, problems)
        hold = careful
        full = _closure(valid, manifests, blobs)
        claims.append((repo, full.manifests | full.blobs | links.layers))
        for d in sorted(full.missing - valid):
            problems.append(Finding("reference_missing", "a manifest references a missing blob", repo, d))
        if full.corrupt:
            careful = hold = True
            for d in sorted(full.corrupt):
                got = manifests.get(d)
                problems.append(Finding("corrupt_manifest", _why(got), repo, d))
                held.add(d)
                if isinstance(got, Unreadable):
                    held |= got.mentions
        if hold:
            held |= links.layers
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
        roots = valid & tagged if delete_untagged else valid
        if delete_untagged and not careful:
            kept = _closure(roots, manifests, blobs)
            eligible_manifests += [f"{repo}@{d}" for d in sorted(valid - kept.manifests)]
        else:
            kept = full
        marked |= kept.manifests
        marked |= kept.blobs
        if links.has_layers:
            gc_marked |= _one_level(roots, manifests)
            if not careful and not kept.manifests <= roots:  # else 2.8 marks all debris keeps
                gc_loses.append((repo, kept, valid - roots))

    problems += _what_gc_2_8_breaks(gc_loses, gc_marked, blobs)
    for d in sorted(inv.irregular):
        problems.append(
            Finding("irregular_blob", "data is not a regular file (symlink?): never counted eligible", None, d)
        )
    held |= inv.irregular
    problems += [
        Finding(
            "opaque_path",
            f"{path}: not a regular file, or outside the layout, where garbage-collect may read references "
            "debris does not; nothing is counted eligible",
        )
        for path in sorted(inv.opaque)
    ]
    problems += [Finding("incomplete", f"could not read: {e}; nothing is counted eligible") for e in inv.errors]
    if inv.errors or inv.opaque:
        held |= set(blobs)
        eligible_manifests = []
    unmarked = blobs.keys() - marked
    eligible_set = unmarked - held
    eligible = sorted(eligible_set)
    held_back = sorted(unmarked & held)
    if held_back:
        problems.append(
            Finding(
                "held_back",
                f"{len(held_back)} unmarked blob(s), {sum(blobs[d] for d in held_back)} bytes, not counted "
                "eligible because of the problems above",
            )
        )
    owner: dict[str, str | None] = {}  # eligible digest -> its only claimant, None when several
    for repo, claimed in claims:
        for d in claimed & eligible_set:
            owner[d] = repo if d not in owner else None
    by_repo = dict.fromkeys(sorted(inv.repositories), 0)
    for d, repo in owner.items():
        if repo is not None:
            by_repo[repo] += blobs[d]
    return AuditResult(
        delete_untagged=delete_untagged,
        blobs_marked=len(blobs) - len(eligible),
        blobs_eligible=eligible,
        manifests_eligible=sorted(eligible_manifests),
        bytes_reclaimable=sum(blobs[d] for d in eligible),
        by_repository=by_repo,
        problems=problems,
        held_back=held_back,
    )


# --------------------------------------------------------------------------------------------
# The collector (I/O, through the Store interface only)
# --------------------------------------------------------------------------------------------


_regular = operator.itemgetter(4)
_REPOSITORIES_KEY = f"{layout.ROOT_PREFIX}/repositories/"
#: What garbage-collect never reads for marking: upload sessions and layer links.
_GC_BLIND_DIRS = (layout.RESERVED_UPLOADS, layout.RESERVED_LAYERS)
_GC_BLIND_LEVELS = frozenset(
    {Level.UPLOADS, Level.LAYERS, Level.LAYER_ALG, Level.LAYER_DIR} | layout.SESSION_DIR_LEVELS
)


def blob_key(digest: str) -> str:
    alg, _, hx = digest.partition(":")
    return f"{layout.ROOT_PREFIX}/blobs/{alg}/{hx[:2]}/{hx}/data"


def _links_to_read(read_tags: bool) -> Callable[[Dir, str], bool]:
    levels = {Level.REVISION_DIR, Level.TAG_CURRENT} if read_tags else {Level.REVISION_DIR}

    def wanted(d: Dir, name: str) -> bool:
        return name == "link" and d.level in levels

    return wanted


def _flat_below(d: Dir) -> bool:
    """Where a store that can list a subtree in one go (S3) should: per blob prefix and per
    top-level repository directory, so both are listed in parallel and never one level at a time."""
    return d.level is Level.BLOB_PREFIX or (d.level is Level.REPO and "/" not in (d.repository or "/"))


class _Collector:
    """Folds listings into an Inventory (and the scan totals), then reads links and manifests.

    Digests are interned: the same string object for a blob, its layer links and the manifests
    naming it, so a forked worker's result pickles each digest once (and the audit holds it once).
    """

    def __init__(self, read_tags: bool, counter: ScanCounter | None = None):
        self.inv = Inventory()
        self.counter = counter if counter is not None else ScanCounter()
        self.read_tags = read_tags
        self.unread: dict[str, tuple[dict[str, str | None], str]] = {}  # link key -> (where it goes, under what)
        self._digests: dict[str, str] = {}
        # Levels that hold what the audit needs. The repository-level ones also say the repository
        # exists (an S3 listing yields only directories that hold objects, so the deepest count too).
        self._by_level = {
            Level.BLOB_DIR: self._blob,
            Level.MANIFESTS: self._repository,
            Level.LAYERS: self._layers,
            Level.LAYER_DIR: self._layer_link,
            Level.REVISION_DIR: self._revision,
            Level.TAG_CURRENT: self._tag if read_tags else self._repository,
            Level.TAG_INDEX_DIR: self._repository,
        }

    def digest(self, d: str) -> str:
        return self._digests.setdefault(d, d)

    def add(self, listing: Listing[Dir]) -> None:
        self.counter.add(listing)
        d = listing.state
        handle = self._by_level.get(d.level)
        if handle is not None:
            handle(listing)
        if d.level is Level.UNKNOWN:
            self._unknown(listing)
        elif (
            (d.repository is not None or d.level is Level.REPOSITORIES)
            and d.level not in _GC_BLIND_LEVELS
            and False in map(_regular, listing.files)
        ):
            # A symlink (say, to another repository's _manifests) that GC's driver would follow.
            self.inv.opaque += [
                listing.file_key(f[0]) for f in listing.files if not f[4] and f[0] not in _GC_BLIND_DIRS
            ]

    def _unknown(self, listing: Listing[Dir]) -> None:
        """A ``link`` file below repositories/ in a directory outside the grammar (a repository name
        distribution would refuse, a bad digest): GC's own walk may still read it."""
        key = listing.key
        if key.startswith(_REPOSITORIES_KEY) and not any(f"/{r}/" in f"{key}/" for r in _GC_BLIND_DIRS):
            self.inv.opaque += [listing.file_key(f[0]) for f in listing.files if f[0] == "link"]

    def _blob(self, listing: Listing[Dir]) -> None:
        d = listing.state
        for name, size, _mtime, _etag, regular in listing.files:
            if name == "data":
                digest = self.digest(f"{d.alg}:{d.hex}")
                self.inv.blobs[digest] = size
                if not regular:  # GC's driver would follow a symlink; debris never does
                    self.inv.irregular.add(digest)

    def _repository(self, listing: Listing[Dir]) -> RepoLinks:
        return self.inv.repository(listing.state.repository)  # type: ignore[arg-type]

    def _layers(self, listing: Listing[Dir]) -> None:
        self._repository(listing).has_layers = True

    def _layer_link(self, listing: Listing[Dir]) -> None:
        links = self._repository(listing)
        links.has_layers = True
        for name, *_ in listing.files:
            if name == "link":  # even a symlink: claiming (and holding back) more is the safe side
                d = listing.state
                links.layers.add(self.digest(f"{d.alg}:{d.hex}"))

    def _revision(self, listing: Listing[Dir]) -> None:
        d = listing.state
        links = self._repository(listing)
        self._link(listing, links.revisions, self.digest(f"{d.alg}:{d.hex}"))

    def _tag(self, listing: Listing[Dir]) -> None:
        self._link(listing, self._repository(listing).tags, listing.state.tag)  # type: ignore[arg-type]

    def _link(self, listing: Listing[Dir], into: dict[str, str | None], name: str) -> None:
        for fname, _size, _mtime, _etag, regular in listing.files:
            if fname != "link":
                continue
            if not regular:  # GC's driver would follow a symlinked link; debris takes it as broken
                into[name] = None
                continue
            raw = listing.contents.get(fname) if listing.contents is not None else None
            if raw is None:  # not read during the walk (S3), or it failed there (the walk said so)
                into[name] = None
                if listing.contents is None:
                    self.unread[listing.file_key(fname)] = (into, name)
            else:
                into[name] = self.digest(raw.decode("ascii", "replace").strip())

    def finish(self, store: Store) -> None:
        """The reads that follow the walk: links the walk could not read, then the manifests."""
        if self.unread:
            for key, data, err in store.read_many(list(self.unread), LINK_READ_LIMIT):
                into, name = self.unread.pop(key)
                if err is not None:
                    self.inv.errors.append(str(err))
                elif data is not None:
                    into[name] = self.digest(data.decode("ascii", "replace").strip())
        self.read_manifests(store)

    def read_manifests(self, store: Store) -> None:
        """Every manifest a revision names, then every child an index names, until none is new."""
        inv = self.inv
        # Both ends of every revision link: they differ only in a damaged repository, where both are roots.
        todo = {
            d
            for r in inv.repositories.values()
            for link in r.revisions.items()
            for d in link
            if d and _DIGEST.fullmatch(d)
        }
        while todo:
            keys = {blob_key(d): d for d in todo if d not in inv.manifests}
            todo = set()
            for key, data, err in store.read_many(list(keys), MANIFEST_READ_LIMIT + 1):
                d = keys[key]
                if err is not None:
                    inv.manifests[d] = Unreadable(f"unreadable: {err}")
                elif data is None:
                    inv.manifests[d] = Unreadable("not found when read")
                elif len(data) > MANIFEST_READ_LIMIT:
                    inv.manifests[d] = Unreadable("larger than any manifest the registry accepts")
                else:
                    got = examine_manifest(d, data)
                    if type(got) is References:
                        intern = self.digest
                        got = References(
                            frozenset(map(intern, got.blobs)),
                            frozenset(map(intern, got.manifests)),
                            frozenset(map(intern, got.subject)),
                        )
                        todo |= got.manifests
                    inv.manifests[d] = got

    def merge(self, other: _Collector) -> None:
        self.inv.merge(other.inv)
        self.counter.merge(other.counter)


def collect(
    store: Store,
    delete_untagged: bool = False,
    progress: Callable[[int], None] | None = None,
    counter: ScanCounter | None = None,
) -> Inventory:
    """Walk the store once, reading links, then read the manifests. The walk covers every path,
    so ``counter`` (when given) gets the ``debris scan`` totals from the same listings. Tags are
    read only for ``delete_untagged``: without it no tag changes what GC keeps."""
    read = _links_to_read(delete_untagged)
    main = _Collector(delete_untagged, counter)
    problems = main.counter.report.problems
    if store.walk_processes > 1:
        from debris import forkwalk

        top, starts = forkwalk.split_walk(store, every_directory, problems, read=read)
        for listing in top:
            main.add(listing)
        parts = forkwalk.fold(
            store, starts, lambda _c: every_directory, lambda: _Collector(delete_untagged), _Collector.add,
            lambda c: c.counter.report.problems, store.walk_processes, finish=lambda c: c.finish(store), read=read,
        )  # fmt: skip
        for part in parts:
            main.merge(part)
    else:
        walk = store.walk("", layout.STORE_ROOT, every_directory, problems, _flat_below, read)
        for n, listing in enumerate(walk, 1):
            if progress:
                progress(n)
            main.add(listing)
    main.finish(store)  # after a forked walk only a no-op: each process read what its revisions name
    main.inv.errors = problems.errors + main.inv.errors
    return main.inv


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
    result = audit(collect(store, delete_untagged, progress, counter), delete_untagged)
    counter.add_multiparts(store)
    result.debris = debris_totals(counter.report)
    return result
