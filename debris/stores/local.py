"""Local filesystem store (the registry's ``filesystem`` storage driver).

Every access is relative to directory file descriptors opened with O_NOFOLLOW, starting
from one descriptor of the store root held for the store's lifetime: a directory swapped
for a symlink between planning and deleting fails with ELOOP/ENOTDIR instead of leading
out of the root.
"""

from __future__ import annotations

import errno
import os
import stat as st_mod
from collections.abc import Callable, Iterable, Iterator

from debris.stores.base import (
    READ_LIMIT,
    Capability,
    Changed,
    Entry,
    FileInfo,
    Listing,
    NotFound,
    S,
    Store,
    StoreAuth,
    StoreError,
    StoreFull,
    StoreReadOnly,
    WalkProblems,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Deeper than any valid layout path (a 255-character repository name has at most 128 components).
MAX_DEPTH = 160


_S_ISREG = st_mod.S_ISREG


def _info(st: os.stat_result) -> FileInfo:
    mode = st.st_mode
    return FileInfo(st.st_size, st.st_mtime_ns, None, st_mod.S_ISREG(mode))


def _read_at(dir_fd: int, name: str, limit: int) -> bytes:
    # O_NONBLOCK: opening a FIFO planted in the store must not hang the scan.
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not st_mod.S_ISREG(st.st_mode):
            raise Changed(f"{name}: not a regular file")
        # Ask for what is there (plus one byte to see growth), not for ``limit``: a 4 MiB limit
        # would allocate 4 MiB per small manifest.
        data = os.read(fd, min(limit, st.st_size + 1))
        while st.st_size < len(data) < limit:  # it grew since fstat: read on, up to the limit
            more = os.read(fd, limit - len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


def _read_some(dir_fd, key, state, files, read, problems) -> dict[str, bytes] | None:
    """The small files of one directory that the walk's caller asked to read, through its open fd."""
    if read is None:
        return None
    out = {}
    for name, _size, _mtime, _etag, regular in files:
        if regular and read(state, name):
            try:
                out[name] = _read_at(dir_fd, name, READ_LIMIT)
            except FileNotFoundError:
                problems.vanished += 1
            except (OSError, Changed) as e:
                problems.errors.append(f"{key}/{name}: {getattr(e, 'strerror', None) or e}")
    return out


def _write_error(key: str, e: OSError) -> StoreError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        err: StoreError = StoreFull(f"{key}: {e.strerror} (errno {errno.errorcode.get(e.errno, e.errno)})")
    elif e.errno == errno.EROFS:
        err = StoreReadOnly(f"{key}: {e.strerror}")
    elif e.errno in (errno.EACCES, errno.EPERM):
        err = StoreAuth(f"{key}: {e.strerror}")
    else:
        err = StoreError(f"{key}: {e.strerror}")
    return err


def _clean_parts(key: str) -> list[str]:
    """The components of a store key; StoreError for an empty key or an empty, "." or ".." part."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing unclean key {key!r}")
    return parts


class LocalStore(Store):
    capabilities = frozenset({Capability.DIRECTORIES, Capability.FREE_SPACE})

    def __init__(self, root: str):
        # The walk is interpreter-bound: split it over the cores (DEBRIS_WALK_PROCESSES=1 turns it off).
        self.walk_processes = max(1, int(os.environ.get("DEBRIS_WALK_PROCESSES", min(2, os.cpu_count() or 1))))
        self.root = os.path.realpath(root)
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"store root {self.root} does not exist") from None
        except NotADirectoryError:
            raise StoreError(f"store root {self.root} is not a directory") from None
        except OSError as e:
            raise StoreError(f"cannot open store root {self.root}: {e.strerror}") from None
        root_st = os.fstat(self._root_fd)
        self._identity = {"kind": "file", "path": self.root, "dev": root_st.st_dev, "ino": root_st.st_ino}

    @property
    def url(self) -> str:
        return "file://" + self.root

    def identity(self) -> dict:
        return dict(self._identity)

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- descriptor helpers -------------------------------------------------------------

    def _open_dir(self, parts: list[str]) -> int:
        """A new descriptor for the directory ``parts`` below the root, never through a symlink."""
        fd = os.dup(self._root_fd)
        try:
            for p in parts:
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _parent(self, key: str) -> tuple[int, str]:
        parts = _clean_parts(key)
        try:
            return self._open_dir(parts[:-1]), parts[-1]
        except FileNotFoundError:
            raise NotFound(key) from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Changed(f"{key}: a parent directory is no longer a directory (symlink?)") from None
            raise StoreError(f"{key}: {e.strerror}") from None

    # -- reading ------------------------------------------------------------------------

    def walk(
        self,
        start_key: str,
        start_state: S,
        descend: Callable[[S, str, str], S | None],
        problems: WalkProblems,
        flat: Callable[[S], bool] | None = None,  # listing per directory is already optimal here
        read: Callable[[S, str], bool] | None = None,
    ) -> Iterator[Listing[S]]:
        try:
            fd = self._open_dir(start_key.split("/") if start_key else [])
        except FileNotFoundError:
            return
        except OSError as e:
            problems.errors.append(f"{start_key or '.'}: {e.strerror}")
            return
        # An explicit stack of open directories: one descriptor per level of depth, never one per
        # sibling, so a directory with 100k children cannot exhaust descriptors.
        frames: list[tuple[int, str, S, Iterator[str]]] = []
        try:
            files, subdirs = self._list(fd, start_key, problems)
            frames.append((fd, start_key, start_state, iter(subdirs)))
            yield Listing(start_state, start_key, files, _read_some(fd, start_key, start_state, files, read, problems))
            while frames:
                pfd, pkey, pstate, pending = frames[-1]
                name = next(pending, None)
                if name is None:
                    os.close(pfd)
                    frames.pop()
                    continue
                child = descend(pstate, pkey, name)
                if child is None:
                    continue
                ckey = f"{pkey}/{name}" if pkey else name
                if len(frames) >= MAX_DEPTH:
                    problems.errors.append(f"{ckey}: deeper than {MAX_DEPTH} levels, not walked")
                    continue
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                except FileNotFoundError:
                    problems.vanished += 1
                    continue
                except OSError as e:
                    problems.errors.append(f"{ckey}: {e.strerror}")
                    continue
                frames.append((cfd, ckey, child, iter(())))
                files, subdirs = self._list(cfd, ckey, problems)
                frames[-1] = (cfd, ckey, child, iter(subdirs))
                yield Listing(child, ckey, files, _read_some(cfd, ckey, child, files, read, problems))
        finally:
            for f in frames:
                os.close(f[0])

    @staticmethod
    def _list(fd: int, key: str, problems: WalkProblems) -> tuple[list[Entry], list[str]]:
        """The files of directory ``fd`` (lstat'ed) and the names of its subdirectories."""
        files: list[Entry] = []
        subdirs: list[str] = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                            continue
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        problems.vanished += 1
                        continue
                    except OSError as err:
                        problems.errors.append(f"{key}/{e.name}: {err.strerror}")
                        continue
                    files.append((e.name, st.st_size, st.st_mtime_ns, None, _S_ISREG(st.st_mode)))
        except OSError as e:
            problems.errors.append(f"{key or '.'}: {e.strerror}")
        return files, subdirs

    def stat(self, key: str) -> FileInfo | None:
        try:
            fd, name = self._parent(key)
        except NotFound:
            return None
        try:
            return _info(os.stat(name, dir_fd=fd, follow_symlinks=False))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{key}: {e.strerror}") from None
        finally:
            os.close(fd)

    def read(self, key: str, limit: int) -> bytes | None:
        try:
            fd, name = self._parent(key)
        except NotFound:
            return None
        try:
            return _read_at(fd, name, limit)
        except FileNotFoundError:
            return None
        except Changed:
            raise Changed(f"{key}: not a regular file") from None
        except OSError as e:
            raise StoreError(f"{key}: {e.strerror}") from None
        finally:
            os.close(fd)

    def read_many(self, keys: Iterable[str], limit: int) -> Iterator[tuple[str, bytes | None, StoreError | None]]:
        """Reads through cached descriptors of the keys' grandparent directories.

        Blob keys (``blobs/<alg>/<2hex>/<hex>/data``) share 256 grandparents per algorithm, so a
        read costs two opens instead of one per path component. Every open is O_NOFOLLOW, as in
        ``read``; the descriptors are closed when the iteration ends.
        """
        cache: dict[tuple[str, ...], int] = {}
        try:
            for key in keys:
                try:
                    yield key, self._read_cached(cache, _clean_parts(key), limit), None
                except Changed:  # from _read_at, which names the file only
                    yield key, None, Changed(f"{key}: not a regular file")
                except StoreError as e:
                    yield key, None, e
                except FileNotFoundError:
                    yield key, None, None
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        yield key, None, Changed(f"{key}: a symlink or a non-directory on the path")
                    else:
                        yield key, None, StoreError(f"{key}: {e.strerror}")
        finally:
            for fd in cache.values():
                os.close(fd)

    #: The 256 blob prefix directories of one algorithm, with room to spare, well under a 1024 fd limit.
    _READ_CACHE_MAX = 320

    def _read_cached(self, cache: dict[tuple[str, ...], int], parts: list[str], limit: int) -> bytes:
        top, rest = tuple(parts[:-2]), parts[-2:]
        gfd = cache.get(top)
        if gfd is None:
            gfd = self._open_dir(list(top))
            if len(cache) < self._READ_CACHE_MAX:
                cache[top] = gfd
        try:
            if len(rest) == 1:
                return _read_at(gfd, rest[0], limit)
            pfd = os.open(rest[0], _DIR_FLAGS, dir_fd=gfd)
            try:
                return _read_at(pfd, rest[1], limit)
            finally:
                os.close(pfd)
        finally:
            if cache.get(top) != gfd:
                os.close(gfd)

    def free_space(self) -> dict:
        vfs = os.fstatvfs(self._root_fd)
        return {
            "bytes_free": vfs.f_bavail * vfs.f_frsize,
            "bytes_total": vfs.f_blocks * vfs.f_frsize,
            "inodes_free": vfs.f_favail,
            "inodes_total": vfs.f_files,
        }

    # -- destructive primitives: only debris.apply calls these ---------------------------

    def remove_file(self, key: str, expected: FileInfo) -> int:
        fd, name = self._parent(key)
        try:
            try:
                current = _info(os.stat(name, dir_fd=fd, follow_symlinks=False))
            except FileNotFoundError:
                raise NotFound(key) from None
            if not current.regular:
                raise Changed(f"{key}: no longer a regular file")
            if (current.size, current.mtime_ns) != (expected.size, expected.mtime_ns):
                raise Changed(f"{key}: size or mtime changed")
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(key) from None
            except OSError as e:
                raise StoreError(f"{key}: {e.strerror}") from None
            return current.size
        finally:
            os.close(fd)

    def write_new(self, key: str, data: bytes, created: list[str]) -> FileInfo:
        parts = _clean_parts(key)
        fd = os.dup(self._root_fd)
        try:
            for n, p in enumerate(parts[:-1]):
                try:
                    os.mkdir(p, 0o755, dir_fd=fd)
                    created.append("/".join(parts[: n + 1]))
                except FileExistsError:
                    pass
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            ffd = os.open(
                parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd
            )
            try:
                os.write(ffd, data)
                os.fsync(ffd)  # a full disk may only say so when the data has to land
                info = _info(os.fstat(ffd))
            except OSError:
                os.close(ffd)
                os.unlink(parts[-1], dir_fd=fd)  # our own half-written file, never anything else
                raise
            os.close(ffd)
            return info
        except OSError as e:
            raise _write_error(key, e) from None
        finally:
            os.close(fd)

    def remove_empty_dir(self, key: str) -> bool:
        try:
            fd, name = self._parent(key)
        except NotFound:
            return False
        try:
            os.rmdir(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            if e.errno == errno.ENOTDIR:
                raise Changed(f"{key}: no longer a directory") from None
            raise StoreError(f"{key}: {e.strerror}") from None
        finally:
            os.close(fd)
