"""Real S3 servers for tests: a throw-away Ceph RGW and a moto server.

debris decides what to delete from what an S3 store reports (multipart ``Initiated`` times,
part ``LastModified``, listings), and must keep working when the bucket is over quota, which
is exactly when people run it. moto answers a fixed ``Initiated`` of 2010-11-10T20:48:33Z and
has no quotas, so tests that judge ages or quota behaviour need a real radosgw; moto remains
the cheap choice for plain listing and put/delete logic.

:class:`CephCluster` wraps ``scripts/ceph.sh`` (one mon, one memstore OSD, one radosgw, all
under one directory, up in about 2 s); :class:`MotoServer` runs ``python -m moto.server`` as a
child process. Both bind 127.0.0.1 only and stop exactly the processes they started.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CEPH_SCRIPT = REPO_ROOT / "scripts" / "ceph.sh"

#: Every binary scripts/ceph.sh runs, with the Debian package that ships it, so a skip
#: message can say exactly what to install.
CEPH_BINARIES: Mapping[str, str] = {
    "ceph-mon": "ceph-mon",
    "monmaptool": "ceph-base",
    "ceph-osd": "ceph-osd",
    "radosgw": "radosgw",
    "radosgw-admin": "ceph-common",
    "ceph": "ceph-common",
    "ceph-authtool": "ceph-common",
    "curl": "curl",
}

#: The S3 user scripts/ceph.sh creates.
CEPH_ACCESS_KEY = "debris-access"
CEPH_SECRET_KEY = "debris-secret"


def ceph_available() -> tuple[bool, str]:
    """Whether a Ceph cluster can be started here, and if not, precisely which binaries are missing.

    Only absence of the tools is a reason to skip: a cluster that is installed but fails to
    start is a test error, never a skip.
    """
    if shutil.which("bash") is None:
        return False, "bash not found on PATH (scripts/ceph.sh needs it)"
    missing = [f"{name} (Debian package {pkg})" for name, pkg in CEPH_BINARIES.items() if shutil.which(name) is None]
    if missing:
        return False, "Ceph RGW tests need binaries not found on PATH: " + ", ".join(missing)
    return True, "all Ceph binaries found"


_CEPH_OK, _CEPH_REASON = ceph_available()
#: Apply to tests that need a real RGW: skipped, with the missing binaries named, only when
#: the Ceph tools are not installed.
requires_ceph = pytest.mark.skipif(not _CEPH_OK, reason=_CEPH_REASON)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick, so clusters don't collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _s3_client(endpoint: str, access_key: str, secret_key: str, **config: Any):
    """A boto3 S3 client as debris talks to non-AWS stores: path-style, SigV4, us-east-1.

    Path-style because neither RGW on 127.0.0.1 nor moto has DNS names for virtual-host buckets;
    the region is arbitrary for both but SigV4 needs one. ``config`` overrides botocore Config
    fields (e.g. ``retries={"max_attempts": 1}``).
    """
    import boto3
    from botocore.config import Config

    settings: dict[str, Any] = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4"}
    settings.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(**settings),
    )


def _parse_env(text: str) -> dict[str, str]:
    """The ``KEY=VALUE`` lines scripts/ceph.sh prints on stdout."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper():
            out[key] = value
    return out


