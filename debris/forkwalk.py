"""Walk independent subtrees of a local store in forked worker processes.

A Python walk of a big store is CPU-bound in the interpreter (the system calls are cheap), and
threads only contend for the GIL. So the subtrees below a few split levels (the blob prefix
directories, the top-level repository directories) are dealt out to ``workers`` processes. Each
folds its listings into its own accumulator, which comes back pickled; the caller merges them.
Workers only read: every deletion stays in the parent, behind the gate.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from debris.layout import Dir, Level
from debris.stores.base import Listing, Store, WalkProblems

A = TypeVar("A")

#: Directories whose children are independent subtrees worth dealing out.
SPLIT_LEVELS = frozenset({Level.BLOB_ALG, Level.REPOSITORIES})


def split_walk(
    store: Store, descend: Callable[[Dir, str, str], Dir | None], problems: WalkProblems, **walk_options
) -> tuple[Iterator[Listing[Dir]], list[tuple[str, Dir]]]:
    """Walk the top of the store, stopping at the children of SPLIT_LEVELS.

    Returns the top's listings (an iterator: consume it first) and, filled as it is consumed, the
    subtrees left to walk: (key, state) pairs that ``descend`` already accepted.
    """
    starts: list[tuple[str, Dir]] = []

    def stop_at_split(parent: Dir, key: str, name: str) -> Dir | None:
        child = descend(parent, key, name)
        if child is not None and parent.level in SPLIT_LEVELS:
            starts.append((f"{key}/{name}" if key else name, child))
            return None
        return child

    from debris import layout

    return store.walk("", layout.STORE_ROOT, stop_at_split, problems, **walk_options), starts


def fold(
    store: Store,
    starts: list[tuple[str, Dir]],
    descend_for: Callable[[A], Callable[[Dir, str, str], Dir | None]],
    make: Callable[[], A],
    add: Callable[[A, Listing[Dir]], None],
    problems_of: Callable[[A], WalkProblems],
    workers: int,
    finish: Callable[[A], None] | None = None,
    **walk_options,
) -> list[A]:
    """Walk ``starts`` and fold every listing into accumulators: one per worker, the parent's first.

    ``descend_for(acc)`` gives the ``descend`` for a walk feeding ``acc`` (a pruning callback may
    record into its own accumulator). ``finish(acc)``, when given, runs in each process after its
    walk, before the accumulator is sent: follow-up reads that should run in parallel too.

    With one worker (or few starts) everything runs here. The starts are dealt out in chunks as
    processes ask for them (``_Deal``). A worker that dies is an error in the parent's
    accumulator, never a silent gap.
    """

    def walk_here(group: Iterable[tuple[str, Dir]]) -> A:
        acc = make()
        _walk_into(store, group, descend_for(acc), acc, add, problems_of, walk_options)
        if finish is not None:
            finish(acc)
        return acc

    if workers < 2 or len(starts) < 2:
        return [walk_here(starts)]
    deal = _Deal(len(starts))
    children: list[tuple[int, int]] = []
    try:
        for _ in range(workers - 1):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # worker: walk, fold, send, and leave without running the parent's cleanup
                status = 0
                try:
                    os.close(r)
                    payload = pickle.dumps(walk_here(deal.share(starts)), protocol=pickle.HIGHEST_PROTOCOL)
                except BaseException as e:
                    payload = pickle.dumps(RuntimeError(f"walk worker failed: {e!r}"))
                    status = 1
                try:
                    with os.fdopen(w, "wb") as out:
                        out.write(struct.pack("!Q", len(payload)))
                        out.write(payload)
                finally:
                    os._exit(status)
            os.close(w)
            children.append((pid, r))
        try:
            mine = walk_here(deal.share(starts))
        finally:  # reap every worker, even when this walk failed
            received = [_receive(r, pid) for pid, r in children]
    finally:
        deal.close()
    results = [mine]
    for got in received:
        if isinstance(got, BaseException):
            problems_of(mine).errors.append(str(got))
        else:
            results.append(got)
    return results


class _Deal:
    """Deals the starts out in chunks to whichever process asks next, so the walk ends together
    wherever the work is (a forked worker also pays copy-on-write faults the parent does not).

    The chunk numbers are written into a pipe up front (4 bytes each, at most 4 KiB: it never
    blocks) and each process reads one number at a time; Linux serialises pipe reads, so every
    chunk goes to exactly one process, and a process that dies takes nobody else's.
    """

    MAX_CHUNKS = 1024

    def __init__(self, n: int):
        chunks = min(n, self.MAX_CHUNKS)
        self.bounds = [n * k // chunks for k in range(chunks + 1)]
        self._r, w = os.pipe()
        try:
            numbers = b"".join(struct.pack("=I", k) for k in range(chunks))
            if os.write(w, numbers) != len(numbers):
                raise OSError("could not deal the walk out: short write to a pipe")
        finally:
            os.close(w)

    def share(self, starts: list[tuple[str, Dir]]) -> Iterator[tuple[str, Dir]]:
        while got := os.read(self._r, 4):
            if len(got) != 4:  # cannot happen with whole records and serialised reads; never guess
                raise OSError(f"walk dealer: read {len(got)} bytes of a chunk number")
            k = struct.unpack("=I", got)[0]
            yield from starts[self.bounds[k] : self.bounds[k + 1]]

    def close(self) -> None:
        os.close(self._r)


def _walk_into(store, group, descend, acc, add, problems_of, walk_options) -> None:
    problems = problems_of(acc)
    for key, state in group:
        for listing in store.walk(key, state, descend, problems, **walk_options):
            add(acc, listing)


def _receive(r: int, pid: int) -> object:
    with os.fdopen(r, "rb") as f:
        head = f.read(8)
        data = f.read(struct.unpack("!Q", head)[0]) if len(head) == 8 else b""
    _, status = os.waitpid(pid, 0)
    if not data:
        return RuntimeError(f"walk worker {pid} ended without a result (status {status})")
    try:
        return pickle.loads(data)
    except Exception as e:
        return RuntimeError(f"walk worker {pid} sent an unreadable result: {e}")
