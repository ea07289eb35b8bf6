"""`debris audit`: a read-only mark and sweep, judged against the registry's own garbage-collect.

Real-registry tests push images (shared layers, an OCI index, a Docker manifest list, a nested
index, untagged revisions by push-by-digest and by re-tagging, a manifest deleted by digest) and
compare debris's eligible sets with ``garbage-collect --dry-run [--delete-untagged]``. The one
deliberate difference: 2.8 marks one level of a kept index and sweeps its untagged children's
layers; debris keeps a kept index's children and all they reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from audit_scenario import AUDIT_JSON_KEYS, check_delete_untagged, push_scenario
from typer.testing import CliRunner

from debris import audit
from debris.cli import app
from debris.stores.local import LocalStore

from registry import (
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    RegistryClient,
    RegistryServer,
    garbage_collect_dry_run,
    make_layer,
    requires_registry_tools,
    sha256_digest,
)
from treebuilder import make_tree, snapshot


def _run(root, delete_untagged=False) -> audit.AuditResult:
    st = LocalStore(str(root))
    try:
        return audit.run(st, delete_untagged)
    finally:
        st.close()


def _digests(manifests: list[str]) -> set[str]:
    return {m.split("@", 1)[1] for m in manifests}


# --------------------------------------------------------------------------------------------
# Real registry
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-store")
    work = tmp_path_factory.mktemp("audit-registry")
    with RegistryServer(rootdirectory=root, workdir=work) as reg:
        pushed = push_scenario(RegistryClient(reg.url))
        gc = garbage_collect_dry_run(reg.config_path)
        gc_m = garbage_collect_dry_run(reg.config_path, delete_untagged=True)
        yield root, pushed, gc, gc_m


@pytest.mark.registry
@requires_registry_tools
def test_eligible_sets_equal_garbage_collect(real):
    root, _pushed, gc, _ = real
    before = snapshot(root)
    r = _run(root)
    assert set(r.blobs_eligible) == gc.eligible_blobs
    assert r.manifests_eligible == [] and gc.eligible_manifests == set()
    assert r.blobs_eligible  # the deleted manifest's blobs (and the re-tag's) are there to find
    assert r.problems == []
    # bytes are the data files' apparent sizes
    v2 = root / "docker/registry/v2/blobs"
    assert r.bytes_reclaimable == sum(
        os.path.getsize(v2 / "sha256" / d[7:9] / d[7:] / "data") for d in r.blobs_eligible
    )
    # blobs_marked: blobs in the store that stay (GC also counts digests it never finds, e.g. none here)
    assert r.blobs_marked == len(gc.marked & _blob_store(root))
    assert snapshot(root) == before  # read-only


def _blob_store(root) -> set[str]:
    base = root / "docker/registry/v2/blobs/sha256"
    return {f"sha256:{hx}" for prefix in os.listdir(base) for hx in os.listdir(base / prefix)}


@pytest.mark.registry
@requires_registry_tools
def test_delete_untagged_never_more_aggressive_and_differs_only_by_kept_index_children(real):
    root, pushed, _, gc_m = real
    children = {child: _blob(root, child) for child in pushed.kept_index_children}
    check_delete_untagged(pushed, gc_m, _run(root, delete_untagged=True).to_json(), children)


def _blob(root, digest: str) -> bytes:
    hx = digest.split(":", 1)[1]
    return (root / "docker/registry/v2/blobs/sha256" / hx[:2] / hx / "data").read_bytes()


@pytest.mark.registry
@requires_registry_tools
def test_kept_index_children_are_kept_where_gc_2_8_sweeps_them(real):
    """The deliberate difference, on its own: 2.8 marks a kept index's child manifest blob but
    treats the untagged child revision as eligible and never marks its layers."""
    root, pushed, _, gc_m = real
    r = _run(root, delete_untagged=True)
    mine_m = _digests(r.manifests_eligible)
    for child in pushed.kept_index_children:
        assert child in gc_m.eligible_manifests  # 2.8 would delete the child revision
        assert child not in mine_m
        refs = audit.parse_manifest(child, _blob(root, child))
        assert not (refs.blobs | refs.manifests) & set(r.blobs_eligible)
    # at least one child's layer really is swept by 2.8 (data loss debris refuses to predict as safe)
    kid_layers = set()
    for child in pushed.kept_index_children:
        kid_layers |= audit.parse_manifest(child, _blob(root, child)).blobs
    assert kid_layers & gc_m.eligible_blobs


@pytest.mark.registry
@requires_registry_tools
def test_cli_json_keys_and_exit_code(real):
    root, _, gc, _ = real
    res = CliRunner().invoke(app, ["audit", str(root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == AUDIT_JSON_KEYS
    assert set(data["blobs_eligible"]) == gc.eligible_blobs
    # The deleted manifest's repository frees its own layer; shared layers are nobody's alone.
    assert data["by_repository"]["gone"] > 0
    assert sum(data["by_repository"].values()) <= data["bytes_reclaimable"]
    human = CliRunner().invoke(app, ["audit", str(root), "--delete-untagged"])
    assert human.exit_code == 0 and "manifests eligible" in human.stdout


# --------------------------------------------------------------------------------------------
# Generated trees: what garbage-collect cannot see
# --------------------------------------------------------------------------------------------


def _image(tree, repo, tag, layers: list[bytes], *, layer_links=True, tag_it=True) -> tuple[str, list[str]]:
    """A real schema2 manifest written by hand: (manifest digest, [config, *layers])."""
    blobs = [tree.blob(json.dumps({"rootfs": {"diff_ids": []}, "repo": repo, "tag": tag}).encode())]
    blobs += [tree.blob(b) for b in layers]
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": "x", "size": 1, "digest": blobs[0]},
            "layers": [{"mediaType": "x", "size": 1, "digest": d} for d in blobs[1:]],
        }
    ).encode()
    m = tree.blob(body)
    if layer_links:
        for d in blobs:
            tree.link(repo, "layer", d)
    tree.link(repo, "revision", m)
    if tag_it:
        tree.link(repo, "tag", m, tag)
    return m, blobs


def test_generated_tree_problems_gc_cannot_see(tmp_path):
    tree = make_tree(tmp_path)
    _ok, ok_blobs = _image(tree, "ok", "v1", [b"ok layer"])
    orphan = tree.blob(b"x" * 777)  # uploaded to "ok", never referenced
    tree.link("ok", "layer", orphan)
    nobody = tree.blob(b"y" * 100)  # in no repository at all
    missing = "sha256:" + hashlib.sha256(b"never stored").hexdigest()
    tree.link("ok", "revision", missing)  # a revision whose blob is gone
    tree.link("ok", "tag", missing, "broken")  # a tag pointing at nothing
    # A corrupt manifest: stored at its real digest but not JSON. Its repository's layers are held back.
    bad = tree.image("bad", "latest", layers=2)  # [layer, layer, manifest-that-is-not-JSON]
    # _manifests without _layers: 2.8's catalog never visits it, GC would sweep its blobs.
    hidden, hidden_blobs = _image(tree, "hidden", "v1", [b"hidden layer"], layer_links=False)
    tree.session("ok", age=3 * 86400)  # debris of another kind, reported in totals
    before = snapshot(tmp_path)

    for delete_untagged in (False, True):
        r = _run(tmp_path, delete_untagged)
        kinds = {(p.kind, p.repository, p.digest) for p in r.problems}
        assert ("corrupt_manifest", "bad", bad[-1]) in kinds
        assert ("revision_blob_missing", "ok", missing) in kinds
        # Tags are read only for --delete-untagged: without it no tag changes what GC keeps.
        assert (("link_to_missing_blob", "ok", missing) in kinds) is delete_untagged
        assert ("repository_without_layers", "hidden", None) in kinds
        assert any(p.kind == "held_back" for p in r.problems)
        assert set(r.blobs_eligible) == {orphan, nobody}
        assert set(r.held_back) == set(bad[:2])  # the corrupt repository's unreferenced layers
        assert not {*hidden_blobs, hidden, *ok_blobs} & set(r.blobs_eligible)
        assert r.manifests_eligible == []
        assert r.bytes_reclaimable == 777 + 100
        assert r.by_repository["ok"] == 777 and r.by_repository["bad"] == 0
        assert r.debris["sessions"] == 1
    res = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert res.exit_code == 0 and "repository_without_layers" in res.stdout
    assert snapshot(tmp_path) == before


def test_generated_untagged_and_nested_index(tmp_path):
    tree = make_tree(tmp_path)
    kid, _kid_blobs = _image(tree, "r", "unused", [b"kid layer"], tag_it=False)

    def index(children):
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_INDEX,
                "manifests": [{"mediaType": "x", "size": 1, "digest": c} for c in children],
            }
        ).encode()
        d = tree.blob(body)
        tree.link("r", "revision", d)
        return d

    inner = index([kid])
    outer = index([inner])
    tree.link("r", "tag", outer, "outer")
    old, old_blobs = _image(tree, "r", "old", [b"old layer"], tag_it=False)
    r = _run(tmp_path, delete_untagged=True)
    assert r.manifests_eligible == [f"r@{old}"]
    assert set(r.blobs_eligible) == {old, *old_blobs}
    assert r.by_repository == {"r": sum(len(_blob(tmp_path, d)) for d in [old, *old_blobs])}
    assert _run(tmp_path).blobs_eligible == []


def test_unreadable_store_exits_1(tmp_path):
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "nope")])
    assert res.exit_code == 1


def test_parse_manifest_kinds():
    layer = sha256_digest(b"l")
    cfg = sha256_digest(b"c")
    subj = sha256_digest(b"s")
    s1 = json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": layer}, {"blobSum": layer}]}).encode()
    assert audit.parse_manifest(sha256_digest(s1), s1) == audit.References(frozenset({layer}), frozenset())
    oci = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"digest": cfg},
            "layers": [{"digest": layer}],
            "subject": {"digest": subj},
        }
    ).encode()
    assert audit.parse_manifest(sha256_digest(oci), oci) == audit.References(
        frozenset({cfg, layer}), frozenset({subj}), subject=frozenset({subj})
    )
    with pytest.raises(audit.ManifestError):
        audit.parse_manifest(sha256_digest(b"other"), oci)  # wrong digest
    bad = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:nothex"}}).encode()
    with pytest.raises(audit.ManifestError):
        audit.parse_manifest(sha256_digest(bad), bad)


def test_pure_audit_holds_everything_back_after_a_walk_error():
    layer = sha256_digest(b"layer")
    body = json.dumps({"schemaVersion": 2, "config": {"digest": layer}, "layers": []}).encode()
    m = sha256_digest(body)
    orphan = sha256_digest(b"orphan")
    links = audit.RepoLinks(has_layers=True, layers={layer}, revisions={m: m}, tags={})
    inv = audit.Inventory(
        blobs={layer: 5, m: len(body), orphan: 6},
        repositories={"r": links},
        manifests={m: audit.examine_manifest(m, body)},
    )
    r = audit.audit(inv, delete_untagged=True)
    assert set(r.blobs_eligible) == {layer, m, orphan} and r.manifests_eligible == [f"r@{m}"]
    assert r.by_repository == {"r": 5 + len(body)}  # the orphan is nobody's
    inv.errors.append("docker/registry/v2/repositories/r/_manifests: Permission denied")
    r = audit.audit(inv, delete_untagged=True)
    assert r.blobs_eligible == [] and r.manifests_eligible == [] and r.bytes_reclaimable == 0
    assert {p.kind for p in r.problems} == {"incomplete", "held_back"}


@pytest.mark.registry
@requires_registry_tools
def test_generated_store_matches_garbage_collect_exactly(tmp_path):
    """A gen_store tree (seeded, small): no index children to differ on, so both modes match exactly."""
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path / "store"
    gen = Path(__file__).resolve().parent.parent / "scripts" / "gen_store.py"
    args = ["--repos", "40", "--blobs", "600", "--sessions", "30", "--seed", "3"]
    subprocess.run([sys.executable, str(gen), *args, str(root)], check=True, capture_output=True)
    config = tmp_path / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": "0.1",
                "log": {"level": "error"},
                "storage": {"delete": {"enabled": True}, "filesystem": {"rootdirectory": str(root)}},
                "http": {"addr": "127.0.0.1:0"},
            }
        )
    )
    for delete_untagged in (False, True):
        gc = garbage_collect_dry_run(config, delete_untagged=delete_untagged)
        r = _run(root, delete_untagged)
        assert set(r.blobs_eligible) == gc.eligible_blobs and gc.eligible_blobs
        assert _digests(r.manifests_eligible) == gc.eligible_manifests
        assert r.problems == []
        assert r.debris["sessions"] == 30


def test_links_that_do_not_name_their_own_digest_make_the_repository_careful(tmp_path):
    """A revision link naming another manifest: the registry serves that one, so it and all it
    references stay, and nothing in the repository is eligible. A tag link that is not a digest:
    which revision it keeps is unknown, so with -m no revision of it is eligible."""
    tree = make_tree(tmp_path)
    served, served_blobs = _image(tree, "swapped", "v1", [b"served layer"], tag_it=False)
    # The revision directory of `served` is removed; another digest's directory now names it.
    hx = served.split(":", 1)[1]
    rev = tmp_path / "docker/registry/v2/repositories/swapped/_manifests/revisions/sha256"
    (rev / hx / "link").unlink()
    (rev / hx).rmdir()
    decoy = tree.blob(b"a blob whose revision link names another manifest")
    tree.link("swapped", "revision", decoy).write_text(served)
    tree.link("swapped", "tag", decoy, "v1")
    loose, loose_blobs = _image(tree, "garbled", "old", [b"untagged layer"], tag_it=False)
    _kept, _ = _image(tree, "garbled", "new", [b"tagged layer"])
    (tmp_path / "docker/registry/v2/repositories/garbled/_manifests/tags/new/current/link").write_bytes(b"\xff junk")
    for delete_untagged in (False, True):
        r = _run(tmp_path, delete_untagged)
        found = {(p.kind, p.repository, p.digest) for p in r.problems}
        assert ("bad_link", "swapped", decoy) in found
        # Both ends of the link were read: the decoy is judged by its bytes, not left unread.
        assert [p.detail for p in r.problems if p.kind == "corrupt_manifest" and p.digest == decoy] == [
            "not JSON: Expecting value: line 1 column 1 (char 0)"
        ]
        assert not {served, *served_blobs, decoy} & set(r.blobs_eligible)
        assert r.manifests_eligible == []
        assert not {loose, *loose_blobs} & set(r.blobs_eligible)
        assert (any(p.kind == "bad_link" and p.repository == "garbled" for p in r.problems)) is delete_untagged
    # Without the garbled tag, -m would take the untagged revision: the careful handling is what keeps it.
    (tmp_path / "docker/registry/v2/repositories/garbled/_manifests/tags/new/current/link").write_text(_kept)
    assert f"garbled@{loose}" in _run(tmp_path, delete_untagged=True).manifests_eligible


def test_a_symlinked_blob_is_held_back_and_never_followed(tmp_path):
    tree = make_tree(tmp_path)
    m, blobs = _image(tree, "r", "v1", [b"layer"])
    outside = tmp_path / "outside"
    outside.write_bytes(b"not in the store")
    data = tmp_path / "docker/registry/v2/blobs/sha256" / m[7:9] / m[7:] / "data"
    content = data.read_bytes()
    data.unlink()
    (tmp_path / "copy").write_bytes(content)
    data.symlink_to(tmp_path / "copy")  # GC would follow it and read a valid manifest
    orphan = tree.blob(b"orphan")
    odata = tmp_path / "docker/registry/v2/blobs/sha256" / orphan[7:9] / orphan[7:] / "data"
    odata.unlink()
    odata.symlink_to(outside)
    r = _run(tmp_path)
    found = {(p.kind, p.digest) for p in r.problems}
    assert ("irregular_blob", m) in found and ("irregular_blob", orphan) in found
    assert ("corrupt_manifest", m) in found  # never read through the symlink
    assert r.blobs_eligible == []
    assert set(r.held_back) >= {orphan}
    assert not set(blobs) & set(r.blobs_eligible)


def test_a_symlinked_revision_link_keeps_its_repository(tmp_path):
    """GC's driver follows a symlinked ``link`` and marks the manifest; debris never follows it, so it
    must not let that manifest's blobs go either."""
    tree = make_tree(tmp_path)
    m, blobs = _image(tree, "r", "v1", [b"only this image has it"], tag_it=False)
    link = tmp_path / "docker/registry/v2/repositories/r/_manifests/revisions/sha256" / m[7:] / "link"
    (tmp_path / "elsewhere").write_text(m)
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere")
    for delete_untagged in (False, True):
        r = _run(tmp_path, delete_untagged)
        assert ("bad_link", "r", m) in {(p.kind, p.repository, p.digest) for p in r.problems}
        assert not {m, *blobs} & set(r.blobs_eligible)
        assert r.manifests_eligible == []


