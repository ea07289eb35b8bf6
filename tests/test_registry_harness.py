"""Checks of the real-registry harness (tests/registry.py) against Debian's docker-registry 2.8.

If the harness pushed broken images or mis-parsed the registry's GC, every debris test built on
it would prove nothing; these tests pin what the harness does and what the registry writes.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from pathlib import Path

import pytest

from registry import (
    MT_DOCKER_MANIFEST,
    MT_OCI_MANIFEST,
    STARTEDAT_FORMAT,
    RegistryClient,
    RegistryHTTPError,
    RegistryServer,
    abandon_upload,
    age_session,
    garbage_collect_dry_run,
    make_layer,
    parse_gc_output,
    requires_registry_tools,
    sha256_digest,
    skopeo_copy_to_dir,
    upload_session_dir,
)

pytestmark = [pytest.mark.registry, requires_registry_tools]

V2 = Path("docker/registry/v2")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("registry")
    with RegistryServer(rootdirectory=tmp / "root", workdir=tmp / "work") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: RegistryServer) -> RegistryClient:
    return RegistryClient(server.url)


@pytest.fixture(scope="module")
def pushed(client: RegistryClient) -> dict[str, object]:
    """Push every kind of image once; returns {"images": {name: (repo, ref)}, "layers": {...}}."""
    images: dict[str, tuple[str, str]] = {}
    layers: set[str] = set()

    def layer(name: str, size: int = 300) -> bytes:
        data = make_layer(name, os.urandom(size))  # random: gzip cannot shrink it
        layers.add(sha256_digest(data))
        return data

    images["docker-schema2"] = ("plain/docker", "v1")
    client.push_image("plain/docker", "v1", [layer("a"), layer("b")])

    images["oci-chunked"] = ("oci/app", "v1")
    client.push_image("oci/app", "v1", [layer("c", 2000), layer("d", 10)], kind="oci", chunked=True, chunk_size=512)

    for kind, index_kind, repo in (("oci", "oci", "multi/oci"), ("docker-schema2", "docker-list", "multi/docker")):
        children = []
        for arch in ("amd64", "arm64"):
            digest = client.push_image(repo, None, [layer(arch)], kind=kind, architecture=arch)
            manifest = client.get_manifest(repo, digest)
            children.append((digest, len(manifest.body), manifest.media_type, {"os": "linux", "architecture": arch}))
        client.push_index(repo, "latest", children, kind=index_kind)
        images[f"index-{index_kind}"] = (repo, "latest")

    shared = layer("shared")
    for repo in ("shared/one", "shared/two"):
        client.push_image(repo, "v1", [shared, layer(repo)])
        images[repo] = (repo, "v1")

    images["nested"] = ("team/sub/app", "1.0")
    digest = client.push_image("team/sub/app", "1.0", [layer("n")], kind="oci")
    images["nested-by-digest"] = ("team/sub/app", digest)
    return {"images": images, "layers": layers, "shared": sha256_digest(shared)}


IMAGE_NAMES = [
    "docker-schema2",
    "oci-chunked",
    "index-oci",
    "index-docker-list",
    "shared/one",
    "shared/two",
    "nested",
    "nested-by-digest",
]


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_verify_image(client: RegistryClient, pushed: dict, name: str) -> None:
    repo, ref = pushed["images"][name]
    client.verify_image(repo, ref)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_skopeo_pulls_image(server: RegistryServer, pushed: dict, name: str, tmp_path: Path) -> None:
    repo, ref = pushed["images"][name]
    dest = skopeo_copy_to_dir(server.image_ref(repo, ref), tmp_path / "dir")
    assert (dest / "manifest.json").is_file()


def test_index_children_are_pulled_by_skopeo(
    server: RegistryServer, client: RegistryClient, pushed: dict, tmp_path: Path
) -> None:
    """--all must bring every child, not just the host's platform."""
    repo, ref = pushed["images"]["index-oci"]
    children = json.loads(client.get_manifest(repo, ref).body)["manifests"]
    dest = skopeo_copy_to_dir(server.image_ref(repo, ref), tmp_path / "dir")
    for child in children:
        assert (dest / (child["digest"].split(":")[1] + ".manifest.json")).is_file()


