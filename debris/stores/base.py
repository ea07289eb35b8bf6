"""The Store interface: the only I/O debris does against a registry's backing store.

A store knows nothing about the registry layout. The walker hands it a ``descend``
callback (the grammar plus the caller's pruning) so that directories a job does not
need are never listed. Destructive primitives (``remove_file``, ``remove_empty_dir``)
exist for one caller only: the gate in ``debris.apply``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

S = TypeVar("S")


class Capability(StrEnum):
    DIRECTORIES = "directories"  # real directories that must be removed once empty (local filesystem)
    MULTIPART_UPLOADS = "multipart_uploads"  # incomplete multipart uploads can be listed and aborted (S3 family)
    FREE_SPACE = "free_space"  # free bytes / inodes can be measured (local filesystem)
    # One listing with any delimiter string (common_prefixes, walk_many): S3 finds every repository
    # in one request per 1000 with the delimiter "/_", since no repository component starts with "_".
    DELIMITER_LISTING = "delimiter_listing"


#: How much of a file ``walk(read=...)`` returns: startedat is 20 bytes.
READ_LIMIT = 256


class StoreError(Exception):
    """An I/O failure against the store, with a one-line message for people."""


class NotFound(StoreError):
    pass


class Changed(StoreError):
    """The object is no longer what the caller verified (type, size, mtime, ETag)."""


class StoreFull(StoreError):
    """The store refuses writes because it is out of space or quota."""


class StoreReadOnly(StoreError):
    """The store refuses writes because it is read-only (EROFS, a read-only policy)."""


class StoreTimeout(StoreError):
    """The store did not answer in time."""


class StoreAuth(StoreError):
    """The store refused the credentials."""


class StoreThrottled(StoreError):
    """The store kept answering "slow down" / 503 through every retry."""


class FileInfo(NamedTuple):
    """What a store reports about one file. ``mtime_ns`` is the modification time (S3: LastModified).

    A NamedTuple: planning makes and (in forked walks) pickles one per session file.
    """

    size: int
    mtime_ns: int
    etag: str | None = None
    regular: bool = True  # False: symlink, fifo, socket, device... never part of the layout


#: One entry of a listing: (name, size, mtime_ns, etag or None, regular file?). Plain tuples: a scan
#: makes hundreds of thousands of them.
Entry = tuple[str, int, int, "str | None", bool]


class Listing(NamedTuple, Generic[S]):
    """The files of one directory seen by a walk.

    ``files`` are (name, size, mtime_ns, etag, regular). On S3 a name is "" for a folder marker
    (an object whose key is the directory's own key plus "/").
    """

    state: S
    key: str
    files: list[Entry]
    contents: dict[str, bytes] | None = None  # small files read during the walk, when asked and cheap

    def file_key(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    """An incomplete multipart upload. ``parts`` is None until listed."""

    key: str  # relative to the store root, like every key
    upload_id: str
    initiated_ns: int
    parts: tuple[Part, ...] | None = None

    @property
    def bytes(self) -> int:
        return sum(p.size for p in self.parts or ())

    def newest_ns(self) -> int:
        return max([p.mtime_ns for p in self.parts or ()] + [self.initiated_ns])


@dataclass(frozen=True, slots=True)
class Removal:
    key: str
    bytes_freed: int
    error: StoreError | None = None


@dataclass(slots=True)
class WalkProblems:
    """What a walk could not read. Reported loudly; vanished entries are normal concurrency."""

    errors: list[str] = field(default_factory=list)
    vanished: int = 0


class Store(ABC):
    """A registry backing store.

    Keys are '/'-separated, relative to the registry's rootdirectory (the directory that
    holds ``docker/``), never start with '/', and never contain '.' or '..' components.
    """

    capabilities: frozenset[Capability] = frozenset()
    #: How many small reads (startedat, ListParts) are worth running at once: >1 for remote stores.
    parallel_reads: int = 1
    #: How many processes may walk independent subtrees at once (debris.forkwalk); 1 = this one only.
    walk_processes: int = 1

    @property
    @abstractmethod
    def url(self) -> str:
        """Canonical URL naming this store (file:///abs/root, s3://bucket/root)."""

    @abstractmethod
    def identity(self) -> dict:
        """Facts that distinguish this store from another one at the same URL (device/inode, endpoint).

        A plan records it; the gate refuses a plan whose identity differs.
        """

    @abstractmethod
    def walk(
        self,
        start_key: str,
        start_state: S,
        descend: Callable[[S, str, str], S | None],
        problems: WalkProblems,
        flat: Callable[[S], bool] | None = None,
        read: Callable[[S, str], bool] | None = None,
    ) -> Iterator[Listing[S]]:
        """Yield one Listing for ``start_key`` (state ``start_state``) and for every directory below it.

        ``descend(parent_state, parent_key, name)`` is called exactly once for each subdirectory
        seen, parents first; it returns the child's state, or None to prune it (nothing below it is
        yielded, and a store with real directories never lists it). Directories are yielded even
        when empty, where the store has directories. Entries that are neither regular files nor
        directories (symlinks, FIFOs) are listed with ``regular`` False; symlinks are never
        followed. A missing ``start_key`` yields nothing and is not an error. Read errors go to
        ``problems`` and the walk goes on.

        ``flat(state)`` True says the caller wants (nearly) everything below a directory in that
        state: a store whose listing is cheaper without a delimiter (S3) may then list the whole
        subtree in one go.

        ``read(state, name)`` True asks for the first READ_LIMIT bytes of a small file in
        ``Listing.contents``. A store reads them only where that is cheap (the local store has the
        directory open anyway); elsewhere it ignores the request and callers use ``read``.
        """

    @abstractmethod
    def stat(self, key: str) -> FileInfo | None:
        """Info for one file, or None if it does not exist. Never follows symlinks."""

    @abstractmethod
    def read(self, key: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes of a small regular file, or None if it does not exist."""

    def read_many(self, keys: Iterable[str], limit: int) -> Iterator[tuple[str, bytes | None, StoreError | None]]:
        """``read`` for many keys: (key, bytes or None if it does not exist, error or None), in any
        order, one per key. A remote store reads ``parallel_reads`` at a time; the default reads
        one by one."""
        for key in keys:
            yield self._read_one(key, limit)

    def _read_one(self, key: str, limit: int) -> tuple[str, bytes | None, StoreError | None]:
        """One ``read_many`` answer: ``read`` with its StoreError as data."""
        try:
            return key, self.read(key, limit), None
        except StoreError as e:
            return key, None, e

    @abstractmethod
    def remove_file(self, key: str, expected: FileInfo) -> int:
        """Delete one regular file if it still matches ``expected``; return the bytes freed.

        Raises NotFound, Changed or StoreError. Only ``debris.apply`` may call this.
        """

    def remove_files(self, batch: list[tuple[str, FileInfo]]) -> list[Removal]:
        """Delete several files; one Removal per key, in order. Only ``debris.apply`` may call this.

        The default deletes one by one with ``remove_file``; a store with a batch API overrides it.
        """
        out = []
        for key, expected in batch:
            try:
                out.append(Removal(key, self.remove_file(key, expected)))
            except StoreError as e:
                out.append(Removal(key, 0, e))
        return out

    # Multipart uploads (Capability.MULTIPART_UPLOADS). Incomplete uploads are not objects: they
    # never show in a walk, yet their parts are stored, billed and counted against quota.

    def list_multipart_uploads(self, prefix_key: str, problems: WalkProblems) -> Iterator[MultipartUpload]:
        """Incomplete multipart uploads whose key starts with ``prefix_key`` (parts not filled in)."""
        return iter(())

    def list_parts(self, upload: MultipartUpload) -> list[Part]:
        """The parts stored so far for ``upload``. Raises NotFound once it is completed or aborted."""
        raise StoreError(f"{self.url} has no multipart uploads")

    def abort_multipart(self, upload: MultipartUpload) -> int:
        """Abort ``upload`` if its parts are still exactly ``upload.parts``; return the bytes freed.

        Raises NotFound, Changed or StoreError. Only ``debris.apply`` may call this.
        """
        raise StoreError(f"{self.url} has no multipart uploads")

    def walk_many(
        self,
        starts: list[tuple[str, S]],
        descend: Callable[[S, str, str], S | None],
        problems: WalkProblems,
        flat: Callable[[S], bool] | None = None,
        read: Callable[[S, str], bool] | None = None,
    ) -> Iterator[Listing[S]]:
        """``walk`` from several independent directories; a store may list them in parallel."""
        for key, state in starts:
            yield from self.walk(key, state, descend, problems, flat, read)

    def common_prefixes(self, prefix_key: str, delimiter: str, problems: WalkProblems) -> tuple[list[str], list[Entry]]:
        """Capability.DELIMITER_LISTING: the distinct key prefixes up to ``delimiter`` below ``prefix_key``."""
        raise StoreError(f"{self.url} cannot list by an arbitrary delimiter")

    def free_space(self) -> dict:
        """Capability.FREE_SPACE: bytes_free, bytes_total, inodes_free, inodes_total."""
        raise StoreError(f"{self.url} cannot tell its free space")

    def request_counts(self) -> dict[str, int] | None:
        """API calls made so far, by operation, for stores that are billed per request."""
        return None

    def write_new(self, key: str, data: bytes, created: list[str]) -> FileInfo:
        """Create a new small file (never overwrite) and return its info; every directory made for
        it is appended to ``created`` as it is made, so a failure still says what to remove.
        The write-health probe's only write: a store may be 100% full, and this is how debris
        finds out. Raises StoreFull, StoreReadOnly, StoreTimeout, StoreThrottled, StoreAuth or
        StoreError.
        """
        raise StoreError(f"{self.url} cannot be written to")

    def remove_empty_dir(self, key: str) -> bool:
        """Remove directory ``key`` if it is empty; return False if it is not empty or gone.

        Stores without real directories have nothing to remove. Only ``debris.apply`` may call this.
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or descriptors."""