def test_paths_gc_would_read_and_debris_cannot_hold_everything_back(tmp_path):
    """GC 2.8 follows symlinks and walks any directory name under repositories/; debris neither
    follows nor trusts them, so what they might reference is unknown: nothing is eligible."""
    tree = make_tree(tmp_path)
    _m, _blobs = _image(tree, "ok", "v1", [b"layer"])
    orphan = tree.blob(b"referenced by nothing debris can see")
    repos = tmp_path / "docker/registry/v2/repositories"
    assert set(_run(tmp_path).blobs_eligible) == {orphan}
    # Upload sessions and layer links are never read by GC: odd names there change nothing.
    (repos / "ok/_uploads/not-a-uuid").mkdir(parents=True)
    (repos / "ok/_uploads/not-a-uuid/link").write_text(orphan)
    assert set(_run(tmp_path).blobs_eligible) == {orphan}
    # A repository name distribution would refuse, holding a revision: GC's catalog still visits it.
    bad = repos / "-dash/_manifests/revisions/sha256" / orphan[7:]
    bad.mkdir(parents=True)
    (bad / "link").write_text(orphan)
    r = _run(tmp_path)
    assert r.blobs_eligible == []
    assert [p.detail.split(":")[0] for p in r.problems if p.kind == "opaque_path"] == [
        f"docker/registry/v2/repositories/-dash/_manifests/revisions/sha256/{orphan[7:]}/link"
    ]
    shutil.rmtree(repos / "-dash")
    # A repository whose _manifests is a symlink: GC's driver follows it.
    (repos / "linked/_layers").mkdir(parents=True)
    (repos / "linked/_manifests").symlink_to(repos / "ok/_manifests")
    r = _run(tmp_path, delete_untagged=True)
    assert r.blobs_eligible == [] and r.manifests_eligible == []
    assert {p.detail.split(":")[0] for p in r.problems if p.kind == "opaque_path"} == {
        "docker/registry/v2/repositories/linked/_manifests"
    }


