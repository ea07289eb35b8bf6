"""One conformance suite for every Store (restic/fsspec style).

A store's test module subclasses ``StoreConformance`` and provides one fixture,
``make_store``: a callable that takes ``{key: bytes}``, writes those objects into a fresh,
empty store, and returns the Store. Everything here must hold for every backend.
"""

from __future__ import annotations

import hashlib
import json

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


def _digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def _blob_key(digest: str) -> str:
    hx = digest.split(":", 1)[1]
    return f"docker/registry/v2/blobs/sha256/{hx[:2]}/{hx}/data"


def _link_key(repo: str, where: str, digest: str) -> str:
    return f"docker/registry/v2/repositories/{repo}/{where}/sha256/{digest.split(':', 1)[1]}/link"


def registry_tree() -> tuple[dict[str, bytes], dict[str, object]]:
    """A small registry as its storage driver lays it out, and what an audit must find in it.

    ``library/web`` has a tagged image and an untagged old revision; ``tools`` an OCI index whose
    child is only reached through it; an orphan blob is in no repository. The same bytes on every
    store must give the same audit.
    """
    files: dict[str, bytes] = {}

    def blob(content: bytes) -> str:
        d = _digest(content)
        files[_blob_key(d)] = content
        return d

    def image(repo: str, name: str, tag: str | None) -> tuple[str, list[str]]:
        parts = [blob(json.dumps({"config": name}).encode()), blob(f"layer of {name}".encode() * 50)]
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "x", "size": 1, "digest": parts[0]},
                "layers": [{"mediaType": "x", "size": 1, "digest": parts[1]}],
            }
        ).encode()
        m = blob(body)
        for d in parts:
            files[_link_key(repo, "_layers", d)] = d.encode()
        files[_link_key(repo, "_manifests/revisions", m)] = m.encode()
        if tag:
            files[f"docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"] = m.encode()
            files[_link_key(repo, f"_manifests/tags/{tag}/index", m)] = m.encode()
        return m, parts

    image("library/web", "web-v2", "latest")
    old, old_parts = image("library/web", "web-v1", None)
    kid, kid_parts = image("tools", "tools-amd64", None)
    index = blob(json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "x", "size": 1, "digest": kid}]}).encode())
    files[_link_key("tools", "_manifests/revisions", index)] = index.encode()
    files["docker/registry/v2/repositories/tools/_manifests/tags/v1/current/link"] = index.encode()
    orphan = blob(b"pushed, never referenced")
    files[f"{SESSION}/startedat"] = b"2026-01-01T00:00:00Z"
    files[f"{SESSION}/data"] = b"d" * 10
    expected = {
        "all": {orphan},
        "untagged": {orphan, old, *old_parts},
        "manifests_untagged": [f"library/web@{old}"],
        # 2.8 marks one level of the index: with -m it would delete the child and sweep its blobs.
        "gc_2_8_breaks": {("gc_deletes_kept_manifest", kid)} | {("gc_sweeps_kept_blob", d) for d in kid_parts},
        "by_repository_untagged": {"library/web": sum(len(files[_blob_key(d)]) for d in (old, *old_parts)), "tools": 0},
    }
    return files, expected


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

    def test_read_many_answers_every_key_once(self, store):
        keys = [f"{SESSION}/startedat", BLOB, f"{SESSION}/nope", "docker/../etc/passwd", f"{SESSION}/data"]
        got = {}
        for key, data, err in store.read_many(keys, 4):
            assert key not in got
            got[key] = (data, err)
        assert set(got) == set(keys)
        assert got[f"{SESSION}/startedat"] == (b"2026", None)
        assert got[BLOB] == (b"blob", None)
        assert got[f"{SESSION}/data"] == (b"dddd", None)
        assert got[f"{SESSION}/nope"] == (None, None)
        data, err = got["docker/../etc/passwd"]
        assert data is None and isinstance(err, StoreError)
        assert [k for k, *_ in store.read_many([], 4)] == []

    def test_audit_finds_the_same_on_every_store(self, make_store):
        from debris import audit

        files, expected = registry_tree()
        store = make_store(files)
        try:
            everything = audit.run(store)
            untagged = audit.run(store, delete_untagged=True)
        finally:
            store.close()
        assert everything.problems == []
        assert {(p.kind, p.digest) for p in untagged.problems} == expected["gc_2_8_breaks"]
        assert set(everything.blobs_eligible) == expected["all"]
        assert everything.manifests_eligible == []
        assert set(untagged.blobs_eligible) == expected["untagged"]
        assert untagged.manifests_eligible == expected["manifests_untagged"]
        assert untagged.by_repository == expected["by_repository_untagged"]
        assert everything.blobs_marked == len([k for k in files if k.endswith("/data") and "/blobs/" in k]) - 1
        assert everything.debris["sessions"] == 1
