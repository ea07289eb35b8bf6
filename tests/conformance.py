"""One conformance suite for every Store (restic/fsspec style).

A store's test module subclasses ``StoreConformance`` and provides one fixture,
``make_store``: a callable that takes ``{key: bytes}``, writes those objects into a fresh,
empty store, and returns the Store. Everything here must hold for every backend.
"""

from __future__ import annotations

import pytest

from debris.stores.base import Changed, FileInfo, NotFound, Store, StoreError, WalkProblems

UUID = "3f2a8c4e-1b2d-4c5e-9f60-7a8b9c0d1e2f"
SESSION = f"docker/registry/v2/repositories/team/app/_uploads/{UUID}"
BLOB = "docker/registry/v2/blobs/sha256/01/" + "0123456789abcdef" * 4 + "/data"
FILES = {
    f"{SESSION}/startedat": b"2026-01-01T00:00:00Z",
    f"{SESSION}/data": b"d" * 3000,
    f"{SESSION}/hashstates/sha256/0": b"state",
    BLOB: b"blob-bytes",
    "docker/registry/v2/repositories/team/app/_layers/sha256/" + "0123456789abcdef" * 4 + "/link": b"sha256:...",
    "docker/registry/v2/repositories/team/other/_uploads/x/y": b"unknown",
}


def _all(store: Store, start: str = "", prune=lambda state, key, name: True) -> tuple[dict[str, FileInfo], list[str]]:
    """Files (key -> info) of a walk, and the directory keys ``descend`` was asked about."""
    asked: list[str] = []

    def descend(state, key, name):
        child = f"{key}/{name}" if key else name
        asked.append(child)
        return child if prune(state, key, name) else None

    problems = WalkProblems()
    files = {
        listing.file_key(name): FileInfo(size, mtime, etag, regular)
        for listing in store.walk(start, start, descend, problems)
        for name, size, mtime, etag, regular in listing.files
    }
    assert problems.errors == []
    return files, asked


class StoreConformance:
    @pytest.fixture
    def make_store(self):  # pragma: no cover - provided by each store's test module
        raise NotImplementedError

    @pytest.fixture
    def store(self, make_store):
        s = make_store(FILES)
        yield s
        s.close()

    def test_walk_yields_every_file_with_its_size(self, store):
        files, _ = _all(store)
        assert {k: i.size for k, i in files.items()} == {k: len(v) for k, v in FILES.items()}
        assert all(i.regular and i.mtime_ns > 0 for i in files.values())

    def test_walk_state_is_the_directory_state(self, store):
        # the state passed to descend for a child is what descend returned for its parent
        seen = {}

        def descend(state, key, name):
            child = f"{key}/{name}" if key else name
            seen[child] = state
            return child

        for listing in store.walk("", "", descend, WalkProblems()):
            assert listing.state == listing.key
        assert seen["docker/registry"] == "docker"

    def test_pruned_directories_are_never_listed(self, store):
        files, asked = _all(store, prune=lambda state, key, name: name not in ("blobs", "_layers"))
        assert BLOB not in files
        assert not any("/_layers/" in k for k in files)
        assert not any(a.startswith("docker/registry/v2/blobs/") for a in asked)
        assert f"{SESSION}/data" in files

    def test_walk_from_a_subdirectory(self, store):
        files, _ = _all(store, SESSION)
        assert set(files) == {k for k in FILES if k.startswith(SESSION + "/")}

    def test_walk_of_a_missing_directory_yields_nothing(self, store):
        files, _ = _all(store, "docker/registry/v2/repositories/nope/_uploads")
        assert files == {}

    def test_stat_and_read(self, store):
        info = store.stat(f"{SESSION}/data")
        assert info is not None and info.size == 3000 and info.regular
        assert store.stat(f"{SESSION}/nope") is None
        assert store.read(f"{SESSION}/startedat", 256) == b"2026-01-01T00:00:00Z"
        assert store.read(f"{SESSION}/startedat", 4) == b"2026"
        assert store.read(f"{SESSION}/nope", 10) is None

    def test_remove_file_deletes_only_what_was_verified(self, store):
        key = f"{SESSION}/data"
        info = store.stat(key)
        with pytest.raises(Changed):
            store.remove_file(key, FileInfo(info.size + 1, info.mtime_ns, info.etag))
        with pytest.raises(Changed):
            store.remove_file(key, FileInfo(info.size, info.mtime_ns - 10**9, info.etag))
        assert store.stat(key) is not None
        assert store.remove_file(key, info) == 3000
        assert store.stat(key) is None
        with pytest.raises(NotFound):
            store.remove_file(key, info)
        files, _ = _all(store)
        assert set(files) == set(FILES) - {key}

    @pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "docker/../x", "docker//x", ""])
    def test_unclean_keys_are_refused(self, store, key):
        with pytest.raises(StoreError):
            store.remove_file(key, FileInfo(1, 1))

    def test_identity_survives_a_plan_file_and_cannot_be_changed_from_outside(self, store):
        import json

        identity = store.identity()
        assert identity and json.loads(json.dumps(identity)) == identity  # a plan file records it
        identity["tampered"] = True
        assert "tampered" not in store.identity()
        assert store.url.split("://", 1)[0] in ("file", "s3", "rgw") and "://" in store.url
