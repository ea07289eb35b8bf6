"""The CNCF distribution v2 storage grammar: store key -> typed Entry.

Pure: no I/O. This module is the allow-list of the safety contract: a path is
deletable only if it parses here into a safe kind. Anything the grammar does not
recognise exactly is UNKNOWN, and UNKNOWN is never deletable.

The grammar is a state machine over path components, so the same rules serve a
walker that descends one directory at a time (``descend`` / ``classify``) and
the delete gate that re-parses a whole key (``parse``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    UPLOAD_SESSION = "upload_session"
    MULTIPART_UPLOAD = "multipart_upload"
    TEMP_FILE = "temp_file"
    PROBE_REPO = "probe_repo"
    BLOB = "blob"
    MANIFEST = "manifest"
    LAYER_LINK = "layer_link"
    TAG = "tag"
    FOLDER_MARKER = "folder_marker"
    UNKNOWN = "unknown"


#: Kinds a plan may ever hold. Everything else is the registry's own data (GC's job) or unknown.
SAFE_KINDS = frozenset(
    {Kind.UPLOAD_SESSION, Kind.MULTIPART_UPLOAD, Kind.TEMP_FILE, Kind.PROBE_REPO, Kind.FOLDER_MARKER}
)

ROOT_PREFIX = "docker/registry/v2"

# distribution/reference: path components of a repository name.
_NAME_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# A leading domain component (e.g. localhost:5000) is allowed by reference.NameRegexp.
_DOMAIN_COMPONENT = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?"
)
_NAME_TOTAL_MAX = 255
# Tags: [\w][\w.-]{0,127} with Go's ASCII \w. A tag may start with "_".
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Upload ids are canonical lower-case UUID strings (distribution/uuid, google/uuid).
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Filesystem driver >= 3.1 PutContent writes "<target>.<uuid>.tmp" then renames it.
_TEMP = re.compile(r"(.+)\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.tmp")
_OFFSET = re.compile(r"0|[1-9][0-9]{0,18}")
# Registered digest algorithms and their hex lengths. Others parse as UNKNOWN (never deletable).
DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")

RESERVED_UPLOADS = "_uploads"
RESERVED_LAYERS = "_layers"
RESERVED_MANIFESTS = "_manifests"


class Level(IntEnum):
    """Where a directory sits in the layout."""

    UNKNOWN = 0
    STORE_ROOT = 1
    DOCKER = 2
    REGISTRY = 3
    V2 = 4
    BLOBS = 5
    BLOB_ALG = 6
    BLOB_PREFIX = 7
    BLOB_DIR = 8
    REPOSITORIES = 9
    REPO = 10  # a valid repository-name prefix; it may or may not be a repository itself
    UPLOADS = 11
    SESSION = 12
    HASHSTATES = 13
    HASHSTATE_ALG = 14
    LAYERS = 15
    LAYER_ALG = 16
    LAYER_DIR = 17
    MANIFESTS = 18
    REVISIONS = 19
    REVISION_ALG = 20
    REVISION_DIR = 21
    TAGS = 22
    TAG_DIR = 23
    TAG_CURRENT = 24
    TAG_INDEX = 25
    TAG_INDEX_ALG = 26
    TAG_INDEX_DIR = 27


#: Directory levels that belong to one upload session (the gate may rmdir them once empty).
SESSION_DIR_LEVELS = frozenset({Level.SESSION, Level.HASHSTATES, Level.HASHSTATE_ALG})
#: Levels that hold only registry data (blobs, links, tags): a plan of upload sessions never walks them.
REGISTRY_DATA_LEVELS = frozenset({Level.BLOBS, Level.LAYERS, Level.MANIFESTS})


class Dir(NamedTuple):
    """A directory's place in the grammar. ``repository`` is set at and below a repository.

    A NamedTuple, not a dataclass: one is made per directory walked, and tuples are cheapest.
    """

    level: Level
    repository: str | None = None
    upload_id: str | None = None
    alg: str | None = None  # digest algorithm of BLOB_*/..._ALG/..._DIR levels
    hex: str | None = None  # digest hex (or 2-hex prefix at BLOB_PREFIX)
    tag: str | None = None


STORE_ROOT = Dir(Level.STORE_ROOT)
UNKNOWN_DIR = Dir(Level.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Entry:
    """A classified file (or S3 object) key."""

    kind: Kind
    key: str
    repository: str | None = None
    upload_id: str | None = None
    digest: str | None = None
    tag: str | None = None
    member: str | None = None  # within a session: "startedat", "data", "hashstate"; for temp files: the target name

    @property
    def in_session(self) -> bool:
        return self.upload_id is not None


def session_dir_key(repository: str, upload_id: str) -> str:
    return f"{ROOT_PREFIX}/repositories/{repository}/{RESERVED_UPLOADS}/{upload_id}"


def is_valid_repository(name: str) -> bool:
    parts = name.split("/")
    if not parts or len(name) > _NAME_TOTAL_MAX:
        return False
    first_ok = _NAME_COMPONENT.fullmatch(parts[0]) or _DOMAIN_COMPONENT.fullmatch(parts[0])
    return bool(first_ok) and all(_NAME_COMPONENT.fullmatch(p) for p in parts[1:])


def is_upload_id(name: str) -> bool:
    return _UUID.fullmatch(name) is not None


def _is_digest_hex(alg: str | None, name: str) -> bool:
    return len(name) == DIGEST_HEX_LEN.get(alg or "", -1) and _HEX.fullmatch(name) is not None


def _repo(d: Dir, name: str) -> Dir:
    if name == RESERVED_UPLOADS:
        return Dir(Level.UPLOADS, d.repository)
    if name == RESERVED_LAYERS:
        return Dir(Level.LAYERS, d.repository)
    if name == RESERVED_MANIFESTS:
        return Dir(Level.MANIFESTS, d.repository)
    if _NAME_COMPONENT.fullmatch(name):
        repo = f"{d.repository}/{name}"
        if len(repo) <= _NAME_TOTAL_MAX:
            return Dir(Level.REPO, repo)
    return UNKNOWN_DIR


def _repositories(d: Dir, name: str) -> Dir:
    if (_NAME_COMPONENT.fullmatch(name) or _DOMAIN_COMPONENT.fullmatch(name)) and len(name) <= _NAME_TOTAL_MAX:
        return Dir(Level.REPO, name)
    return UNKNOWN_DIR


def _fixed(name_to_level: dict[str, Level]):
    """A level whose children have fixed names and carry no state of their own."""

    def step(d: Dir, name: str) -> Dir:
        level = name_to_level.get(name)
        return UNKNOWN_DIR if level is None else Dir(level, d.repository, d.upload_id, tag=d.tag)

    return step


def _alg(child: Level):
    def step(d: Dir, name: str) -> Dir:
        return Dir(child, d.repository, d.upload_id, alg=name, tag=d.tag) if name in DIGEST_HEX_LEN else UNKNOWN_DIR

    return step


def _digest(child: Level):
    def step(d: Dir, name: str) -> Dir:
        if _is_digest_hex(d.alg, name):
            return Dir(child, d.repository, alg=d.alg, hex=name, tag=d.tag)
        return UNKNOWN_DIR

    return step


def _blob_prefix(d: Dir, name: str) -> Dir:
    if len(name) == 2 and _HEX.fullmatch(name):
        return Dir(Level.BLOB_PREFIX, alg=d.alg, hex=name)
    return UNKNOWN_DIR


def _blob_dir(d: Dir, name: str) -> Dir:
    if _is_digest_hex(d.alg, name) and name.startswith(d.hex or "?"):
        return Dir(Level.BLOB_DIR, alg=d.alg, hex=name)
    return UNKNOWN_DIR


def _session(d: Dir, name: str) -> Dir:
    return Dir(Level.SESSION, d.repository, name) if _UUID.fullmatch(name) else UNKNOWN_DIR


def _tag(d: Dir, name: str) -> Dir:
    return Dir(Level.TAG_DIR, d.repository, tag=name) if _TAG.fullmatch(name) else UNKNOWN_DIR


# How each level names its subdirectories. A level that is absent has none (its children are UNKNOWN).
_STEP = {
    Level.STORE_ROOT: _fixed({"docker": Level.DOCKER}),
    Level.DOCKER: _fixed({"registry": Level.REGISTRY}),
    Level.REGISTRY: _fixed({"v2": Level.V2}),
    Level.V2: _fixed({"blobs": Level.BLOBS, "repositories": Level.REPOSITORIES}),
    Level.BLOBS: _alg(Level.BLOB_ALG),
    Level.BLOB_ALG: _blob_prefix,
    Level.BLOB_PREFIX: _blob_dir,
    Level.REPOSITORIES: _repositories,
    Level.REPO: _repo,
    Level.UPLOADS: _session,
    Level.SESSION: _fixed({"hashstates": Level.HASHSTATES}),
    Level.HASHSTATES: _alg(Level.HASHSTATE_ALG),
    Level.LAYERS: _alg(Level.LAYER_ALG),
    Level.LAYER_ALG: _digest(Level.LAYER_DIR),
    Level.MANIFESTS: _fixed({"revisions": Level.REVISIONS, "tags": Level.TAGS}),
    Level.REVISIONS: _alg(Level.REVISION_ALG),
    Level.REVISION_ALG: _digest(Level.REVISION_DIR),
    Level.TAGS: _tag,
    Level.TAG_DIR: _fixed({"current": Level.TAG_CURRENT, "index": Level.TAG_INDEX}),
    Level.TAG_INDEX: _alg(Level.TAG_INDEX_ALG),
    Level.TAG_INDEX_ALG: _digest(Level.TAG_INDEX_DIR),
}


def descend(d: Dir, name: str) -> Dir:
    """The state of directory ``name`` inside directory ``d``. UNKNOWN is absorbing."""
    step = _STEP.get(d.level)
    return UNKNOWN_DIR if step is None else step(d, name)


# File names that are data in a directory of the given level, and what they are.
_LINK_KIND = {
    Level.LAYER_DIR: Kind.LAYER_LINK,
    Level.REVISION_DIR: Kind.MANIFEST,
    Level.TAG_CURRENT: Kind.TAG,
    Level.TAG_INDEX_DIR: Kind.TAG,
}


def _classify_exact(d: Dir, name: str) -> Kind:
    lvl = d.level
    if lvl == Level.SESSION:
        return Kind.UPLOAD_SESSION if name in ("startedat", "data") else Kind.UNKNOWN
    if lvl == Level.HASHSTATE_ALG:
        return Kind.UPLOAD_SESSION if _OFFSET.fullmatch(name) else Kind.UNKNOWN
    if lvl == Level.BLOB_DIR:
        return Kind.BLOB if name == "data" else Kind.UNKNOWN
    if name == "link":
        return _LINK_KIND.get(lvl, Kind.UNKNOWN)
    return Kind.UNKNOWN


def classify(d: Dir, name: str) -> Kind:
    """Kind of the regular file ``name`` inside directory ``d``."""
    kind = _classify_exact(d, name)
    if kind is Kind.UNKNOWN and name.endswith(".tmp"):
        m = _TEMP.fullmatch(name)
        if m and _classify_exact(d, m.group(1)) is not Kind.UNKNOWN:
            return Kind.TEMP_FILE
    return kind


def entry(d: Dir, name: str, key: str) -> Entry:
    """Full Entry for file ``name`` in directory ``d`` whose whole key is ``key``."""
    kind = classify(d, name)
    if kind is Kind.UNKNOWN:
        return Entry(Kind.UNKNOWN, key, d.repository)
    digest = f"{d.alg}:{d.hex}" if d.level in _DIGEST_DIR_LEVELS else None
    if kind is Kind.TEMP_FILE:
        target = _TEMP.fullmatch(name).group(1)  # type: ignore[union-attr]
        return Entry(kind, key, d.repository, d.upload_id, digest, d.tag, member=target)
    member = None
    if d.level == Level.SESSION:
        member = name
    elif d.level == Level.HASHSTATE_ALG:
        member = "hashstate"
    return Entry(kind, key, d.repository, d.upload_id, digest, d.tag, member)


_DIGEST_DIR_LEVELS = frozenset({Level.BLOB_DIR, Level.LAYER_DIR, Level.REVISION_DIR, Level.TAG_INDEX_DIR})


def split_key(key: str) -> list[str] | None:
    """Components of a store key, or None if it is not a clean relative key."""
    if not key or key.startswith("/") or "\x00" in key:
        return None
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def parse_dir(key: str) -> Dir:
    """State of the directory ``key`` ("" is the store root)."""
    if key == "":
        return STORE_ROOT
    parts = split_key(key)
    if parts is None:
        return UNKNOWN_DIR
    d = STORE_ROOT
    for p in parts:
        d = descend(d, p)
        if d.level == Level.UNKNOWN:
            return UNKNOWN_DIR
    return d


def parse(key: str) -> Entry:
    """Classify a whole file/object key relative to the store root."""
    if key.endswith("/") and split_key(key[:-1]) is not None:
        return Entry(Kind.FOLDER_MARKER, key)
    parts = split_key(key)
    if parts is None:
        return Entry(Kind.UNKNOWN, key)
    d = parse_dir("/".join(parts[:-1])) if len(parts) > 1 else STORE_ROOT
    if d.level == Level.UNKNOWN:
        return Entry(Kind.UNKNOWN, key)
    return entry(d, parts[-1], key)
