"""Human output: tables (tabulate), sizes and ages (humanize). Machine output is each report's to_json."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TextIO

from debris.apply import ApplyResult
from debris.audit import AuditResult
from debris.inventory import ScanReport, UnknownReport
from debris.layout import Kind
from debris.plan import Plan, format_time
from debris.policy import format_duration

DEFAULT_ROWS = 50


def size(n: int) -> str:
    import humanize

    return humanize.naturalsize(n, binary=True)


def ago(t: datetime, now: datetime) -> str:
    import humanize

    return humanize.naturaldelta(now - t) + " ago"


def table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def dump_json(data: dict, out: TextIO | None = None) -> None:
    from debris import jsonio

    jsonio.dump(data, out or sys.stdout)


def _more(total: int, rows: int) -> list[str]:
    """The line that says a list was cut at ``rows``, if it was."""
    return [f"  ... {total - rows} more (--json lists all)"] if total > rows else []


def _unknown_lines(u: UnknownReport, rows: int) -> list[str]:
    if not u.count:
        return []
    measured = f"{size(u.bytes)}" + (f" + {u.unwalked_dirs} directory(ies) not walked" if u.unwalked_dirs else "")
    lines = [f"\n{u.count} unknown path(s), {measured}: never touched (not the registry's layout)"]
    lines += [f"  {p}" for p in u.sample[:rows]]
    if u.count > min(rows, len(u.sample)):
        lines.append(f"  ... {u.count - min(rows, len(u.sample))} more (--json lists up to {len(u.sample)})")
    return lines


def scan_text(r: ScanReport, store_url: str, rows: int = DEFAULT_ROWS) -> str:
    body = [
        [k.value, f"{t.count:,}", size(t.bytes)] for k, t in sorted(r.by_class.items(), key=lambda kv: -kv[1].bytes)
    ]
    out = [
        f"store {store_url}",
        table(body, ["class", "files", "size"]),
        f"\n{len(r.sessions):,} upload session(s); {size(r.total_bytes)} in all",
    ]
    if r.by_repository:
        repo_rows = []
        for repo, per in sorted(r.by_repository.items()):
            repo_rows.append(
                [
                    repo,
                    f"{sum(t.count for t in per.values()):,}",
                    size(sum(t.bytes for t in per.values())),
                    ", ".join(f"{k.value} {size(t.bytes)}" for k, t in sorted(per.items())),
                ]
            )
        out += ["", table(repo_rows, ["repository", "files", "size", "by class"])]
    out += _unknown_lines(r.unknown, rows)
    out += _error_lines(r.problems.errors)
    return "\n".join(out)


def scan_json(r: ScanReport, store_url: str) -> dict:
    def totals(d):
        return {k.value: {"count": t.count, "bytes": t.bytes} for k, t in sorted(d.items())}

    data = {
        "store": store_url,
        "totals": totals(r.by_class),
        "sessions": len(r.sessions),
        "bytes": r.total_bytes,
        "unknown": {
            "count": r.unknown.count,
            "bytes": r.unknown.bytes,
            "paths": r.unknown.sample,
            "truncated": r.unknown.truncated,
        },
        "errors": r.problems.errors,
    }
    if r.by_repository:
        data["by_repository"] = {repo: totals(per) for repo, per in sorted(r.by_repository.items())}
    return data


def _error_lines(errors: list[str]) -> list[str]:
    if not errors:
        return []
    return [f"\n{len(errors)} path(s) could not be read (exit code 3):"] + [f"  {e}" for e in errors[:DEFAULT_ROWS]]


def plan_text(plan: Plan, now: datetime, rows: int = DEFAULT_ROWS) -> str:
    p = plan.policy
    head = (
        f"plan for {plan.store_url} at {format_time(plan.created_at)}: "
        f"include {','.join(sorted(k.value for k in p.include))}, older than {format_duration(p.older_than)}"
    )
    out = [head]
    if p.probe_repos:
        out.append(f"probe repositories {', '.join(p.probe_repos)}: older than {format_duration(p.probe_older_than)}")
    if not plan.items:
        out.append("\nnothing to delete")
    else:
        shown = sorted(plan.items, key=lambda i: -i.bytes)[:rows]
        body = [
            [
                i.kind.value,
                i.repository or "-",
                (i.upload_id or i.paths[0].rsplit("/", 1)[-1])[:36],
                f"{len(i.files)}" + (f" + {len(i.multiparts)} multipart" if i.multiparts else ""),
                size(i.bytes),
                ago(i.last_activity, now),
                ",".join(i.flags),
            ]
            for i in shown
        ]
        out += ["", table(body, ["class", "repository", "upload id / file", "files", "size", "last activity", "flags"])]
        if len(plan.items) > rows:
            out.append(f"... {len(plan.items) - rows} more item(s) (largest shown; --json or --out lists all)")
        totals = [[k, f"{t['count']:,}", size(t["bytes"])] for k, t in plan.totals().items()]
        out += ["", table(totals, ["class", "items", "size"])]
        repos = sorted(plan.by_repository().items(), key=lambda kv: -kv[1]["bytes"])
        if len(repos) > 1:
            repo_rows = [[r or "-", f"{t['count']:,}", size(t["bytes"])] for r, t in repos[:rows]]
            out += ["", table(repo_rows, ["repository", "items", "size"])]
        out.append(f"\n{len(plan.items):,} item(s), {size(plan.bytes)} reclaimable")
    if plan.active_sessions:
        out.append(f"{plan.active_sessions:,} active upload session(s), {size(plan.active_bytes)}: left alone")
    if plan.held_back:
        out.append(f"\n{len(plan.held_back)} stale session(s) held back:")
        out += [f"  {h.repository}/_uploads/{h.upload_id}: {h.reason}" for h in plan.held_back[:rows]]
    out += _unknown_lines(plan.unknown, min(rows, 20))
    out += _error_lines(plan.errors)
    return "\n".join(out)


def apply_text(result: ApplyResult, rows: int = DEFAULT_ROWS) -> str:
    out = []
    verb = "deleted" if result.confirmed else "would delete"
    done = result.with_status("deleted" if result.confirmed else "would_delete")
    if done:
        body = [
            [o.item.kind.value, o.item.repository or "-", o.item.label().rsplit("/", 1)[-1][:36], size(o.item.bytes)]
            for o in done[:rows]
        ]
        out += [table(body, ["class", "repository", "upload id / file", "size"])]
        if len(done) > rows:
            out.append(f"... {len(done) - rows} more")
    for status, title in (("skipped", "skipped"), ("failed", "FAILED")):
        items = result.with_status(status)
        if items:
            out.append(f"\n{len(items)} {title}:")
            out += [f"  {o.item.label()}: {o.reason}" for o in items[:rows]]
            out += _more(len(items), rows)
    out += _error_lines(result.errors)
    if result.confirmed:
        summary = f"\n{verb} {len(done)} item(s), {size(result.bytes_freed)} freed"
    else:
        summary = f"\n{verb} {len(done)} item(s), {size(sum(o.item.bytes for o in done))}: dry run, nothing deleted (add --confirm)"
    counts = f"; {len(result.with_status('skipped'))} skipped, {len(result.with_status('failed'))} failed"
    out.append(summary + counts + ("; INTERRUPTED" if result.interrupted else ""))
    return "\n".join(out).lstrip("\n")


def audit_text(result: AuditResult, store_url: str, rows: int = DEFAULT_ROWS) -> str:
    mode = "garbage-collect --delete-untagged" if result.delete_untagged else "garbage-collect"
    out = [
        f"store {store_url}: what {mode} would delete (nothing was deleted)",
        table(
            [
                ["blobs that stay (manifests included)", f"{result.blobs_marked:,}", ""],
                ["blobs eligible", f"{len(result.blobs_eligible):,}", size(result.bytes_reclaimable)],
                ["manifests eligible", f"{len(result.manifests_eligible):,}", ""],
            ],
            ["", "count", "reclaimable"],
        ),
    ]
    repo_rows = [[r, size(b)] for r, b in sorted(result.by_repository.items(), key=lambda kv: -kv[1]) if b]
    if repo_rows:
        out += ["", table(repo_rows[:rows], ["repository", "frees alone"])]
        out += _more(len(repo_rows), rows)
    if result.manifests_eligible:
        out += ["", "manifests eligible:"] + [f"  {m}" for m in result.manifests_eligible[:rows]]
        out += _more(len(result.manifests_eligible), rows)
    if result.problems:
        out += ["", f"{len(result.problems)} problem(s) garbage-collect does not see:"]
        prob_rows = [[p.kind, p.repository or "", p.digest or "", p.detail] for p in result.problems[:rows]]
        out.append(table(prob_rows, ["problem", "repository", "digest", "detail"]))
        out += _more(len(result.problems), rows)
    d = result.debris
    if d:
        sessions = d["totals"].get(Kind.UPLOAD_SESSION.value, {"bytes": 0})["bytes"]
        multipart = d["totals"].get(Kind.MULTIPART_UPLOAD.value, {"bytes": 0})["bytes"]
        out.append(
            f"\ndebris (never touched by garbage-collect): {d['sessions']:,} upload session(s), "
            f"{size(sessions + multipart)}; {d['unknown']:,} unknown path(s) (see `debris scan`)"
        )
    return "\n".join(out)
