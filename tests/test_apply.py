"""The delete gate: untrusted plans, re-verification, and what must never be deleted."""

from __future__ import annotations

import copy
import json
import os
from datetime import timedelta

import pytest

from debris import inventory
from debris.apply import PlanRefused, apply_plan
from debris.plan import FLAG_STARTEDAT_MISSING, Plan, make_plan, needs_startedat
from debris.policy import Policy, PolicyError, parse_include
from debris.stores.local import LocalStore

from treebuilder import V2, age_tree, make_tree, snapshot

DAY = 86400


def plan_for(store, policy=None, now=None):
    from datetime import UTC, datetime

    policy = policy or Policy()
    now = now or datetime.now(UTC)
    obs = inventory.observe(
        store,
        want_temp_files="temp_file" in policy.include,
        probe_repos=policy.probe_repos,
        worth_detail=needs_startedat(policy, now),
    )
    return make_plan(obs, policy, now, store.url, store.identity())


def roundtrip(plan: Plan) -> Plan:
    """What apply sees: the plan after a trip through its JSON file."""
    return Plan.from_json(json.loads(json.dumps(plan.to_json())))


@pytest.fixture
def tree(tmp_path):
    t = make_tree(tmp_path / "root")
    t.image("library/alpine")
    t.image("team/app", "v1")
    t.stale_id, t.stale_dir = t.session("library/alpine", age=3 * DAY)
    t.stale2_id, _ = t.session("team/app", age=2 * DAY, data=b"y" * 5000)
    t.fresh_id, _ = t.session("library/alpine", age=60)
    return t


@pytest.fixture
def store(tree):
    s = LocalStore(str(tree.root))
    yield s
    s.close()


def test_plan_holds_only_stale_sessions(tree, store):
    plan = plan_for(store)
    assert sorted(i.upload_id for i in plan.items) == sorted([tree.stale_id, tree.stale2_id])
    assert {i.kind.value for i in plan.items} == {"upload_session"}
    assert plan.active_sessions == 1
    item = next(i for i in plan.items if i.upload_id == tree.stale2_id)
    assert item.bytes == 5000 + len(b"state") + 20
    assert item.paths[0].endswith("/startedat") and item.paths[-1].endswith("/data")


def test_apply_without_confirm_deletes_nothing(tree, store):
    before = snapshot(tree.root)
    result = apply_plan(store, roundtrip(plan_for(store)), confirm=False)
    assert len(result.with_status("would_delete")) == 2
    assert snapshot(tree.root) == before


def test_apply_confirm_removes_sessions_and_only_them(tree, store):
    before = snapshot(tree.root)
    result = apply_plan(store, roundtrip(plan_for(store)), confirm=True)
    assert len(result.with_status("deleted")) == 2 and not result.failed
    after = snapshot(tree.root)
    removed = set(before) - set(after)
    assert removed and all(f"/_uploads/{tree.stale_id}" in p or f"/_uploads/{tree.stale2_id}" in p for p in removed)
    assert not (tree.stale_dir).exists()
    assert (tree.stale_dir.parent).is_dir()  # _uploads itself stays
    assert {p: v for p, v in after.items() if "_uploads" not in p} == {
        p: v for p, v in before.items() if "_uploads" not in p
    }
    assert result.bytes_freed == sum(i.bytes for i in plan_for(LocalStore(str(tree.root))).items) + 1000 + 5000 + 2 * 25


def test_touched_session_is_skipped(tree, store):
    plan = roundtrip(plan_for(store))
    with open(tree.stale_dir / "data", "ab") as f:
        f.write(b"more")  # a client resumed the upload between plan and apply
    result = apply_plan(store, plan, confirm=True)
    skipped = result.with_status("skipped")
    assert [o.item.upload_id for o in skipped] == [tree.stale_id]
    assert "changed since plan" in skipped[0].reason
    assert (tree.stale_dir / "data").exists()


def test_new_file_in_session_is_skipped(tree, store):
    plan = roundtrip(plan_for(store))
    (tree.stale_dir / "hashstates" / "sha256" / "9000").write_bytes(b"s")
    age_tree(tree.stale_dir, 3 * DAY)  # even an old-looking new file means the session is not what was planned
    result = apply_plan(store, plan, confirm=True)
    assert [o.reason for o in result.with_status("skipped")] == [
        f"changed since plan: new file {V2}/repositories/library/alpine/_uploads/{tree.stale_id}/hashstates/sha256/9000"
    ]


def test_startedat_rewritten_to_recent_makes_it_not_stale(tree, store):
    plan = roundtrip(plan_for(store))
    st = os.stat(tree.stale_dir / "startedat")
    (tree.stale_dir / "startedat").write_text("2099-01-01T00:00:00Z")  # same size; content says fresh
    os.utime(tree.stale_dir / "startedat", ns=(st.st_atime_ns, st.st_mtime_ns))
    result = apply_plan(store, plan, confirm=True)
    assert [o.item.upload_id for o in result.with_status("skipped")] == [tree.stale_id]
    assert "no longer deletable" in result.with_status("skipped")[0].reason


