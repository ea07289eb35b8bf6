"""End to end on Debian's real docker-registry: real pushes, real abandoned uploads, then
`debris clean --confirm` while the registry keeps serving. Afterwards every image pulls and
verifies, a live upload completes, and the registry's own GC marks exactly what it marked before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from registry import (
    RegistryClient,
    RegistryServer,
    abandon_upload,
    age_session,
    garbage_collect_dry_run,
    make_layer,
    push_sample_images,
    requires_registry_tools,
    skopeo_copy_to_dir,
    upload_session_dir,
)
from treebuilder import age_tree

pytestmark = [pytest.mark.registry, requires_registry_tools]
DAY = 86400


def debris(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "debris", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    work = tmp_path_factory.mktemp("work")
    with RegistryServer(rootdirectory=root, workdir=work) as reg:
        c = RegistryClient(reg.url)
        images = push_sample_images(c, chunk_size=7000)

        # Real debris: abandoned sessions (POST only; POST + PATCH), and a cancelled one, which 2.8
        # leaves as hashstates/sha256/0 with no startedat.
        abandoned = {
            ("library/alpine", abandon_upload(c, "library/alpine")),
            ("team/sub/app", abandon_upload(c, "team/sub/app", [os.urandom(10_000), os.urandom(5_000)])),
            ("shared/one", abandon_upload(c, "shared/one", [b"x" * 3000])),
            ("multi/arch", abandon_upload(c, "multi/arch", [b"y" * 100])),
        }
        for repo, uid in abandoned:
            age_session(root, repo, uid, 3 * DAY)
        cancelled = c.start_upload("library/alpine")
        cancelled.patch(b"z" * 500)
        cancelled.cancel()
        cancelled_dir = upload_session_dir(root, "library/alpine", cancelled.uuid)
        assert cancelled_dir.is_dir() and not (cancelled_dir / "startedat").exists()
        age_tree(cancelled_dir, 3 * DAY)
        abandoned.add(("library/alpine", cancelled.uuid))

        # A live upload: started, one chunk sent, to be finished after the clean.
        live_layer = make_layer("live", os.urandom(30_000))
        live = c.start_upload("team/sub/app")
        live.patch(live_layer[:10_000])

        gc_before = garbage_collect_dry_run(reg.config_path)
        plan = debris("plan", str(root), "--json")
        clean = debris("clean", str(root), "--confirm", "--json")
        gc_after = garbage_collect_dry_run(reg.config_path)
        yield {
            "root": root, "reg": reg, "client": c, "images": images, "abandoned": abandoned, "live": live,
            "live_layer": live_layer, "gc_before": gc_before, "gc_after": gc_after, "plan": plan, "clean": clean,
            "work": work,
        }  # fmt: skip


def test_plan_lists_exactly_the_abandoned_sessions(world):
    assert world["plan"].returncode == 0, world["plan"].stderr
    plan = json.loads(world["plan"].stdout)
    assert {(i["repository"], i["upload_id"]) for i in plan["items"]} == world["abandoned"]
    assert {i["class"] for i in plan["items"]} == {"upload_session"}
    assert plan["active_sessions"]["count"] == 1
    assert plan["totals"]["upload_session"]["count"] == len(world["abandoned"])
    assert plan["unknown"]["count"] == 0
    for item in plan["items"]:
        assert item["paths"] and all(p.startswith("docker/registry/v2/repositories/") for p in item["paths"])
        assert item["bytes"] == sum(f["size"] for f in item["files"])


def test_clean_deletes_them_and_nothing_else(world):
    assert world["clean"].returncode == 0, world["clean"].stderr
    result = json.loads(world["clean"].stdout)
    assert {(d["repository"], d["upload_id"]) for d in result["deleted"]} == world["abandoned"]
    assert result["failed"] == [] and result["skipped"] == []
    planned = json.loads(world["plan"].stdout)
    assert result["bytes_freed"] == planned["bytes"] >= 10_000 + 5_000 + 3_000 + 100
    for repo, uid in world["abandoned"]:
        assert not upload_session_dir(world["root"], repo, uid).exists()
    assert upload_session_dir(world["root"], "team/sub/app", world["live"].uuid).is_dir()


def test_every_image_still_pulls_and_verifies(world):
    c = world["client"]
    for repo, tag in world["images"]:
        c.verify_image(repo, tag)
    for n, (repo, tag) in enumerate(world["images"]):
        skopeo_copy_to_dir(world["reg"].image_ref(repo, tag), world["work"] / f"pull{n}")


def test_gc_marks_the_same_set_as_before(world):
    before, after = world["gc_before"], world["gc_after"]
    assert after.marked == before.marked
    assert after.eligible_blobs == before.eligible_blobs == set()
    assert after.marked_by_repo == before.marked_by_repo


def test_live_upload_completes_after_the_clean(world):
    c, live, layer = world["client"], world["live"], world["live_layer"]
    from registry import sha256_digest

    digest = live.complete(sha256_digest(layer), final_chunk=layer[10_000:])
    assert digest == sha256_digest(layer)
    c.push_image("team/sub/app", "after-clean", [layer], kind="oci")
    c.verify_image("team/sub/app", "after-clean")
    skopeo_copy_to_dir(world["reg"].image_ref("team/sub/app", "after-clean"), world["work"] / "live")


def test_second_clean_has_nothing_to_do(world):
    again = debris("plan", str(world["root"]), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to delete" in again.stdout
