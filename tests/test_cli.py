"""The CLI contract: commands, JSON shapes, plan files and documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from treebuilder import make_tree, snapshot

DAY = 86400


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "debris", *args], capture_output=True, text=True, input=stdin, timeout=60
    )


@pytest.fixture
def tree(tmp_path):
    t = make_tree(tmp_path / "root")
    t.image("library/alpine")
    t.stale_id, t.stale_dir = t.session("library/alpine", age=3 * DAY)
    t.session("nested/repo/x", age=2 * DAY)
    t.session("library/alpine", age=60)
    (t.v2 / "repositories" / "library" / "alpine" / "_uploads" / "not-a-uuid").mkdir()
    return t


def test_scan_json(tree):
    r = run("scan", str(tree.root), "--json", "--by-repo")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["totals"]["upload_session"]["count"] == 9
    assert data["totals"]["blob"]["count"] == 3
    assert data["sessions"] == 3
    assert set(data["by_repository"]) == {"library/alpine", "nested/repo/x"}
    assert data["by_repository"]["library/alpine"]["layer_link"]["count"] == 2


def test_plan_json_contract(tree):
    r = run("plan", str(tree.root), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["items"]) == 2
    for item in data["items"]:
        assert set(item) >= {"class", "repository", "paths", "bytes", "last_activity"}
        assert item["last_activity"].endswith("Z")
    assert data["totals"] == {"upload_session": {"count": 2, "bytes": sum(i["bytes"] for i in data["items"])}}
    assert data["unknown"]["paths"] == ["docker/registry/v2/repositories/library/alpine/_uploads/not-a-uuid/"]


def test_plan_human_output_and_detailed_exitcode(tree):
    r = run("plan", str(tree.root), "--detailed-exitcode")
    assert r.returncode == 4
    assert "upload_session" in r.stdout and "reclaimable" in r.stdout and "not-a-uuid" in r.stdout
    r = run("plan", str(tree.root), "--older-than", "30d", "--detailed-exitcode")
    assert r.returncode == 0 and "nothing to delete" in r.stdout


def test_plan_file_then_apply(tree, tmp_path):
    planfile = tmp_path / "plan.json"
    r = run("plan", str(tree.root), "--out", str(planfile))
    assert r.returncode == 0 and planfile.exists()
    before = snapshot(tree.root)
    dry = run("apply", str(planfile), "--json")
    assert dry.returncode == 0 and snapshot(tree.root) == before
    assert len(json.loads(dry.stdout)["would_delete"]) == 2
    real = run("apply", str(planfile), "--confirm", "--json")
    data = json.loads(real.stdout)
    assert real.returncode == 0 and len(data["deleted"]) == 2 and data["bytes_freed"] > 0
    assert not tree.stale_dir.exists()


def test_plan_to_stdout_and_apply_from_stdin(tree):
    r = run("plan", str(tree.root), "--out", "-")
    assert r.returncode == 0
    assert json.loads(r.stdout)["format"] == "debris-plan/1"
    assert "reclaimable" in r.stderr  # people still see the table
    a = run("apply", "-", "--confirm", "--json", stdin=r.stdout)
    assert a.returncode == 0 and len(json.loads(a.stdout)["deleted"]) == 2


def test_clean_dry_run_by_default(tree):
    before = snapshot(tree.root)
    r = run("clean", str(tree.root))
    assert r.returncode == 0 and "dry run" in r.stdout
    assert snapshot(tree.root) == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["plan", "{root}", "--older-than", "10m"], 2, "under 15m"),
        (["plan", "{root}", "--older-than", "soon"], 2, "invalid duration"),
        (["plan", "{root}", "--include", "blob"], 2, "not a deletable class"),
        (["plan", "{root}", "--probe-repo", "library/alpine"], 2, "must be empty"),
        (["plan", "{root}", "--probe-repo", "Bad Name"], 2, "not a valid repository"),
        (["plan", "{root}/docker"], 1, "did you mean"),
        (["plan", "{root}/nope"], 1, "does not exist"),
        (["plan", "{root}", "--out", "{root}/plan.json"], 2, "inside the store"),
        (["plan"], 2, "missing STORE"),
        (["plan", "{root}", "--bogus"], 2, "No such option"),
        (["apply", "{root}/missing.json"], 1, "cannot read plan"),
    ],
)
def test_errors_are_one_line_with_documented_codes(tree, args, code, message):
    r = run(*[a.format(root=tree.root) for a in args])
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_tampered_plan_file_exits_1_and_deletes_nothing(tree, tmp_path):
    planfile = tmp_path / "plan.json"
    run("plan", str(tree.root), "--out", str(planfile))
    data = json.loads(planfile.read_text())
    blob = next(k for k in snapshot(tree.root) if k.endswith("/data") and "/blobs/" in k)
    data["items"][0]["files"][0]["path"] = data["items"][0]["paths"][0] = blob
    planfile.write_text(json.dumps(data))
    before = snapshot(tree.root)
    r = run("apply", str(planfile), "--confirm")
    assert r.returncode == 1 and "plan refused" in r.stderr and "parses as blob" in r.stderr
    assert snapshot(tree.root) == before
    planfile.write_text("{not json")
    assert run("apply", str(planfile), "--confirm").returncode == 1


def test_apply_with_store_mismatch_is_refused(tree, tmp_path):
    other = make_tree(tmp_path / "other")
    planfile = tmp_path / "plan.json"
    run("plan", str(tree.root), "--out", str(planfile))
    r = run("apply", str(planfile), "--store", str(other.root), "--confirm")
    assert r.returncode == 1 and "made for" in r.stderr


def test_registry_config_option(tree, tmp_path):
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tree.root}\n")
    r = run("plan", "--registry-config", str(cfg), "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["items"]) == 2


def test_failed_delete_exits_3(tree, tmp_path, monkeypatch):
    """A delete that fails is counted, reported and changes the exit code."""
    from typer.testing import CliRunner

    from debris.cli import app
    from debris.stores.local import LocalStore

    def broken(self, key, expected):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(LocalStore, "remove_file", broken)
    r = CliRunner().invoke(app, ["clean", str(tree.root), "--confirm", "--json"])
    assert r.exit_code == 3
    data = json.loads(r.stdout)
    assert len(data["failed"]) == 2 and "Read-only file system" in data["failed"][0]["reason"]
    assert tree.stale_dir.exists()


def test_boto3_is_not_imported_for_a_local_store(tree):
    code = (
        "import sys; from debris.cli import main; sys.argv=['debris','plan',sys.argv[1],'--json'];\n"
        "try:\n  main()\nexcept SystemExit:\n  pass\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tree.root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("command", ["scan", "plan", "apply", "clean"])
def test_help_renders(command):
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout and "--json" in r.stdout


def test_every_command_that_opens_a_store_takes_the_s3_options():
    """A STORE argument can be rgw://, which needs --endpoint-url: a command without the S3 options
    could not open it (audit once shipped without them)."""
    import inspect

    from debris.cli import app

    s3_options = {"endpoint_url", "region", "profile", "ca_bundle", "no_verify_tls", "path_style"}
    opening = [c for c in app.registered_commands if "store" in inspect.signature(c.callback).parameters]
    assert {c.callback.__name__ for c in opening} >= {"scan", "plan", "clean", "audit", "probe"}
    for command in opening:
        missing = s3_options - set(inspect.signature(command.callback).parameters)
        assert not missing, f"{command.callback.__name__} lacks {sorted(missing)}"