@pytest.mark.registry
@requires_registry_tools
def test_a_tagged_referrer_keeps_its_subject_where_gc_2_8_sweeps_it(tmp_path):
    """An OCI manifest with a ``subject`` (a signature pushed with a tag) naming an untagged image:
    2.8 does not know ``subject``, so with -m it deletes the image and sweeps its blobs. debris keeps
    them and reports exactly what 2.8 would take."""
    with RegistryServer(rootdirectory=tmp_path / "store", workdir=tmp_path / "work") as reg:
        c = RegistryClient(reg.url)
        image = c.push_image("r", None, [make_layer("subject", b"subject layer")], kind="oci")
        size = len(c.get_manifest("r", image).body)
        empty = c.push_blob_monolithic("r", b"{}")
        signature = c.push_blob_monolithic("r", b"signature payload")
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty},
                "layers": [{"mediaType": "application/octet-stream", "size": 17, "digest": signature}],
                "subject": {"mediaType": MT_OCI_MANIFEST, "size": size, "digest": image},
            }
        ).encode()
        c.put_manifest("r", "sha256-signature", body, MT_OCI_MANIFEST)
        gc_m = garbage_collect_dry_run(reg.config_path, delete_untagged=True)
    r = _run(tmp_path / "store", delete_untagged=True)
    assert gc_m.eligible_manifests == {image} and r.manifests_eligible == []
    assert gc_m.eligible_blobs and r.blobs_eligible == []
    found = {(p.kind, p.digest) for p in r.problems}
    assert found == {("gc_deletes_kept_manifest", image)} | {("gc_sweeps_kept_blob", d) for d in gc_m.eligible_blobs}