def test_directory_swapped_for_symlink_is_not_followed(tree, store, tmp_path):
    plan = roundtrip(plan_for(store))
    parked = tmp_path / "parked"
    os.rename(tree.stale_dir, parked)
    os.symlink(parked, tree.stale_dir)
    uploads = tree.stale_dir.parent.parent / "_uploads"
    before = snapshot(parked)
    result = apply_plan(store, plan, confirm=True)
    assert snapshot(parked) == before
    assert tree.stale_dir.is_symlink()
    assert [o.item.upload_id for o in result.with_status("skipped")] == [tree.stale_id]
    assert result.failed  # the symlink is reported loudly as a read error
    assert uploads.is_dir()


def test_uploads_dir_swapped_for_symlink_to_blobs_is_not_followed(tree, store, tmp_path):
    """A symlinked parent leading onto registry data: nothing there may be touched."""
    plan = roundtrip(plan_for(store))
    uploads = tree.stale_dir.parent
    fake = tmp_path / "fake_uploads"
    os.rename(uploads, fake)
    os.symlink(fake, uploads)
    before = snapshot(tree.root)
    result = apply_plan(store, plan, confirm=True)
    assert snapshot(fake) and (fake / tree.stale_id / "data").exists()
    assert {k: v for k, v in snapshot(tree.root).items() if "/_uploads" not in k} == {
        k: v for k, v in before.items() if "/_uploads" not in k
    }
    assert any("library/alpine" in (o.item.repository or "") for o in result.with_status("skipped"))


# -- untrusted plan files --------------------------------------------------------------------


def _tamper(plan: Plan, fn) -> Plan:
    data = copy.deepcopy(plan.to_json())
    fn(data)
    return Plan.from_json(data)


def _retarget(data, path):
    item = data["items"][0]
    item["files"][0]["path"] = path
    item["paths"][0] = path


@pytest.mark.parametrize(
    "mutation",
    [
        lambda d, t: _retarget(d, "../outside"),
        lambda d, t: _retarget(d, "/etc/passwd"),
        lambda d, t: _retarget(d, f"{V2}/repositories/library/alpine/_uploads/{t.stale_id}/../../_layers/x"),
        lambda d, t: _retarget(d, t.blob_key),
        lambda d, t: _retarget(d, t.link_key),
        lambda d, t: _retarget(d, t.tag_key),
        lambda d, t: _retarget(d, f"{V2}/repositories/team/app/_uploads/{t.stale2_id}/data"),  # another session
        lambda d, t: d["items"][0].update({"class": "blob"}),
        lambda d, t: d["items"][0].update({"class": "unknown"}),
        lambda d, t: d["items"][0].update({"repository": "team/app"}),
        lambda d, t: d["items"][0].update({"upload_id": "not-a-uuid"}),
        lambda d, t: d["items"].append(copy.deepcopy(d["items"][0])),
        lambda d, t: d["store"].update({"url": "file:///var/lib/registry"}),
        lambda d, t: d["store"]["identity"].update({"ino": 1}),
        lambda d, t: d["policy"].update({"older_than": "1s", "force": True}),
        lambda d, t: d["policy"].update({"include": ["temp_file"]}),
    ],
    ids=[
        "dotdot",
        "absolute",
        "dotdot-inside",
        "blob",
        "layer-link",
        "tag",
        "other-session",
        "class-blob",
        "class-unknown",
        "other-repo",
        "bad-uuid",
        "duplicate",
        "other-store-url",
        "other-store-identity",
        "forced-policy",
        "class-not-included",
    ],
)
def test_tampered_plan_is_refused_and_deletes_nothing(tree, store, mutation):
    tree.blob_key = next(k for k in snapshot(tree.root) if k.startswith(f"{V2}/blobs/") and k.endswith("/data"))
    tree.link_key = next(k for k in snapshot(tree.root) if "/_layers/" in k and k.endswith("/link"))
    tree.tag_key = next(k for k in snapshot(tree.root) if "/tags/" in k and k.endswith("/link"))
    plan = plan_for(store)
    plan.items.sort(key=lambda i: i.repository)  # items[0] is the library/alpine session
    bad = _tamper(plan, lambda d: mutation(d, tree))
    before = snapshot(tree.root)
    with pytest.raises(PlanRefused):
        apply_plan(store, bad, confirm=True)
    assert snapshot(tree.root) == before


def test_plan_for_another_store_is_refused(tree, store, tmp_path):
    import shutil

    shutil.copytree(tree.root, tmp_path / "copy", symlinks=True)
    other = LocalStore(str(tmp_path / "copy"))
    before = snapshot(tmp_path / "copy")
    with pytest.raises(PlanRefused, match="made for"):
        apply_plan(other, roundtrip(plan_for(store)), confirm=True)
    assert snapshot(tmp_path / "copy") == before


