"""Walking in forked workers must see exactly what one process sees, and fail loudly."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest

from debris import inventory
from debris.plan import make_plan, needs_startedat
from debris.policy import Policy, parse_include
from debris.stores.local import LocalStore

from treebuilder import make_tree

DAY = 86400


@pytest.fixture
def tree(tmp_path):
    t = make_tree(tmp_path / "root")
    for n in range(12):
        t.image(f"team{n % 3}/app{n}")
        t.session(f"team{n % 3}/app{n}", age=3 * DAY)
        t.session(f"team{n % 3}/app{n}", age=60)
    (t.v2 / "repositories" / "Bad").mkdir()
    (t.v2 / "stray").write_text("x")
    blob_dir = next(p for p in (t.v2 / "blobs").rglob("data")).parent
    (blob_dir / "data.0b1c2d3e-1111-4222-8333-444455556666.tmp").write_bytes(b"t")
    return t


def _store(root, processes: int, monkeypatch) -> LocalStore:
    monkeypatch.setenv("DEBRIS_WALK_PROCESSES", str(processes))
    return LocalStore(str(root))


def _scan(store):
    r = inventory.scan(store, by_repository=True)
    return (
        {k: (t.count, t.bytes) for k, t in r.by_class.items()},
        {repo: {k: (t.count, t.bytes) for k, t in per.items()} for repo, per in r.by_repository.items()},
        r.sessions,
        (r.unknown.count, r.unknown.bytes, sorted(r.unknown.sample)),
        r.problems.errors,
    )


def _plan(store, policy):
    now = datetime(2030, 1, 1, tzinfo=UTC)
    obs = inventory.observe(store, want_temp_files=True, worth_detail=needs_startedat(policy, now))
    data = make_plan(obs, policy, now, store.url, store.identity()).to_json()
    data["unknown"]["paths"].sort()
    return json.dumps(data, sort_keys=True)


def test_two_processes_see_what_one_sees(tree, monkeypatch):
    one, two = _store(tree.root, 1, monkeypatch), _store(tree.root, 2, monkeypatch)
    assert one.walk_processes == 1 and two.walk_processes == 2
    assert _scan(one) == _scan(two)
    policy = Policy(include=parse_include("upload_session,temp_file"))
    assert _plan(one, policy) == _plan(two, policy)
    plan = json.loads(_plan(two, policy))
    assert len([i for i in plan["items"] if i["class"] == "upload_session"]) == 24  # "now" is 2030: all stale
    assert len([i for i in plan["items"] if i["class"] == "temp_file"]) == 1


def _fail_in_the_worker(monkeypatch, method: str) -> None:
    """LocalStore.<method> raises EIO in any process but this one (the forked walk worker)."""
    parent = os.getpid()
    real = getattr(LocalStore, method)

    def dies_in_the_worker(self, *args, **kwargs):
        if os.getpid() != parent:
            raise OSError(5, "Input/output error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalStore, method, dies_in_the_worker)


def test_a_failing_worker_is_an_error_not_a_gap(tree, monkeypatch):
    store = _store(tree.root, 2, monkeypatch)
    _fail_in_the_worker(monkeypatch, "walk")
    report = inventory.scan(store)
    assert any("walk worker failed" in e and "Input/output error" in e for e in report.problems.errors)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("gen") / "store"
    gen = Path(__file__).resolve().parent.parent / "scripts" / "gen_store.py"
    args = ["--repos", "60", "--blobs", "500", "--sessions", "20", "--seed", "5"]
    subprocess.run([sys.executable, str(gen), *args, str(root)], check=True, capture_output=True)
    return root


@pytest.mark.parametrize("delete_untagged", [False, True])
def test_audit_in_two_processes_is_the_audit_in_one(generated, monkeypatch, delete_untagged):
    from debris import audit

    one = audit.run(_store(generated, 1, monkeypatch), delete_untagged).to_json()
    two = audit.run(_store(generated, 2, monkeypatch), delete_untagged).to_json()
    assert one == two
    assert one["blobs_eligible"] and one["blobs_marked"] > 100 and one["problems"] == []
    assert bool(one["manifests_eligible"]) is delete_untagged


def test_an_audit_whose_worker_fails_counts_nothing_eligible(generated, monkeypatch):
    from debris import audit

    store = _store(generated, 2, monkeypatch)
    _fail_in_the_worker(monkeypatch, "read_many")
    r = audit.run(store)
    assert r.blobs_eligible == [] and r.bytes_reclaimable == 0
    assert any(p.kind == "incomplete" and "walk worker failed" in p.detail for p in r.problems)