def test_manifest_media_types(client: RegistryClient, pushed: dict) -> None:
    assert client.get_manifest(*pushed["images"]["docker-schema2"]).media_type == MT_DOCKER_MANIFEST
    assert client.get_manifest(*pushed["images"]["oci-chunked"]).media_type == MT_OCI_MANIFEST


def test_catalog_and_tags(client: RegistryClient, pushed: dict) -> None:
    repos = {repo for repo, _ in pushed["images"].values()}
    assert repos <= set(client.catalog())
    assert client.tags("team/sub/app") == ["1.0"]
    assert client.tags("multi/oci") == ["latest"]  # the children were pushed by digest


def test_shared_layer_stored_once_linked_twice(server: RegistryServer, pushed: dict) -> None:
    hexdigest = pushed["shared"].split(":")[1]
    v2 = server.rootdirectory / V2
    assert (v2 / "blobs/sha256" / hexdigest[:2] / hexdigest / "data").is_file()
    for repo in ("shared/one", "shared/two"):
        assert (v2 / "repositories" / repo / "_layers/sha256" / hexdigest / "link").read_text() == pushed["shared"]


def test_completed_uploads_leave_no_session(server: RegistryServer, pushed: dict) -> None:
    uploads = server.rootdirectory / V2 / "repositories/oci/app/_uploads"
    assert uploads.is_dir()
    assert list(uploads.iterdir()) == []


def test_abandoned_uploads_on_disk(server: RegistryServer, client: RegistryClient, pushed: dict) -> None:
    bare = abandon_upload(client, "plain/docker")
    chunked = abandon_upload(client, "team/sub/app", [b"hello", b"world"])
    now = time.time()
    for repo, uuid, size, offsets in (
        ("plain/docker", bare, 0, {"0"}),
        ("team/sub/app", chunked, 10, {"0", "5", "10"}),
    ):
        session = server.rootdirectory / V2 / "repositories" / repo / "_uploads" / uuid
        assert session == upload_session_dir(server.rootdirectory, repo, uuid)
        startedat = (session / "startedat").read_text()
        assert abs(calendar.timegm(time.strptime(startedat, STARTEDAT_FORMAT)) - now) < 5, startedat
        assert (session / "data").stat().st_size == size
        assert {p.name for p in (session / "hashstates/sha256").iterdir()} == offsets


def test_upload_session_api(tmp_path: Path) -> None:
    """On its own registry: the blob it leaves unreferenced would be GC-eligible in the shared one."""
    with RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work") as server:
        _check_upload_session_api(server, RegistryClient(server.url))


def _check_upload_session_api(server: RegistryServer, client: RegistryClient) -> None:
    upload = client.start_upload("plain/docker")
    assert upload.status() == "0-0"
    upload.patch(b"hello")
    assert upload.status() == "0-4"
    upload.patch(b"world")
    assert upload.status() == "0-9"
    digest = sha256_digest(b"helloworld")
    assert upload.complete(digest) == digest
    assert client.get_blob("plain/docker", digest) == b"helloworld"
    assert not upload_session_dir(server.rootdirectory, "plain/docker", upload.uuid).exists()


def test_cancel_leaves_an_orphan_hashstate(server: RegistryServer, client: RegistryClient) -> None:
    """2.8 quirk: DELETE removes the session, then its deferred Close writes hashstates/sha256/0
    again, so a cancelled session leaves a dir with no startedat (never purged by the registry)."""
    upload = client.start_upload("plain/docker")
    upload.patch(b"hello")
    upload.cancel()
    session = upload_session_dir(server.rootdirectory, "plain/docker", upload.uuid)
    assert sorted(str(p.relative_to(session)) for p in session.rglob("*")) == [
        "hashstates",
        "hashstates/sha256",
        "hashstates/sha256/0",
    ]
    with pytest.raises(RegistryHTTPError) as err:
        upload.status()
    assert err.value.status == 404 and err.value.codes == ["BLOB_UPLOAD_UNKNOWN"]