def test_forced_plan_needs_force_at_apply(tree, store):
    plan = roundtrip(plan_for(store, Policy(older_than=timedelta(minutes=5), force=True)))
    with pytest.raises(PlanRefused, match="--force"):
        apply_plan(store, plan, confirm=True)
    assert apply_plan(store, plan, confirm=True, force=True).with_status("deleted")


# -- policy --------------------------------------------------------------------------------------


def test_probe_repo_sessions_use_the_probe_age(tree, store):
    pid, _ = tree.session("probe/writes", age=20 * 60)
    tree.session("probe/writes", age=60)
    plan = plan_for(store, Policy(probe_repos=("probe/writes",)))
    probe_items = [i for i in plan.items if i.kind.value == "probe_repo"]
    assert [i.upload_id for i in probe_items] == [pid]
    result = apply_plan(store, roundtrip(plan), confirm=True)
    assert len(result.with_status("deleted")) == 3


def test_probe_repo_with_images_is_refused(tree, store):
    tree.session("library/alpine", age=20 * 60)
    with pytest.raises(PolicyError, match=r"library/alpine has .*tag:latest"):
        plan_for(store, Policy(probe_repos=("library/alpine",)))
    forced = plan_for(store, Policy(probe_repos=("library/alpine",), force=True))
    assert any(i.kind.value == "probe_repo" for i in forced.items)


def test_probe_repo_that_gains_a_tag_after_planning_is_skipped(tree, store):
    tree.session("probe/writes", age=20 * 60)
    plan = roundtrip(plan_for(store, Policy(probe_repos=("probe/writes",))))
    tree.image("probe/writes")
    result = apply_plan(store, plan, confirm=True)
    assert any(
        "probe repository now holds" in o.reason and "tag:latest" in o.reason for o in result.with_status("skipped")
    )


def test_session_without_startedat_is_planned_by_mtime_and_flagged(tree, store):
    uid, d = tree.session("library/alpine", age=5 * DAY)
    (d / "startedat").unlink()
    age_tree(d, 5 * DAY)
    item = next(i for i in plan_for(store).items if i.upload_id == uid)
    assert FLAG_STARTEDAT_MISSING in item.flags


def test_unparseable_startedat_falls_back_to_mtimes(tree, store):
    uid, _ = tree.session("library/alpine", age=5 * DAY, startedat=b"yesterday-ish")
    item = next(i for i in plan_for(store).items if i.upload_id == uid)
    assert "startedat_unparseable" in item.flags


def test_session_with_unknown_content_is_held_back(tree, store):
    uid, d = tree.session("library/alpine", age=5 * DAY)
    (d / "notes.txt").write_text("someone's file")
    age_tree(d, 5 * DAY)
    plan = plan_for(store)
    assert uid not in {i.upload_id for i in plan.items}
    assert [h.upload_id for h in plan.held_back] == [uid]
    assert "notes.txt" in plan.held_back[0].reason


def test_session_with_symlink_onto_a_blob_is_held_back(tree, store):
    uid, d = tree.session("library/alpine", age=5 * DAY)
    blob = next(p for p in (tree.v2 / "blobs").rglob("data"))
    (d / "data").unlink()
    os.symlink(blob, d / "data")
    age_tree(d, 5 * DAY)
    plan = plan_for(store)
    assert uid in {h.upload_id for h in plan.held_back}
    apply_plan(store, roundtrip(plan), confirm=True)
    assert blob.exists() and (d / "data").is_symlink()


def test_temp_files_are_opt_in_and_wait_for_their_grace_period(tree, store):
    blob_dir = next(p for p in (tree.v2 / "blobs").rglob("data")).parent
    old = blob_dir / "data.0b1c2d3e-1111-4222-8333-444455556666.tmp"
    new = blob_dir / "data.0b1c2d3e-1111-4222-8333-444455557777.tmp"
    old.write_bytes(b"partial")
    new.write_bytes(b"partial")
    age_tree(old, 2 * DAY)
    os.utime(blob_dir, None)
    assert not [i for i in plan_for(store).items if i.kind.value == "temp_file"]
    plan = plan_for(store, Policy(include=parse_include("temp_file")))
    assert [i.paths[0].rsplit("/", 1)[-1] for i in plan.items] == [old.name]
    apply_plan(store, roundtrip(plan), confirm=True)
    assert not old.exists() and new.exists() and (blob_dir / "data").exists()


def test_plan_writes_nothing_to_the_store(tree, store):
    before = snapshot(tree.root)
    plan_for(store, Policy(include=parse_include("temp_file,upload_session")))
    inventory.scan(store, by_repository=True)
    assert snapshot(tree.root) == before