def _run_start_script(directory: Path, port: int, env: Mapping[str, str], timeout: float) -> tuple[int, str, str]:
    """Run ``scripts/ceph.sh start``; on timeout or ^C, make sure no daemon it started survives.

    The script runs in its own session so that the daemons' lifetime is ours to manage, not
    the terminal's. If we give up on it (TimeoutExpired, KeyboardInterrupt, ...), its whole
    process group (the script, its CLI calls and the daemons, which share it) gets SIGTERM,
    the script's own trap stops what it started, and ``scripts/ceph.sh stop`` SIGKILLs
    whatever is still listed in DIR/pids.
    """
    proc = subprocess.Popen(
        ["bash", str(CEPH_SCRIPT), "start", str(directory), str(port)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", str(directory)], capture_output=True, check=False)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise subprocess.TimeoutExpired(proc.args, timeout, stderr=stderr) from None
        raise
    return proc.returncode, stdout, stderr


class CephCluster:
    """A running throw-away Ceph cluster (mon + memstore OSD + radosgw) started by scripts/ceph.sh.

    Everything lives under ``directory`` (config, keyring, mon/OSD data, admin sockets, logs in
    ``directory/log``); nothing under /etc/ceph or /var/lib/ceph is read or written, so several
    clusters can run at once. Data is in RAM (memstore) and gone after :meth:`stop`.

    Use :meth:`start` (or ``with CephCluster.start(tmp) as ceph:``).
    """

    def __init__(self, directory: Path, env: Mapping[str, str], port: int, bringup_seconds: float) -> None:
        self.directory = directory
        self.endpoint: str = env["ENDPOINT"]
        self.access_key: str = env["ACCESS_KEY"]
        self.secret_key: str = env["SECRET_KEY"]
        self.conf = Path(env["CEPH_CONF"])
        self.port = port
        self.mon_port = int(env["MON_PORT"])
        #: Wall-clock seconds ``scripts/ceph.sh start`` took, as measured from Python.
        self.bringup_seconds = bringup_seconds
        #: Wall-clock seconds :meth:`stop` took (None while running).
        self.teardown_seconds: float | None = None
        self._running = True
        atexit.register(self._stop_at_exit)

    @classmethod
    def start(cls, tmpdir: str | os.PathLike[str], *, timeout: float = 120.0, attempts: int = 2) -> CephCluster:
        """Start a cluster in a fresh subdirectory of ``tmpdir`` on free ports; return once S3 answers.

        Ports come from the kernel (bind to port 0) and could be taken by someone else before
        the daemons bind them, so a failed start is retried once on new ports in a new
        directory. The final failure raises RuntimeError with the script's stderr, which holds
        the tail of the daemon log that explains it.
        """
        ok, reason = ceph_available()
        if not ok:
            raise RuntimeError(reason)
        base = Path(tmpdir)
        base.mkdir(parents=True, exist_ok=True)
        errors = []
        for attempt in range(1, attempts + 1):
            port, mon_port = free_port(), free_port()
            while mon_port == port:
                mon_port = free_port()
            # Short: admin socket paths (DIR/run/ceph-client.rgw.asok) must fit in 107 bytes.
            directory = base / f"c{port}"
            if directory.exists():  # the kernel handed out this port before: pick again
                continue
            # CEPH_OWNER_PID: the script's watchdog kills the daemons if this process dies
            # without stop() (SIGKILL, a crashed runner): a leaked cluster costs ~90% of a
            # core once its mon is gone, and pytest's tmpdir rotation deletes DIR/pids.
            env = {**os.environ, "CEPH_MON_PORT": str(mon_port), "CEPH_OWNER_PID": str(os.getpid())}
            t0 = time.monotonic()
            try:
                returncode, stdout, stderr = _run_start_script(directory, port, env, timeout)
            except subprocess.TimeoutExpired as exc:
                errors.append(f"attempt {attempt}: no answer after {timeout}s:\n{exc.stderr or ''}")
                continue
            elapsed = time.monotonic() - t0
            if returncode == 0:
                return cls(directory, _parse_env(stdout), port, elapsed)
            errors.append(f"attempt {attempt} (port {port}, mon port {mon_port}, dir {directory}):\n{stderr}")
        raise RuntimeError("scripts/ceph.sh start failed:\n" + "\n".join(errors))

    # -- admin -----------------------------------------------------------------------------

    def admin(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``radosgw-admin -c <this cluster's conf> ARGS`` and return its stdout.

        Raises CalledProcessError (with stderr) on failure, so a test sees why.
        """
        proc = subprocess.run(
            ["radosgw-admin", "-c", str(self.conf), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc.stdout

    def set_bucket_quota(self, bucket: str, max_size_bytes: int) -> None:
        """Set and enable a bucket-scope size quota (no object-count limit).

        The cluster runs with ``rgw bucket quota ttl = 0``, so RGW enforces it on the very next
        request: a PUT or UploadPart whose size would take the bucket past the limit gets
        HTTP 403 ``QuotaExceeded``.
        """
        scope = ("--quota-scope=bucket", f"--bucket={bucket}")
        self.admin("quota", "set", *scope, f"--max-size={int(max_size_bytes)}", "--max-objects=-1")
        self.admin("quota", "enable", *scope)

    def bucket_stats(self, bucket: str) -> dict[str, Any]:
        """``radosgw-admin bucket stats --bucket=B`` as a dict, plus easy-to-read totals.

        RGW splits usage by category: ``rgw.main`` holds objects *and* uploaded multipart
        parts, ``rgw.multimeta`` one zero-size entry per incomplete upload. Added top-level
        keys sum over all categories: ``size`` (bytes as uploaded), ``size_actual`` (rounded
        up to 4 KiB per object, which is what the quota counts), ``num_objects``; plus
        ``multipart_uploads`` (the ``rgw.multimeta`` count) and ``quota_max_size``.
        """
        stats: dict[str, Any] = json.loads(self.admin("bucket", "stats", f"--bucket={bucket}"))
        usage: dict[str, dict[str, int]] = stats.get("usage") or {}
        for key in ("size", "size_actual", "num_objects"):
            stats[key] = sum(cat.get(key, 0) for cat in usage.values())
        stats["multipart_uploads"] = usage.get("rgw.multimeta", {}).get("num_objects", 0)
        quota = stats.get("bucket_quota") or {}
        stats["quota_max_size"] = quota.get("max_size", -1) if quota.get("enabled") else -1
        return stats

    def s3_client(self, **config: Any):
        """A boto3 S3 client for this cluster's user (path-style, SigV4, region us-east-1)."""
        return _s3_client(self.endpoint, self.access_key, self.secret_key, **config)

    # -- processes -------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """Name -> PID (``mon.a``, ``osd.0``, ``client.rgw``, ``watchdog``) from ``directory/pids``; empty once stopped."""
        pidfile = self.directory / "pids"
        if not pidfile.exists():
            return {}
        out = {}
        for line in pidfile.read_text().splitlines():
            pid, _, name = line.partition(" ")
            if pid.isdigit():
                out[name] = int(pid)
        return out

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each Ceph daemon in KiB (VmRSS), for reporting what a cluster costs."""
        out = {}
        for name, pid in self.pids().items():
            if name == "watchdog":
                continue
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1])
            except OSError:
                continue
        return out

    def log_dir(self) -> Path:
        """Where the daemons log (``ceph-mon.a.log``, ``ceph-osd.0.log``, ``radosgw.log``, ``*.out``)."""
        return self.directory / "log"

    def stop(self) -> float:
        """Stop the daemons (``scripts/ceph.sh stop``: SIGTERM, SIGKILL after ~3 s); return seconds taken.

        Only the PIDs in ``directory/pids`` are signalled. The directory itself is left for
        the caller's tmpdir cleanup (and for reading logs after a failure). Idempotent.
        """
        if not self._running:
            return self.teardown_seconds or 0.0
        t0 = time.monotonic()
        proc = subprocess.run(
            ["bash", str(CEPH_SCRIPT), "stop", str(self.directory)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.teardown_seconds = time.monotonic() - t0
        self._running = False
        atexit.unregister(self._stop_at_exit)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/ceph.sh stop failed:\n{proc.stderr}")
        return self.teardown_seconds

    def _stop_at_exit(self) -> None:
        """Last resort if a test run dies before its fixture finalizer: don't leave daemons behind."""
        with contextlib.suppress(Exception):
            self.stop()

    def __enter__(self) -> CephCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<CephCluster {self.endpoint} {state} dir={self.directory}>"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when our parent dies (PR_SET_PDEATHSIG).

    So a test run killed without teardown does not leave a moto server behind. Best effort:
    silently skipped where prctl is unavailable. Linux ties this to the *thread* that started
    the child, so call MotoServer.start from a thread that outlives the server (pytest's
    main thread does).
    """
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class MotoServer:
    """A moto S3 server in a child process on 127.0.0.1.

    A child process rather than ``ThreadedMotoServer``: its state cannot leak into (or be
    patched by) ``mock_aws`` used elsewhere in the test process, it does not share our GIL,
    and it is the same server a separately started registry would talk to. It is started as
    ``sys.executable -m moto.server`` rather than via the ``moto_server`` entry point because a
    pyenv shim would put a shell between us and the server, and stop() must signal the
    server itself.

    moto accepts any credentials, has no quotas, and answers ListMultipartUploads with a fixed
    ``Initiated`` (2010-11-10T20:48:33Z); part ``LastModified`` is real (whole seconds).
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path | None) -> None:
        self._proc = proc
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.access_key = "testing"
        self.secret_key = "testing"
        self.log_path = log_path
        atexit.register(self.stop)

    @classmethod
    def start(cls, log_dir: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> MotoServer:
        """Start the server on a free port and return once it answers HTTP.

        Output goes to ``log_dir/moto-PORT.log`` when given (else it is discarded); on a
        start failure its tail is part of the RuntimeError.
        """
        port = free_port()
        log_path = Path(log_dir) / f"moto-{port}.log" if log_dir is not None else None
        with contextlib.ExitStack() as stack:
            # Our copy of the log file can close as soon as the child has inherited it.
            out = stack.enter_context(open(log_path, "wb")) if log_path is not None else subprocess.DEVNULL
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        server = cls(proc, port, log_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                server.stop()
                raise RuntimeError(f"moto server exited with status {proc.returncode}{server._log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.endpoint}/moto-api/data.json", timeout=1):
                    return server
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"moto server not answering on {server.endpoint} after {timeout}s{server._log_tail()}"
                )
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def s3_client(self, **config: Any):
        """A boto3 S3 client for this server (path-style, SigV4, region us-east-1)."""
        return _s3_client(self.endpoint, self.access_key, self.secret_key, **config)

    def reset(self) -> None:
        """Wipe every bucket and upload (``POST /moto-api/reset``) so tests can share one server."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {resp.status}")

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL after 3 s, and reap it. Idempotent."""
        atexit.unregister(self.stop)
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(tail)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MotoServer {self.endpoint} pid={self.pid}>"


def debris_env(ceph: CephCluster | None) -> dict[str, str]:
    """The environment for a debris subprocess: no stray AWS settings (nor instance-metadata
    look-ups); the cluster's keys unless ``ceph`` is None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    if ceph is not None:
        env["AWS_ACCESS_KEY_ID"] = ceph.access_key
        env["AWS_SECRET_ACCESS_KEY"] = ceph.secret_key
    return env


def run_debris(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m debris ARGS`` from the checkout, in ``env`` (see ``debris_env``), never raising."""
    return subprocess.run(
        [sys.executable, "-m", "debris", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
