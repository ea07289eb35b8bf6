"""Property: on random trees full of traps, plan + apply never delete anything outside the safe classes.

Trees mix valid registry paths with adversarial ones: a tag named _uploads, look-alike
repositories, non-UUID upload directories, non-UTF-8 names, '..'-ish names, temp-file
look-alikes, and symlinks that lead out of the store or onto blobs. Everything is aged so
that age never saves a path: only the grammar may.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_apply import plan_for
from test_layout import _REPO_COMPONENT, _UUID_RE, ORACLE_SESSION

from debris import layout
from debris.apply import apply_plan
from debris.plan import Plan
from debris.policy import Policy, PolicyError, parse_include
from debris.stores.local import LocalStore

from treebuilder import age_tree, snapshot

_REPO = rf"(?:[a-zA-Z0-9.:-]+|{_REPO_COMPONENT})(?:/{_REPO_COMPONENT})*"

V2 = ["docker", "registry", "v2"]
UID = str(uuid.UUID(int=0x3F2A8C4E1B2D4C5E9F607A8B9C0D1E2F))
HEX = "0123456789abcdef" * 4
REPO_NAMES = [
    ["alpine"],
    ["team", "app"],
    ["team"],
    ["probe"],
    ["Alpine"],
    ["al_pine_"],
    ["x\udcff"],
    ["localhost:5000", "a"],
]
UNDER_REPO = [
    ["_uploads", UID, "startedat"],
    ["_uploads", UID, "data"],
    ["_uploads", UID, "hashstates", "sha256", "0"],
    ["_uploads", UID, f"data.{UID}.tmp"],
    ["_uploads", UID, "junk"],
    ["_uploads", UID.upper(), "data"],
    ["_uploads", "not-a-uuid", "data"],
    ["_uploads", UID + "x", "startedat"],
    ["_uploads", "G" + UID[1:], "data"],
    ["_uploads", UID[:-1] + "g", "startedat"],
    ["_uploads", "data"],
    ["_manifests", "tags", "_uploads", "current", "link"],
    ["_manifests", "tags", "_uploads", "index", "sha256", HEX, "link"],
    ["_manifests", "revisions", "sha256", HEX, "link"],
    ["_manifests", "revisions", "sha256", HEX, f"link.{UID}.tmp"],
    ["_layers", "sha256", HEX, "link"],
    ["_layers", "sha256", HEX, "_uploads", UID, "data"],
    ["_uploads", UID, "hashstates", "sha256", "0\udcff"],
    ["_uploads", UID, "..data"],
]
OTHER = [
    [*V2, "blobs", "sha256", HEX[:2], HEX, "data"],
    [*V2, "blobs", "sha256", HEX[:2], HEX, f"data.{UID}.tmp"],
    [*V2, "blobs", "sha256", HEX[:2], HEX, "_uploads", UID, "data"],
    [*V2, "_uploads", UID, "data"],
    ["lost+found", "x"],
    ["docker", "registry", "v2", "repositories", "_uploads", UID, "data"],
]
KINDS = st.sampled_from(["file", "file", "file", "symlink_out", "symlink_blob", "symlink_dir_out", "fifo"])


@st.composite
def trees(draw):
    entries = []
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 4)):
            repo = draw(st.sampled_from(REPO_NAMES))
            rest = draw(st.sampled_from(UNDER_REPO))
            parts = [*V2, "repositories", *repo, *rest]
        else:
            parts = list(draw(st.sampled_from(OTHER)))
        entries.append((parts, draw(KINDS)))
    return entries


def _build(root: Path, outside: Path, entries) -> None:
    blob = root / "docker/registry/v2/blobs/sha256" / HEX[:2] / HEX / "data"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"precious blob")
    for parts, kind in entries:
        path = os.path.join(os.fsencode(root), *[os.fsencode(p) for p in parts])
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "file":
                with open(path, "wb") as f:
                    f.write(b"2020-01-01T00:00:00Z" if path.endswith(b"startedat") else b"bytes")
            elif kind == "symlink_out":
                os.symlink(outside / "secret", path)
            elif kind == "symlink_blob":
                os.symlink(blob, path)
            elif kind == "symlink_dir_out":
                os.symlink(outside, path)
            elif kind == "fifo":
                os.mkfifo(path)
        except (FileExistsError, NotADirectoryError):
            continue  # a file already stands where this entry needs a directory


# Independent of debris.layout: written from the distribution path specs.
_SESSION_DIR = re.compile(
    rf"docker/registry/v2/repositories/{_REPO}/_uploads/{_UUID_RE}(?:/hashstates(?:/(?:sha256|sha384|sha512))?)?"
)
_TEMP_NEXT_TO_DATA = re.compile(
    rf"docker/registry/v2/(?:blobs/sha256/[0-9a-f]{{2}}/[0-9a-f]{{64}}/data"
    rf"|repositories/{_REPO}/(?:_layers/sha256/[0-9a-f]{{64}}|_manifests/revisions/sha256/[0-9a-f]{{64}}"
    rf"|_manifests/tags/[A-Za-z0-9_][A-Za-z0-9_.-]*/(?:current|index/sha256/[0-9a-f]{{64}}))/link)\.{_UUID_RE}\.tmp"
)


def _removed_path_is_safe(rel: str) -> bool:
    return bool(ORACLE_SESSION.fullmatch(rel) or _SESSION_DIR.fullmatch(rel) or _TEMP_NEXT_TO_DATA.fullmatch(rel))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.booleans())
def test_random_trees_never_lose_a_non_safe_path(entries, with_temp_files):
    base = Path(tempfile.mkdtemp(prefix="debris-prop-"))
    try:
        root, outside = base / "root", base / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"outside the store")
        _build(root, outside, entries)
        (root / "docker/registry/v2/repositories").mkdir(parents=True, exist_ok=True)
        age_tree(root, 10 * 86400)
        before, outside_before = snapshot(root), snapshot(outside)

        store = LocalStore(str(root))
        include = "upload_session,temp_file" if with_temp_files else "upload_session"
        try:
            plan = plan_for(store, Policy(include=parse_include(include), probe_repos=("probe",)))
        except PolicyError as e:  # a probe repository holding tags is refused, never cleaned
            assert "probe has" in str(e)
            assert any(p.startswith(f"{'/'.join(V2)}/repositories/probe/_manifests/") for p in before)
            plan = plan_for(store, Policy(include=parse_include(include)))
        for item in plan.items:
            assert item.kind in layout.SAFE_KINDS
            assert all(_removed_path_is_safe(p) for p in item.paths), item.paths
        plan = Plan.from_json(plan.to_json())
        result = apply_plan(store, plan, confirm=True)
        store.close()

        after = snapshot(root)
        removed = set(before) - set(after)
        assert all(_removed_path_is_safe(p) for p in removed), sorted(removed)
        assert not set(after) - set(before), "apply created something"
        parents = {p.rsplit("/", 1)[0] for p in removed}
        changed = {p for p in after if after[p] != before[p]}
        assert changed <= parents, "only the directories that lost an entry may change (mtime)"
        assert snapshot(outside) == outside_before
        assert (root / "docker/registry/v2/blobs/sha256" / HEX[:2] / HEX / "data").read_bytes() == b"precious blob"
        assert len(result.with_status("deleted")) + len(result.with_status("failed")) <= len(plan.items)
    finally:
        shutil.rmtree(base)
