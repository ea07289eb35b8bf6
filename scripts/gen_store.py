#!/usr/bin/env python3
"""Generate a large, realistic, deterministic docker-registry v2 filesystem store.

Why this exists: ``debris plan`` and ``debris scan`` must stay fast on the stores they are
meant for (thousands of repositories, tens of thousands of blobs, ~10^5 files), and a
benchmark is only worth something if the tree it walks looks like a real registry's. Pushing
that much through a real registry takes far too long, so this script writes the same bytes a
registry 2.8 would write, directly:

* ``blobs/sha256/<2hex>/<hex>/data``: tiny random layers, JSON image configs and real schema2
  manifests; every digest is the real sha256 of its content.
* per repository: ``_layers/sha256/<hex>/link`` for every blob pushed to it (layers and
  configs), ``_manifests/revisions/sha256/<hex>/link`` for every manifest,
  ``_manifests/tags/<tag>/current/link`` and ``_manifests/tags/<tag>/index/sha256/<hex>/link``
  (``latest`` keeps the history of every manifest it pointed at), and an ``_uploads/`` dir
  (every repository that was ever pushed to has one, usually empty).
* repository names one to three components deep (``nginx-mirror3``, ``team3/billing``,
  ``team3/billing/worker``), some of them nested inside another repository.
* about 2% of the blobs are unreferenced (what garbage-collect would sweep); half of those
  still have a ``_layers`` link (a push whose manifest never came).
* upload sessions ``_uploads/<uuid>/{startedat,data,hashstates/sha256/<offset>}`` spread
  unevenly over a quarter of the repositories (CI repositories collect most):
  ~80% abandoned ``--age-days`` back (chunked PATCHes that stopped), ~5% POST-only (empty
  ``data``, no hash state) also aged, ~10% fresh (minutes to hours old), ~3% resumed
  (old ``startedat``, fresh ``data`` mtime: a live long upload the registry's own purge would
  wrongly kill), ~2% without ``startedat`` (the registry's purge never removes those).
  Timestamps (``startedat`` content, file and directory mtimes) are set with ``os.utime``.

Everything is drawn from one ``random.Random(--seed)``: the same arguments give the same tree
(names, sizes, contents). Session timestamps are relative to ``--now`` (default: the current
time, so session ages mean what they say when the benchmark runs right after); with ``--now``
pinned they are reproducible too. Other mtimes (blobs, links, directories outside sessions) are
simply the generation time: nothing reads them.

``--gc-check`` then runs ``docker-registry garbage-collect --dry-run`` on the tree and checks
that it marks exactly the blobs the generator referenced: proof the tree is a real registry
store and not just something debris happens to accept.

Prints one summary line on stdout (files, dirs, bytes, repos, sessions, ...).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REGISTRY_BIN = "/usr/bin/docker-registry"

_ORGS = ["platform", "infra", "data", "ml", "web", "mobile", "security", "qa", "tools", "ops", "payments", "mirror"]
_SERVICES = [
    "api", "auth", "billing", "cache", "search", "gateway", "frontend", "backend", "ingest", "etl",
    "report", "notify", "orders", "users", "catalog", "inventory", "pricing", "media", "scheduler", "proxy",
]  # fmt: skip
_COMPONENTS = ["app", "worker", "migrations", "cron", "web", "debug", "sidecar", "init"]
_SUFFIXES = ["", "", "", "-svc", "_v2", ".internal", "-legacy", "--canary"]
_IMAGES = ["nginx-mirror", "alpine", "python", "golang", "postgres", "redis", "node", "busybox", "ubuntu", "debian"]

# Session population mix (fractions of --sessions); the rest are abandoned chunked uploads.
_FRESH, _RESUMED, _NO_STARTEDAT, _POST_ONLY = 0.10, 0.03, 0.02, 0.05
_ORPHAN_FRACTION = 0.02
_BASE_LAYERS = 40  # popular base layers shared by many images


@dataclass
class Stats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n


class Writer:
    """Creates files and directories with as few syscalls as possible (a set of known dirs)."""

    def __init__(self, stats: Stats):
        self.known: set[str] = set()
        self.stats = stats

    def mkdirs(self, path: str) -> None:
        if path in self.known:
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self.mkdirs(parent)
        try:
            os.mkdir(path)
            self.stats.dirs += 1
        except FileExistsError:
            pass
        self.known.add(path)

    def put(self, path: str, data: bytes) -> None:
        self.mkdirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += len(data)


def _repo_names(rng: random.Random, n: int) -> list[str]:
    names: dict[str, None] = {}
    teams = [f"team{i}" for i in range(max(4, n // 40))] + _ORGS
    while len(names) < n:
        r = rng.random()
        if r < 0.15:
            name = f"{rng.choice(_IMAGES)}{rng.randrange(100)}"
        else:
            svc = f"{rng.choice(_SERVICES)}{rng.choice(_SUFFIXES)}{rng.choice(['', str(rng.randrange(40))])}"
            name = f"{rng.choice(teams)}/{svc}"
            if r > 0.70:
                if rng.random() < 0.5:
                    names.setdefault(name)  # the parent is a repository too: a nested repository
                    if len(names) >= n:
                        break
                name = f"{name}/{rng.choice(_COMPONENTS)}"
        names.setdefault(name)
    return list(names)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link(hexd: str) -> bytes:
    return f"sha256:{hexd}".encode()


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(root: str, *, repos: int, blobs: int, sessions: int, seed: int, age_days: float, now: float) -> dict:
    rng = random.Random(seed)
    stats = Stats()
    w = Writer(stats)
    v2 = os.path.join(root, "docker", "registry", "v2")
    blob_root = os.path.join(v2, "blobs", "sha256")
    repo_root = os.path.join(v2, "repositories")
    w.mkdirs(blob_root)
    w.mkdirs(repo_root)

    def put_blob(data: bytes) -> tuple[str, int]:
        h = _digest(data)
        w.put(f"{blob_root}/{h[:2]}/{h}/data", data)
        return h, len(data)

    names = _repo_names(rng, repos)
    manifests_per_repo = [min(6, 1 + int(rng.expovariate(0.7))) for _ in names]
    n_manifests = sum(manifests_per_repo)
    n_orphans = max(1, int(blobs * _ORPHAN_FRACTION))
    pool_size = blobs - 2 * n_manifests - n_orphans
    if pool_size < _BASE_LAYERS + n_manifests:
        raise SystemExit(
            f"gen_store: --blobs {blobs} is too few for {repos} repositories ({n_manifests} manifests need "
            f"{2 * n_manifests} manifest+config blobs and at least one fresh layer each): raise --blobs"
        )

    # Layer blobs: tiny, mostly a few hundred bytes, a few KiB at most.
    layers = [put_blob(rng.randbytes(min(4096, 16 + int(rng.lognormvariate(5.5, 0.9))))) for _ in range(pool_size)]
    stats.count("layer_blobs", pool_size)
    base, fresh = layers[:_BASE_LAYERS], layers[_BASE_LAYERS:]
    # Fresh layers are dealt out so that every one of them is used by exactly one manifest.
    per_manifest = [len(fresh) // n_manifests + (1 if i < len(fresh) % n_manifests else 0) for i in range(n_manifests)]
    cursor = 0
    referenced: set[str] = set()
    m_index = 0
    tag_files = 0
    for r, name in enumerate(names):
        rdir = f"{repo_root}/{name}"
        w.mkdirs(f"{rdir}/_uploads")
        repo_blobs: set[str] = set()
        common = [base[r % _BASE_LAYERS]]  # round robin: each base layer is shared by many repositories
        referenced.add(common[0][0])
        built: list[str] = []
        for i in range(manifests_per_repo[r]):
            own = fresh[cursor : cursor + per_manifest[m_index]]
            cursor += per_manifest[m_index]
            m_index += 1
            img_layers = common + own
            config = {
                "architecture": "amd64",
                "os": "linux",
                "created": _rfc3339(now - 86400 * (30 - i)),
                "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_digest(h.encode())}" for h, _ in img_layers]},
                "history": [{"created_by": f"/bin/sh -c #(nop) build {name} step {n}"} for n in range(len(img_layers))],
            }
            chex, csize = put_blob(json.dumps(config, separators=(",", ":")).encode())
            manifest = {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "size": csize, "digest": f"sha256:{chex}"},
                "layers": [{"mediaType": MT_LAYER, "size": s, "digest": f"sha256:{h}"} for h, s in img_layers],
            }
            mhex, _ = put_blob(json.dumps(manifest, indent=3).encode())
            referenced.update((chex, mhex))
            referenced.update(h for h, _ in own)
            repo_blobs.add(chex)
            repo_blobs.update(h for h, _ in img_layers)
            w.put(f"{rdir}/_manifests/revisions/sha256/{mhex}/link", _link(mhex))
            built.append(mhex)
            common = img_layers[: rng.randint(1, len(img_layers))]  # the next build keeps some layers
        for h in repo_blobs:
            w.put(f"{rdir}/_layers/sha256/{h}/link", _link(h))
        stats.count("layer_links", len(repo_blobs))
        # Tags: latest -> newest, with every manifest it ever pointed at in its index; most builds
        # also keep a version tag; the rest are untagged revisions (what -m would delete).
        tags: dict[str, tuple[str, list[str]]] = {"latest": (built[-1], built)}
        for i, mhex in enumerate(built):
            if i == len(built) - 1 or rng.random() < 0.8:
                tags[f"v1.{i}.{rng.randrange(10)}"] = (mhex, [mhex])
        for tag, (current, history) in tags.items():
            tdir = f"{rdir}/_manifests/tags/{tag}"
            w.put(f"{tdir}/current/link", _link(current))
            for mhex in history:
                w.put(f"{tdir}/index/sha256/{mhex}/link", _link(mhex))
            tag_files += 1 + len(history)
        stats.count("tags", len(tags))
    stats.count("manifests", n_manifests)
    stats.count("tag_links", tag_files)

    # Orphans: blobs nothing references; half of them with a _layers link (a push that never
    # finished with a manifest). Garbage-collect would sweep all of them.
    for n in range(n_orphans):
        h, _ = put_blob(rng.randbytes(64 + rng.randrange(512)))
        if n % 2 == 0:
            w.put(f"{repo_root}/{rng.choice(names)}/_layers/sha256/{h}/link", _link(h))
    stats.count("orphan_blobs", n_orphans)

    _gen_sessions(w, rng, names, repo_root, sessions, age_days, now, stats)
    return {
        "stats": stats,
        "repos": len(names),
        "blobs": pool_size + 2 * n_manifests + n_orphans,
        "referenced": referenced,
        "now": now,
    }


def _gen_sessions(
    w: Writer,
    rng: random.Random,
    names: list[str],
    repo_root: str,
    sessions: int,
    age_days: float,
    now: float,
    stats: Stats,
) -> None:
    if not sessions:
        return
    hot = rng.sample(names, max(1, len(names) // 4))
    weights = [rng.paretovariate(1.2) for _ in hot]
    owners = rng.choices(hot, weights, k=sessions)
    aged_base = now - age_days * 86400
    stale = 0
    for repo in owners:
        u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        sdir = f"{repo_root}/{repo}/_uploads/{u}"
        r = rng.random()
        fresh = r < _FRESH
        started = now - rng.uniform(60, 6 * 3600) if fresh else aged_base - rng.uniform(0, 86400)
        started = float(int(started))
        if r < _FRESH:
            kind = "fresh"
        elif r < _FRESH + _RESUMED:
            kind = "resumed"
        elif r < _FRESH + _RESUMED + _NO_STARTEDAT:
            kind = "no_startedat"
        elif r < _FRESH + _RESUMED + _NO_STARTEDAT + _POST_ONLY:
            kind = "post_only"
        else:
            kind = "abandoned"
        stats.count(f"sessions_{kind}")
        last = min(now, started + rng.uniform(1, 600))
        if kind == "resumed":
            last = now - rng.uniform(10, 600)
        if kind != "no_startedat":
            w.put(f"{sdir}/startedat", _rfc3339(started).encode())
            os.utime(f"{sdir}/startedat", (started, started))
        if kind == "post_only":
            w.put(f"{sdir}/data", b"")
            os.utime(f"{sdir}/data", (started, started))
            os.utime(sdir, (started, started))
        else:
            size = 512 * rng.randint(1, 16)  # a few KiB, appended by 1-3 PATCHes
            w.put(f"{sdir}/data", rng.randbytes(size))
            cuts = [*sorted(rng.sample(range(1, size), rng.randint(0, 2))), size]
            hdir = f"{sdir}/hashstates/sha256"
            for k, off in enumerate(cuts):
                t = started + (last - started) * (k + 1) / len(cuts)
                w.put(f"{hdir}/{off}", rng.randbytes(108))  # a marshalled sha256 state is ~108 bytes
                os.utime(f"{hdir}/{off}", (t, t))
            os.utime(f"{sdir}/data", (last, last))
            for d in (hdir, f"{sdir}/hashstates", sdir):
                os.utime(d, (last, last))
        if kind not in ("fresh", "resumed") and now - max(started, last) >= 86400:
            stale += 1
    stats.count("sessions_stale_24h", stale)


_GC_SUMMARY = re.compile(r"^(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion$", re.M)
_GC_MARK = re.compile(r"^\S+: marking (?:manifest|blob) (sha256:[0-9a-f]{64})\s*$", re.M)


def gc_check(root: str, referenced: set[str], total_blobs: int) -> str:
    """Run the registry's own garbage-collect --dry-run and compare its marks with ours."""
    with tempfile.TemporaryDirectory(prefix="gen-store-gc-") as tmp:
        config = os.path.join(tmp, "config.yml")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"version": "0.1", "storage": {"filesystem": {"rootdirectory": os.path.abspath(root)}}}, f)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        t0 = time.monotonic()
        proc = subprocess.run(
            [REGISTRY_BIN, "garbage-collect", "--dry-run", config],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gen_store: garbage-collect exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    m = _GC_SUMMARY.search(proc.stdout)
    if not m:
        raise SystemExit(f"gen_store: garbage-collect printed no summary:\n{proc.stdout[-2000:]}")
    marked = {d.removeprefix("sha256:") for d in _GC_MARK.findall(proc.stdout)}
    if marked != referenced or int(m[2]) != total_blobs - len(referenced):
        raise SystemExit(
            f"gen_store: garbage-collect disagrees: it marked {len(marked)} (we referenced {len(referenced)}, "
            f"{len(marked - referenced)} unexpected, {len(referenced - marked)} missed), "
            f"{m[2]} eligible (expected {total_blobs - len(referenced)})"
        )
    return f"gc-check ok: garbage-collect --dry-run marked {m[1]}, {m[2]} blobs eligible as expected ({took:.1f}s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Write a large, realistic, seeded docker-registry v2 filesystem store into ROOT "
        "(ROOT becomes the registry's rootdirectory: it will hold docker/registry/v2). "
        "Used by scripts/bench_plan.sh to benchmark debris plan/scan.",
    )
    p.add_argument("root", metavar="ROOT", help="empty or missing directory to fill")
    p.add_argument("--repos", type=int, default=3000, help="repositories (default 3000)")
    p.add_argument("--blobs", type=int, default=40000, help="blobs in all: layers, configs, manifests (default 40000)")
    p.add_argument("--sessions", type=int, default=6000, help="upload sessions (default 6000)")
    p.add_argument("--seed", type=int, default=1, help="random seed: same seed, same tree (default 1)")
    p.add_argument("--age-days", type=float, default=10.0, help="age of abandoned sessions in days (default 10)")
    p.add_argument("--now", metavar="RFC3339", help="pin the clock timestamps are relative to (default: now)")
    p.add_argument("--gc-check", action="store_true", help="verify with docker-registry garbage-collect --dry-run")
    a = p.parse_args(argv)
    if min(a.repos, a.blobs) < 1 or a.sessions < 0 or a.age_days < 0:
        p.error("--repos and --blobs must be >= 1, --sessions and --age-days >= 0")
    if os.path.exists(a.root) and (not os.path.isdir(a.root) or os.listdir(a.root)):
        p.error(f"{a.root} exists and is not an empty directory (refusing to mix a generated store with other data)")
    now = time.time() if a.now is None else datetime.fromisoformat(a.now.replace("Z", "+00:00")).timestamp()
    now = float(int(now))

    t0 = time.monotonic()
    os.makedirs(a.root, exist_ok=True)
    res = generate(a.root, repos=a.repos, blobs=a.blobs, sessions=a.sessions, seed=a.seed, age_days=a.age_days, now=now)
    took = time.monotonic() - t0
    s: Stats = res["stats"]
    k = s.by_kind
    print(
        f"gen_store: root={os.path.abspath(a.root)} files={s.files} dirs={s.dirs} bytes={s.bytes} "
        f"repos={res['repos']} blobs={res['blobs']} manifests={k['manifests']} tags={k['tags']} "
        f"layer_links={k['layer_links']} sessions={a.sessions} "
        f"stale_24h={k.get('sessions_stale_24h', 0)} fresh={k.get('sessions_fresh', 0)} "
        f"resumed={k.get('sessions_resumed', 0)} no_startedat={k.get('sessions_no_startedat', 0)} "
        f"post_only={k.get('sessions_post_only', 0)} seed={a.seed} now={_rfc3339(now)} took={took:.1f}s"
    )
    if a.gc_check:
        print(gc_check(a.root, res["referenced"], res["blobs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