def test_stale_state_token_is_refused(client: RegistryClient) -> None:
    """Why Upload follows Location: a _state token signed for an older offset is rejected."""
    upload = client.start_upload("plain/docker")
    first_location = upload.location
    upload.patch(b"hello")
    with pytest.raises(RegistryHTTPError) as err:
        client.request("GET", first_location, expect=(204,))
    assert err.value.codes == ["BLOB_UPLOAD_INVALID"]


def test_age_session(server: RegistryServer, client: RegistryClient) -> None:
    uuid = abandon_upload(client, "oci/app", [b"abc", b"def"])
    session = upload_session_dir(server.rootdirectory, "oci/app", uuid)
    paths = [session, *session.rglob("*")]
    before = {p: os.lstat(p).st_mtime_ns for p in paths}
    week = 7 * 24 * 3600
    age_session(server.rootdirectory, "oci/app", uuid, week)
    week_ago = time.time() - week
    for p in paths:  # stat before reading startedat: a read would refresh its atime (relatime)
        st = os.lstat(p)
        if p.name == "startedat":  # rewritten, then moved back
            assert abs(st.st_mtime - week_ago) < 5
        else:
            assert st.st_mtime_ns == before[p] - week * 10**9, p
        assert st.st_atime < week_ago + 5, p
    startedat = calendar.timegm(time.strptime((session / "startedat").read_text(), STARTEDAT_FORMAT))
    assert abs(startedat - week_ago) < 5


def test_gc_dry_run_marks_every_pushed_blob(server: RegistryServer, client: RegistryClient, pushed: dict) -> None:
    abandon_upload(client, "shared/one", [b"debris"])
    gc = garbage_collect_dry_run(server.config_path)
    assert pushed["layers"] <= gc.marked
    assert gc.eligible_blobs == set() and gc.eligible_manifests == set()
    assert (gc.blobs_eligible, gc.manifests_eligible) == (0, 0)
    assert gc.blobs_marked == len(gc.marked)
    assert {repo for repo, _ in pushed["images"].values()} <= set(gc.repos)
    for repo, ref in pushed["images"].values():
        assert client.get_manifest(repo, ref).digest in gc.marked_by_repo[repo]


def test_gc_dry_run_reports_eligible(tmp_path: Path) -> None:
    with RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work") as srv:
        client = RegistryClient(srv.url)
        orphan = client.push_blob_monolithic("app", b"no manifest points here")
        untagged = client.push_image("app", None, [b"untagged layer"])
        tagged = client.push_image("app", "v1", [b"tagged layer"])
        deleted = client.push_image("app", "v2", [b"deleted layer"])
        client.delete_manifest("app", deleted)
        with pytest.raises(RegistryHTTPError) as err:
            client.get_manifest("app", "v2")
        assert err.value.status == 404
        assert client.tags("app") == ["v1"]

    gc = garbage_collect_dry_run(srv.config_path)  # GC reads storage; the server may be down
    assert {orphan, sha256_digest(b"deleted layer"), deleted} <= gc.eligible_blobs
    assert gc.blobs_eligible == len(gc.eligible_blobs) == 4  # + the deleted image's config
    assert {untagged, tagged} <= gc.marked

    gc = garbage_collect_dry_run(srv.config_path, delete_untagged=True)
    assert gc.eligible_manifests == {untagged} and gc.manifests_eligible == 1
    assert {orphan, untagged, sha256_digest(b"untagged layer")} <= gc.eligible_blobs
    assert tagged in gc.marked and untagged not in gc.marked


