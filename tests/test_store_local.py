"""Local filesystem store: the shared conformance suite plus what only a filesystem can do wrong."""

from __future__ import annotations

import os
import threading

import pytest

from debris.stores import StoreSpecError, open_store
from debris.stores.base import Changed, StoreError, WalkProblems
from debris.stores.local import LocalStore

from conformance import BLOB as FILES_BLOB
from conformance import FILES, SESSION, StoreConformance, _all


class TestLocalConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path):
        def make(files):
            for key, data in files.items():
                p = tmp_path / "root" / key
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            return LocalStore(str(tmp_path / "root"))

        return make


@pytest.fixture
def store(tmp_path):
    for key, data in FILES.items():
        p = tmp_path / "root" / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    s = LocalStore(str(tmp_path / "root"))
    yield s
    s.close()


def test_symlinks_are_reported_never_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside, tmp_path / "root" / SESSION / "hashstates" / "linkdir")
    os.symlink(outside / "secret", tmp_path / "root" / SESSION / "linkfile")
    files, asked = _all(store)
    assert not any("secret" in k for k in files)
    assert files[f"{SESSION}/linkfile"].regular is False
    assert files[f"{SESSION}/hashstates/linkdir"].regular is False
    assert f"{SESSION}/hashstates/linkdir" not in asked


def test_remove_through_a_parent_swapped_for_a_symlink_is_refused(store, tmp_path):
    key = f"{SESSION}/data"
    info = store.stat(key)
    session = tmp_path / "root" / SESSION
    moved = tmp_path / "elsewhere"
    os.rename(session, moved)
    os.symlink(moved, session)
    with pytest.raises(Changed):
        store.remove_file(key, info)
    assert (moved / "data").exists()


def test_remove_file_refuses_a_symlink_in_place_of_the_file(store, tmp_path):
    key = f"{SESSION}/data"
    info = store.stat(key)
    victim = tmp_path / "victim"
    victim.write_bytes(b"d" * 3000)
    path = tmp_path / "root" / key
    path.unlink()
    os.symlink(victim, path)
    with pytest.raises(Changed):
        store.remove_file(key, info)
    assert victim.exists() and path.is_symlink()


def test_remove_empty_dir_only_when_empty(store, tmp_path):
    assert store.remove_empty_dir(f"{SESSION}/hashstates") is False
    (tmp_path / "root" / SESSION / "hashstates" / "sha256" / "0").unlink()
    assert store.remove_empty_dir(f"{SESSION}/hashstates/sha256") is True
    assert store.remove_empty_dir(f"{SESSION}/hashstates/sha256") is False


def test_fifo_does_not_hang_a_read(store, tmp_path):
    os.mkfifo(tmp_path / "root" / SESSION / "startedat.fifo")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", _try_read(store, f"{SESSION}/startedat.fifo")))
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(result["r"], StoreError)


def _try_read(store, key):
    try:
        return store.read(key, 10)
    except StoreError as e:
        return e


def test_root_held_open_survives_a_rename_of_its_path(store, tmp_path):
    os.rename(tmp_path / "root", tmp_path / "moved")
    os.mkdir(tmp_path / "root")
    assert store.stat(f"{SESSION}/data") is not None


def test_directory_swapped_for_a_symlink_mid_walk_is_an_error_and_not_followed(store, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sha256").mkdir(parents=True)
    (outside / "sha256" / "0").write_bytes(b"not the store's")
    hashstates = tmp_path / "root" / SESSION / "hashstates"

    def descend(state, key, name):
        if name == "hashstates":  # swap it between listing its parent and opening it
            os.rename(hashstates, tmp_path / "parked")
            os.symlink(outside, hashstates)
        return name

    problems = WalkProblems()
    keys = [listing.file_key(f[0]) for listing in store.walk("", "", descend, problems) for f in listing.files]
    assert not any(k.endswith("hashstates/sha256/0") for k in keys)
    assert any("hashstates" in e for e in problems.errors)


def test_open_store_refuses_a_directory_without_the_layout(store, tmp_path):
    with pytest.raises(StoreError, match="did you mean"):
        open_store(str(tmp_path / "root" / "docker" / "registry"))
    with pytest.raises(StoreError, match="holds no docker/registry/v2"):
        open_store(str(tmp_path))
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "missing"))
    with pytest.raises(StoreSpecError):
        open_store("ftp://x")


def test_registry_config_names_the_store(store, tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"version: 0.1\nstorage:\n  delete:\n    enabled: true\n  filesystem:\n    rootdirectory: {tmp_path / 'root'}\n"
    )
    assert open_store(None, str(cfg)).url == store.url
    cfg.write_text("storage:\n  inmemory: {}\n")
    with pytest.raises(StoreError, match="not supported"):
        open_store(None, str(cfg))


def test_read_many_never_follows_a_symlink_or_opens_a_fifo(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_bytes(b"secret")
    blob_dir = tmp_path / "root" / os.path.dirname(os.path.dirname(FILES_BLOB))
    os.symlink(outside, blob_dir / ("ab" * 32))  # a blob directory that is a symlink
    os.symlink(outside / "data", tmp_path / "root" / SESSION / "linked")  # a file that is a symlink
    os.mkfifo(tmp_path / "root" / SESSION / "fifo")
    keys = [
        os.path.dirname(os.path.dirname(FILES_BLOB)) + "/" + "ab" * 32 + "/data",
        f"{SESSION}/linked",
        f"{SESSION}/fifo",
        FILES_BLOB,
    ]
    got = {key: (data, err) for key, data, err in store.read_many(keys, 100)}
    for key in keys[:3]:
        data, err = got[key]
        assert data is None and isinstance(err, Changed), key
    assert got[FILES_BLOB] == (b"blob-bytes", None)  # the cached directory still reads what is there
