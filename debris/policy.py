"""What a user allows debris to delete: classes, ages, probe repositories. Pure values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from debris.layout import Kind, is_valid_repository

#: Below this --older-than, an upload may simply be a slow push in progress.
MIN_OLDER_THAN = timedelta(minutes=15)
#: A probe cycle takes seconds; below this a probe's own upload could be cancelled under it.
MIN_PROBE_OLDER_THAN = timedelta(minutes=1)
DEFAULT_OLDER_THAN = timedelta(hours=24)
DEFAULT_PROBE_OLDER_THAN = timedelta(minutes=10)
#: A multipart upload onto blobs/ is a Move that failed mid-copy; a slow copy of a huge blob can take
#: long, so these wait far longer than upload sessions.
DEFAULT_BLOB_MULTIPART_OLDER_THAN = timedelta(days=7)
MIN_BLOB_MULTIPART_OLDER_THAN = timedelta(days=1)

#: Classes a user may --include. probe_repo is implied by --probe-repo, not included by name.
INCLUDABLE = (Kind.UPLOAD_SESSION, Kind.TEMP_FILE, Kind.MULTIPART_UPLOAD, Kind.FOLDER_MARKER)
DEFAULT_INCLUDE = frozenset({Kind.UPLOAD_SESSION})
#: On S3-family stores the parts of incomplete multipart uploads are most of the debris.
DEFAULT_INCLUDE_MULTIPART = frozenset({Kind.UPLOAD_SESSION, Kind.MULTIPART_UPLOAD})

_DURATION = re.compile(r"([0-9]+)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PolicyError(ValueError):
    """A policy the user asked for is not allowed (or not well-formed)."""


def parse_duration(text: str) -> timedelta:
    """'30s', '90m', '36h', '7d', '2w', or combinations such as '1h30m'."""
    s = text.strip().lower()
    pos, total = 0, 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise PolicyError(f"invalid duration {text!r}: use a number with s, m, h, d or w, e.g. 90m, 36h, 7d")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    for unit, n in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % n == 0:
            return f"{secs // n}{unit}"
    return f"{secs}s"


def parse_include(text: str | None, default: frozenset[Kind] = DEFAULT_INCLUDE) -> frozenset[Kind]:
    if text is None:
        return default
    kinds = set()
    for word in filter(None, (w.strip() for w in text.split(","))):
        try:
            kind = Kind(word)
        except ValueError:
            kind = None
        if kind not in INCLUDABLE:
            names = ", ".join(k.value for k in INCLUDABLE)
            raise PolicyError(f"--include: {word!r} is not a deletable class; choose from {names}")
        kinds.add(kind)
    if not kinds:
        raise PolicyError("--include: name at least one class")
    return frozenset(kinds)


@dataclass(frozen=True)
class Policy:
    include: frozenset[Kind] = DEFAULT_INCLUDE
    older_than: timedelta = DEFAULT_OLDER_THAN
    probe_repos: tuple[str, ...] = ()
    probe_older_than: timedelta = DEFAULT_PROBE_OLDER_THAN
    force: bool = False
    blob_multipart_older_than: timedelta = DEFAULT_BLOB_MULTIPART_OLDER_THAN

    def check(self) -> Policy:
        """Refuse what is unsafe without --force; return self."""
        for repo in self.probe_repos:
            if not is_valid_repository(repo):
                raise PolicyError(f"--probe-repo {repo!r} is not a valid repository name")
        if self.older_than < MIN_OLDER_THAN and not self.force:
            raise PolicyError(
                f"--older-than {format_duration(self.older_than)} is under "
                f"{format_duration(MIN_OLDER_THAN)}: a push in progress could lose its upload; add --force if you mean it"
            )
        if self.probe_repos and self.probe_older_than < MIN_PROBE_OLDER_THAN and not self.force:
            raise PolicyError(
                f"--probe-older-than {format_duration(self.probe_older_than)} is under "
                f"{format_duration(MIN_PROBE_OLDER_THAN)}; add --force if you mean it"
            )
        if self.blob_multipart_older_than < MIN_BLOB_MULTIPART_OLDER_THAN and not self.force:
            raise PolicyError(
                f"--blob-multipart-older-than {format_duration(self.blob_multipart_older_than)} is under "
                f"{format_duration(MIN_BLOB_MULTIPART_OLDER_THAN)}: a slow copy of a large blob could be aborted; add --force if you mean it"
            )
        return self

    def threshold_for(self, repository: str | None) -> tuple[Kind, timedelta]:
        """The plan class and age threshold that apply to an upload session in ``repository``."""
        if repository in self.probe_repos:
            return Kind.PROBE_REPO, self.probe_older_than
        return Kind.UPLOAD_SESSION, self.older_than

    def allows(self, kind: Kind) -> bool:
        if kind is Kind.PROBE_REPO:
            return bool(self.probe_repos)
        return kind in self.include

    def to_json(self) -> dict:
        return {
            "include": sorted(k.value for k in self.include),
            "older_than": format_duration(self.older_than),
            "probe_repos": list(self.probe_repos),
            "probe_older_than": format_duration(self.probe_older_than),
            "blob_multipart_older_than": format_duration(self.blob_multipart_older_than),
            "force": self.force,
        }

    @classmethod
    def from_json(cls, data: dict) -> Policy:
        """Rebuild a policy from an (untrusted) plan file."""
        if not isinstance(data, dict):
            raise PolicyError("plan policy is not an object")
        try:
            include = data["include"]
            probe_repos = data.get("probe_repos", [])
            if not isinstance(include, list) or not isinstance(probe_repos, list):
                raise PolicyError("plan policy: include and probe_repos must be lists")
            return cls(
                include=parse_include(",".join(map(str, include))),
                older_than=parse_duration(str(data["older_than"])),
                probe_repos=tuple(str(r) for r in probe_repos),
                probe_older_than=parse_duration(str(data.get("probe_older_than", "10m"))),
                force=bool(data.get("force", False)),
                blob_multipart_older_than=parse_duration(str(data.get("blob_multipart_older_than", "7d"))),
            )
        except KeyError as e:
            raise PolicyError(f"plan policy lacks {e.args[0]!r}") from None
