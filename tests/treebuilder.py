"""Builds registry filesystem trees by hand for tests that need exact control of ages and shapes."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

V2 = "docker/registry/v2"


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def age_tree(path: Path, seconds: float) -> None:
    """Set mtime/atime of ``path`` and everything below it ``seconds`` into the past (no symlink following)."""
    ts = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (ts, ts), follow_symlinks=False)
    os.utime(path, (ts, ts), follow_symlinks=False)


@dataclass
class Tree:
    root: Path

    @property
    def v2(self) -> Path:
        return self.root / V2

    def session(
        self,
        repo: str,
        *,
        age: float = 0,
        data: bytes = b"x" * 1000,
        hashstates: int = 1,
        startedat: bytes | None = None,
        upload_id: str | None = None,
    ) -> tuple[str, Path]:
        """An upload session as the filesystem driver leaves it; ``age`` seconds idle."""
        uid = upload_id or str(uuid.uuid4())
        d = self.v2 / "repositories" / repo / "_uploads" / uid
        (d / "hashstates" / "sha256").mkdir(parents=True)
        started = time.time() - age
        (d / "startedat").write_bytes(rfc3339(started).encode() if startedat is None else startedat)
        (d / "data").write_bytes(data)
        for n in range(hashstates):
            (d / "hashstates" / "sha256" / str(n * 1000)).write_bytes(b"state")
        age_tree(d, age)
        return uid, d

    def blob(self, content: bytes) -> str:
        hx = hashlib.sha256(content).hexdigest()
        d = self.v2 / "blobs" / "sha256" / hx[:2] / hx
        d.mkdir(parents=True, exist_ok=True)
        (d / "data").write_bytes(content)
        return f"sha256:{hx}"

    def link(self, repo: str, kind: str, digest: str, tag: str | None = None) -> Path:
        """kind: layer | revision | tag (tag needs ``tag``)."""
        hx = digest.split(":", 1)[1]
        base = self.v2 / "repositories" / repo
        path = {
            "layer": base / "_layers" / "sha256" / hx / "link",
            "revision": base / "_manifests" / "revisions" / "sha256" / hx / "link",
            "tag": base / "_manifests" / "tags" / (tag or "latest") / "current" / "link",
        }[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest)
        return path

    def image(self, repo: str, tag: str = "latest", layers: int = 2) -> list[str]:
        """Blobs plus the links and tag a pushed image has (content is not a real manifest)."""
        digests = [self.blob(f"{repo}-{tag}-layer-{n}".encode()) for n in range(layers)]
        for d in digests:
            self.link(repo, "layer", d)
        manifest = self.blob(f"manifest {repo}:{tag} {digests}".encode())
        self.link(repo, "revision", manifest)
        self.link(repo, "tag", manifest, tag)
        return [*digests, manifest]


def make_tree(root: Path) -> Tree:
    (root / V2 / "repositories").mkdir(parents=True, exist_ok=True)
    (root / V2 / "blobs").mkdir(parents=True, exist_ok=True)
    return Tree(root)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with what would reveal a change (type, size, mtime, link target)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            target = os.readlink(p) if os.path.islink(p) else None
            out[os.fsdecode(os.path.relpath(p, os.fsencode(root)))] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return out
