"""Structural guarantees that a code review could miss: one delete gate, one-way data flow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "debris"

#: The store's destructive primitives: only the gate may call them.
STORE_PRIMITIVES = {"remove_file", "remove_files", "remove_empty_dir", "abort_multipart"}
#: Raw deletion calls: only store implementations may make them.
RAW_DELETES = {
    "unlink",
    "remove",
    "rmdir",
    "removedirs",
    "rmtree",
    "delete_object",
    "delete_objects",
    "abort_multipart_upload",
}


def _calls(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name:
                out.append((name, node.lineno))
    return out


def test_only_the_gate_calls_store_deletion_primitives():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "apply.py" or rel.startswith("stores/"):
            continue
        offenders += [f"{rel}:{line} {name}" for name, line in _calls(path) if name in STORE_PRIMITIVES]
    assert offenders == []


def test_only_stores_delete_raw():
    # cli.py removes its own half-written plan file (outside the store) on failure.
    allowed = {("cli.py", "unlink")}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("stores/"):
            continue
        offenders += [
            f"{rel}:{line} {name}" for name, line in _calls(path) if name in RAW_DELETES and (rel, name) not in allowed
        ]
    assert offenders == []


def test_the_grammar_the_planner_and_the_audit_do_no_io_of_their_own():
    # audit.py reads only through the Store it is given: no filesystem or network of its own.
    for module in ("layout.py", "plan.py", "policy.py", "audit.py"):
        source = (PACKAGE / module).read_text()
        tree = ast.parse(source)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"os", "io", "shutil", "subprocess", "boto3", "botocore", "socket", "pathlib"}, module
        assert "open(" not in source, module


def test_a_local_run_never_imports_boto3():
    code = (
        "import debris.cli, debris.stores.local, debris.inventory, debris.apply, debris.audit, debris.render, "
        "debris.forkwalk, sys; print('boto3' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
