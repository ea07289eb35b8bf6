"""Running unattended: one run at a time, metrics a Prometheus node exporter can pick up, and
machine-readable logs. Nothing here touches the store."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from debris.apply import ApplyResult

METRIC_PREFIX = "debris"
LAST_SUCCESS = f"{METRIC_PREFIX}_last_success_timestamp_seconds"


class LockHeld(Exception):
    """Another debris run holds the lock file."""


@contextlib.contextmanager
def hold_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on ``path`` for the duration (no-op when None).

    The lock dies with the process (kill -9 included), so a crashed run never blocks the next.
    """
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise LockHeld(f"{path} is held by another debris run{f' (pid {holder})' if holder else ''}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _previous_last_success(path: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return sample.value
    except ValueError:
        return None
    return None


def write_metrics(
    path: str, *, command: str, store_url: str, result: ApplyResult | None, duration: float, exit_code: int
) -> None:
    """Write Prometheus textfile metrics for one run, atomically (temp file + rename).

    Series: items and bytes per class and outcome, run duration, exit code, last run time, and the
    last success time (carried over from the previous file when this run did not succeed).
    """
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = ["store", "command"]
    items = Gauge(
        f"{METRIC_PREFIX}_items",
        "Items of the last run, by class and outcome.",
        [*labels, "class", "outcome"],
        registry=registry,
    )
    size = Gauge(
        f"{METRIC_PREFIX}_bytes",
        "Bytes of the last run's items, by class and outcome.",
        [*labels, "class", "outcome"],
        registry=registry,
    )
    freed = Gauge(f"{METRIC_PREFIX}_bytes_freed", "Bytes freed by the last run.", labels, registry=registry)
    errors = Gauge(f"{METRIC_PREFIX}_read_errors", "Paths the last run could not read.", labels, registry=registry)
    Gauge(f"{METRIC_PREFIX}_run_duration_seconds", "Duration of the last run.", labels, registry=registry).labels(
        store_url, command
    ).set(duration)
    Gauge(f"{METRIC_PREFIX}_exit_code", "Exit code of the last run (0 = success).", labels, registry=registry).labels(
        store_url, command
    ).set(exit_code)
    now = time.time()
    Gauge(f"{METRIC_PREFIX}_last_run_timestamp_seconds", "When the last run ended.", labels, registry=registry).labels(
        store_url, command
    ).set(now)
    last_success = now if exit_code == 0 else _previous_last_success(path)
    if last_success is not None:
        Gauge(LAST_SUCCESS, "When a run last ended with exit code 0.", labels, registry=registry).labels(
            store_url, command
        ).set(last_success)
    if result is not None:
        counts: dict[tuple[str, str], list[int]] = {}
        for o in result.outcomes:
            c = counts.setdefault((o.item.kind.value, o.status), [0, 0])
            c[0] += 1
            c[1] += o.item.bytes
        for (kind, outcome), (n, b) in sorted(counts.items()):
            items.labels(store_url, command, kind, outcome).set(n)
            size.labels(store_url, command, kind, outcome).set(b)
        freed.labels(store_url, command).set(result.bytes_freed)
        errors.labels(store_url, command).set(len(result.errors))
    write_to_textfile(path, registry)


def log_events(result: ApplyResult, fmt: str, out: TextIO | None = None) -> None:
    """``json``: one JSON line per item outcome and per read error on stderr, for log collectors."""
    if fmt != "json":
        return
    out = out or sys.stderr
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for o in result.outcomes:
        event = {"ts": ts, "level": "error" if o.status == "failed" else "info", "event": o.status, **o.to_json()}
        out.write(json.dumps(event) + "\n")
    for err in result.errors:
        out.write(json.dumps({"ts": ts, "level": "error", "event": "read_error", "error": err}) + "\n")
    summary = {
        "ts": ts,
        "level": "error" if result.failed else "info",
        "event": "summary",
        "confirmed": result.confirmed,
        "deleted": len(result.with_status("deleted")),
        "skipped": len(result.with_status("skipped")),
        "failed": len(result.with_status("failed")),
        "bytes_freed": result.bytes_freed,
    }
    out.write(json.dumps(summary) + "\n")