def test_verify_image_and_skopeo_detect_damage(tmp_path: Path) -> None:
    """The checks debris tests rely on must fail when a blob is gone or altered on disk (no
    blob descriptor cache is configured, so the registry sees the disk as it is)."""
    with RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work") as srv:
        client = RegistryClient(srv.url)
        missing, corrupt = b"layer to delete", b"layer to corrupt"
        client.push_image("gone", "v1", [missing])
        client.push_image("bent", "v1", [corrupt])
        blobs = srv.rootdirectory / V2 / "blobs/sha256"
        hex_missing = sha256_digest(missing).split(":")[1]
        (blobs / hex_missing[:2] / hex_missing / "data").unlink()
        hex_corrupt = sha256_digest(corrupt).split(":")[1]
        (blobs / hex_corrupt[:2] / hex_corrupt / "data").write_bytes(b"layer to c0rrupt")

        with pytest.raises(AssertionError, match="not served"):
            client.verify_image("gone", "v1")
        with pytest.raises(AssertionError, match="has content"):
            client.verify_image("bent", "v1")
        for repo in ("gone", "bent"):
            with pytest.raises(AssertionError, match="skopeo could not pull"):
                skopeo_copy_to_dir(srv.image_ref(repo, "v1"), tmp_path / repo)


def test_parse_gc_output_rejects_unknown_lines() -> None:
    good = "app\napp: marking manifest sha256:aa \n\n1 blobs marked, 0 blobs and 0 manifests eligible for deletion\n"
    assert parse_gc_output(good).marked == {"sha256:aa"}
    with pytest.raises(ValueError, match="unrecognised"):
        parse_gc_output(good + "something new: sha256:bb\n")
    with pytest.raises(ValueError, match="no summary"):
        parse_gc_output("app\n")


def test_pause_resume_restart_and_stop(tmp_path: Path) -> None:
    srv = RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work").start()
    try:
        digest = RegistryClient(srv.url).push_image("app", "v1", [b"layer"])
        srv.pause()
        with pytest.raises(OSError):
            RegistryClient(srv.url, timeout=0.5).catalog()
        srv.resume()
        RegistryClient(srv.url).verify_image("app", "v1")

        srv.stop()
        srv.start()  # same storage, new port
        RegistryClient(srv.url).verify_image("app", digest)

        proc = srv.proc
        srv.pause()
        srv.stop()  # must not hang on a stopped process
        assert proc.returncode is not None
        assert srv.proc is None
    finally:
        srv.stop()
    assert "response completed" in srv.log_path.read_text()


def test_readonly_refuses_pushes(tmp_path: Path) -> None:
    srv = RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work", readonly=True)
    with srv, pytest.raises(RegistryHTTPError) as err:
        RegistryClient(srv.url).start_upload("app")
    assert err.value.status == 405  # a plain-text "Method not allowed", no distribution error code


def test_config_and_environment(tmp_path: Path) -> None:
    """The settings the registry is given, read back from its config file and its /proc entry."""
    with RegistryServer(rootdirectory=tmp_path / "root", workdir=tmp_path / "work") as srv:
        config = json.loads(srv.config_path.read_text())
        environ = Path(f"/proc/{srv.pid}/environ").read_bytes().split(b"\0")
    assert config["http"]["addr"] == srv.host
    assert config["storage"]["delete"] == {"enabled": True}
    assert config["storage"]["maintenance"]["uploadpurging"] == {"enabled": False}
    assert not any(var.startswith(b"AWS_CA_BUNDLE=") for var in environ)

    purging = RegistryServer(rootdirectory=tmp_path, workdir=tmp_path, upload_purging={"age": "1h", "interval": "1m"})
    assert purging.config()["storage"]["maintenance"]["uploadpurging"] == {
        "age": "1h",
        "interval": "1m",
        "enabled": True,
    }
    with pytest.raises(ValueError):
        RegistryServer(rootdirectory=tmp_path, s3={"bucket": "b"})
