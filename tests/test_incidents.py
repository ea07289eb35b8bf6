"""The situations debris exists for: a store with 0 bytes free, and an apply killed half-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmpfs import fill, mounted_tmpfs
from treebuilder import make_tree, snapshot

DAY = 86400


def debris(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "debris", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def full_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        yield mnt


@pytest.mark.tmpfs
def test_plan_and_apply_on_a_store_with_zero_bytes_free(full_tmpfs, tmp_path):
    tree = make_tree(full_tmpfs / "root")
    tree.image("library/alpine")
    stale = [tree.session("library/alpine", age=3 * DAY, data=b"x" * 200_000)[0] for _ in range(3)]
    fill(full_tmpfs)
    vfs = os.statvfs(full_tmpfs)
    assert vfs.f_bavail == 0
    with pytest.raises(OSError):
        (full_tmpfs / "root" / "probe").write_bytes(b"x" * 8192)
    before = snapshot(tree.root)

    planfile = tmp_path / "plan.json"
    r = debris("plan", str(tree.root), "--out", str(planfile))
    assert r.returncode == 0, r.stderr
    assert snapshot(tree.root) == before  # planning wrote nothing
    out = debris("plan", str(tree.root), "--out", "-")
    assert out.returncode == 0 and len(json.loads(out.stdout)["items"]) == 3

    a = debris("apply", str(planfile), "--confirm", "--json")
    assert a.returncode == 0, a.stderr
    result = json.loads(a.stdout)
    assert {d["upload_id"] for d in result["deleted"]} == set(stale)
    assert os.statvfs(full_tmpfs).f_bavail * os.statvfs(full_tmpfs).f_frsize >= 600_000
    (full_tmpfs / "root" / "probe").write_bytes(b"x" * 8192)  # writes work again


def _startedat_count(root: Path) -> int:
    return sum(1 for _ in root.glob("docker/registry/v2/repositories/*/_uploads/*/startedat"))


@pytest.mark.slow
def test_apply_killed_half_way_is_finished_by_a_replan(tmp_path):
    tree = make_tree(tmp_path / "root")
    tree.image("library/alpine")
    tree.image("team/app")
    repos = [f"r{n}" for n in range(20)]
    for n in range(3000):
        tree.session(repos[n % 20], age=3 * DAY, data=b"d" * 100, hashstates=3)
    live, _ = tree.session("library/alpine", age=30)
    total = 3000
    planfile = tmp_path / "plan.json"
    assert debris("plan", str(tree.root), "--out", str(planfile)).returncode == 0
    # Outside the planned sessions nothing may change; an _uploads directory only loses entries.
    not_planned = {
        k: v
        for k, v in snapshot(tree.root).items()
        if ("/_uploads/" not in k or live in k) and not k.endswith("/_uploads")
    }

    proc = subprocess.Popen(
        [sys.executable, "-m", "debris", "apply", str(planfile), "--confirm"], stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while _startedat_count(tree.root) > total - 300 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "apply finished before it could be killed: make the store larger"
    left = _startedat_count(tree.root)
    assert 0 < left < total

    after = snapshot(tree.root)
    assert {k: after.get(k) for k in not_planned} == not_planned, "something outside the plan changed"

    replan = json.loads(debris("plan", str(tree.root), "--json").stdout)
    remaining = {
        p.relative_to(tree.v2 / "repositories").parts[2]
        for p in tree.root.glob("docker/registry/v2/repositories/r*/_uploads/*/**/*")
        if p.is_file()
    }
    planned = {i["upload_id"] for i in replan["items"]}
    assert planned == remaining, "every session that still holds a file is planned again"
    half = [i for i in replan["items"] if "startedat_missing" in i["flags"]]
    for item in half:
        assert item["paths"] and not any(p.endswith("/startedat") for p in item["paths"])

    second = debris("clean", str(tree.root), "--confirm", "--json")
    assert second.returncode == 0, second.stderr
    assert not [p for p in tree.root.glob("docker/registry/v2/repositories/r*/_uploads/**/*") if p.is_file()]
    assert (tree.v2 / "repositories" / "library" / "alpine" / "_uploads" / live / "data").exists()
