#!/usr/bin/env python3
"""Measure one command: median wall time and peak RSS over K runs, each in a fresh process.

Why a helper and not ``time``/``hyperfine``: the benchmark needs the peak resident memory of
exactly the measured process (``ru_maxrss`` as returned by ``os.wait4`` for that child, which
also covers any descendants it waited for), not of a shell or of ourselves, and it needs the
same measurement for debris and for the ``find`` baselines so their ratio is fair. Nothing but
the standard library, so it runs wherever debris runs.

Each run is a new child process (``subprocess.Popen`` + ``os.wait4``); its stdout goes to
/dev/null (rendering to a terminal would be measured otherwise), its stderr to a temp file that
is shown if the command fails. ``--warmup`` runs come first and are discarded (they load the
page cache and the interpreter's files: this is a warm-cache measurement). A command that exits
with a code not in ``--ok-exit`` makes the whole measurement fail (exit 1): timing a failure
is meaningless.

Several commands may be given, separated by ``---``: their runs are then interleaved round
robin (A B A B ...), so that load from other processes on a shared machine hits a command and
its baseline alike and their ratio stays meaningful even when absolute times wander.

Usage:
  bench_util.py [-k 5] [--warmup 1] [--label NAME]... [--format text|json|fields] -- CMD [ARG...] [--- CMD2 ...]

``--format fields`` prints, per command, one line ``median_s peak_rss_mib min_s max_s
median_cpu_s runs``, for shell scripts (``read -r wall rss _ <<<"$(bench_util.py --format fields -- ...)"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system time of the child
    maxrss_mib: float
    exit_code: int


@dataclass
class Result:
    label: str
    cmd: list[str]
    runs: list[Run]

    @property
    def median_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def peak_rss_mib(self) -> float:
        return max(r.maxrss_mib for r in self.runs)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "cmd": self.cmd,
            "median_s": round(self.median_s, 4),
            "min_s": round(min(r.wall_s for r in self.runs), 4),
            "max_s": round(max(r.wall_s for r in self.runs), 4),
            "median_cpu_s": round(self.median_cpu_s, 4),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "runs": [asdict(r) for r in self.runs],
        }


class CommandFailed(Exception):
    pass


def run_once(cmd: list[str], ok_exit: frozenset[int] = frozenset({0})) -> Run:
    """One fresh child: wall time around spawn..reap, and that child's own rusage from wait4."""
    with tempfile.TemporaryFile(prefix="bench-stderr-") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped by wait4 already: Popen must not wait for it again
        if code not in ok_exit:
            err.seek(0)
            tail = err.read()[-3000:].decode(errors="replace")
            raise CommandFailed(f"{' '.join(cmd)} exited {code}\n{tail}")
    # Linux reports ru_maxrss in KiB.
    return Run(round(wall, 4), round(ru.ru_utime + ru.ru_stime, 4), round(ru.ru_maxrss / 1024, 1), code)


def measure(
    cmds: list[list[str]],
    runs: int = 5,
    warmup: int = 1,
    labels: list[str] | None = None,
    ok_exit: frozenset[int] = frozenset({0}),
) -> list[Result]:
    """Warm up every command, then run them round robin ``runs`` times; one Result per command."""
    labels = list(labels or [])
    results = [Result(labels[i] if i < len(labels) else " ".join(cmd), list(cmd), []) for i, cmd in enumerate(cmds)]
    for _ in range(warmup):
        for cmd in cmds:
            run_once(cmd, ok_exit)
    for _ in range(runs):
        for res in results:
            res.runs.append(run_once(res.cmd, ok_exit))
    return results


def split_commands(words: list[str]) -> list[list[str]]:
    """``A a1 --- B b1`` -> [[A, a1], [B, b1]]."""
    cmds: list[list[str]] = [[]]
    for w in words:
        if w == "---":
            cmds.append([])
        else:
            cmds[-1].append(w)
    return cmds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Run CMD K times (after warm-up runs), each in a fresh child process, and report the median "
        "wall time and the peak RSS of the child (os.wait4 ru_maxrss). CMD's stdout goes to /dev/null. "
        "Several commands separated by --- are measured interleaved (A B A B ...).",
        usage="%(prog)s [-k K] [--warmup N] [--label NAME]... [--format text|json|fields] "
        "-- CMD [ARG...] [--- CMD2 [ARG...]]",
    )
    p.add_argument("-k", "--runs", type=int, default=5, help="measured runs per command (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="discarded runs per command before measuring (default 1)")
    p.add_argument("--label", action="append", help="name to print, once per command (default: the command line)")
    p.add_argument("--format", choices=("text", "json", "fields"), default="text")
    p.add_argument(
        "--ok-exit", default="0", metavar="CODES", help="comma-separated exit codes that count as success (default 0)"
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    a = p.parse_args(argv)
    words = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    cmds = split_commands(words)
    if not all(cmds):
        p.error("no command given, or an empty one around --- (put commands after --)")
    if a.runs < 1 or a.warmup < 0:
        p.error("-k must be >= 1 and --warmup >= 0")
    try:
        ok = frozenset(int(c) for c in a.ok_exit.split(",") if c.strip())
    except ValueError:
        p.error(f"--ok-exit: not a list of integers: {a.ok_exit!r}")
    try:
        results = measure(cmds, a.runs, a.warmup, a.label, ok)
    except CommandFailed as e:
        print(f"bench_util: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"bench_util: cannot run {e.filename or 'command'}: {e.strerror}", file=sys.stderr)
        return 1
    for res in results:
        j = res.to_json()
        if a.format == "json":
            print(json.dumps(j))
        elif a.format == "fields":
            print(j["median_s"], j["peak_rss_mib"], j["min_s"], j["max_s"], j["median_cpu_s"], len(res.runs))
        else:
            print(
                f"{res.label}: median {j['median_s']:.3f}s (min {j['min_s']:.3f}, max {j['max_s']:.3f}, "
                f"cpu {j['median_cpu_s']:.3f}s), peak RSS {j['peak_rss_mib']:.1f} MiB, {len(res.runs)} runs"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
