"""Unattended runs: one at a time (lock file), observable (metrics file, JSON logs)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from treebuilder import make_tree, snapshot

DAY = 86400


def debris(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "debris", *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def tree(tmp_path):
    t = make_tree(tmp_path / "root")
    t.image("library/alpine")
    t.stale = [t.session("library/alpine", age=3 * DAY)[0] for _ in range(3)]
    t.session("library/alpine", age=60)
    return t


def samples(path) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(Path(path).read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(metrics: dict, name: str, **labels) -> float:
    hits = [v for (n, ls), v in metrics.items() if n == name and all(dict(ls).get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_a_held_lock_stops_the_run_with_exit_5(tree, tmp_path):
    lock = tmp_path / "debris.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        before = snapshot(tree.root)
        r = debris(
            "clean", str(tree.root), "--confirm", "--lock-file", str(lock), "--metrics-file", str(tmp_path / "m.prom")
        )
        assert r.returncode == 5, r.stderr
        assert "held by another debris run" in r.stderr
        assert snapshot(tree.root) == before
        assert not (tmp_path / "m.prom").exists()  # a locked-out run does not overwrite the running one's metrics
    finally:
        os.close(fd)
    assert debris("clean", str(tree.root), "--confirm", "--lock-file", str(lock)).returncode == 0


@pytest.mark.slow
def test_two_concurrent_cleans_one_runs_the_other_exits_5(tmp_path):
    t = make_tree(tmp_path / "root")
    for n in range(2500):
        t.session(f"r{n % 10}", age=3 * DAY, hashstates=2)
    lock = tmp_path / "debris.lock"
    first = subprocess.Popen(
        [sys.executable, "-m", "debris", "clean", str(t.root), "--confirm", "--lock-file", str(lock)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.monotonic() < deadline:
        time.sleep(0.005)
    second = debris("clean", str(t.root), "--confirm", "--lock-file", str(lock))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 5, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "deleted 2500 item(s)" in out


def test_metrics_file_carries_the_documented_series(tree, tmp_path):
    prom = tmp_path / "debris.prom"
    r = debris("clean", str(tree.root), "--confirm", "--metrics-file", str(prom))
    assert r.returncode == 0, r.stderr
    m = samples(prom)
    store = f"file://{tree.root}"
    assert (
        by_name(m, "debris_items", store=store, command="clean", outcome="deleted", **{"class": "upload_session"}) == 3
    )
    assert by_name(m, "debris_bytes", outcome="deleted") == 3 * (1000 + 20 + 5)
    assert by_name(m, "debris_bytes_freed") == 3 * (1000 + 20 + 5)
    assert by_name(m, "debris_exit_code") == 0
    assert by_name(m, "debris_read_errors") == 0
    assert 0 < by_name(m, "debris_run_duration_seconds") < 60
    success = by_name(m, "debris_last_success_timestamp_seconds")
    assert abs(success - time.time()) < 60
    assert by_name(m, "debris_last_run_timestamp_seconds") >= success
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".") or p.endswith(".tmp")]  # written atomically

    # A failing run keeps the last success time of the run before it.
    tree.session("library/alpine", age=3 * DAY)
    code = (
        "import sys; from debris.stores.local import LocalStore; from debris.cli import main\n"
        "def broken(self, key, expected): raise OSError(30, 'Read-only file system')\n"
        "LocalStore.remove_file = broken\n"
        "sys.argv = ['debris', 'clean', sys.argv[1], '--confirm', '--metrics-file', sys.argv[2]]\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tree.root), str(prom)], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    m = samples(prom)
    assert by_name(m, "debris_exit_code") == 3
    assert by_name(m, "debris_items", outcome="failed") == 1
    assert by_name(m, "debris_last_success_timestamp_seconds") == success


def test_metrics_written_when_the_store_cannot_be_opened(tmp_path):
    prom = tmp_path / "debris.prom"
    r = debris("clean", str(tmp_path / "missing"), "--metrics-file", str(prom))
    assert r.returncode == 1
    assert by_name(samples(prom), "debris_exit_code") == 1


def test_json_logs_one_line_per_item(tree):
    r = debris("clean", str(tree.root), "--confirm", "--log-format", "json")
    assert r.returncode == 0
    events = [json.loads(line) for line in r.stderr.splitlines()]
    deleted = [e for e in events if e["event"] == "deleted"]
    assert sorted(e["upload_id"] for e in deleted) == sorted(tree.stale)
    assert all(e["level"] == "info" and e["ts"].endswith("Z") for e in deleted)
    assert events[-1]["event"] == "summary" and events[-1]["deleted"] == 3
    assert debris("clean", str(tree.root), "--log-format", "xml").returncode == 2
