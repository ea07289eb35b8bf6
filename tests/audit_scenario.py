"""One registry scenario for the audit tests: every shape of reference garbage-collect has to follow.

Pushed through the real registry (any storage driver): shared layers across repositories, a
re-tag that leaves a revision untagged, a manifest pushed by digest, an OCI index and a Docker
manifest list over images pushed by digest, a nested index whose inner index lost its tag, an
untagged index, and a manifest deleted by digest.
"""

from __future__ import annotations

from debris import audit

from registry import MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, GCResult, RegistryClient, make_layer

#: What ``debris audit --json`` always carries (S3 stores add ``requests``).
AUDIT_JSON_KEYS = frozenset(
    {"blobs_marked", "blobs_eligible", "manifests_eligible", "bytes_reclaimable", "by_repository", "debris", "problems"}
)


class Pushed:
    """What the scenario pushed, for explaining differences."""

    kept_index_children: set[str]  # manifests reached (at any depth) from a tagged index, untagged themselves
    untagged: set[str]  # revisions no tag reaches, directly or through an index
    untagged_index: str
    indexes: set[str]


def push_scenario(c: RegistryClient) -> Pushed:
    shared = make_layer("shared", b"shared base layer")
    # Shared layer across repositories; a re-tag leaves the old revision untagged.
    c.push_image("base", "latest", [shared, make_layer("base", b"base only")])
    app_old = c.push_image("app", "v1", [shared, make_layer("app1", b"app v1")])
    c.push_image("app", "v1", [shared, make_layer("app2", b"app v2")])  # v1's old revision: untagged
    app_loose = c.push_image("app", None, [make_layer("app-digest", b"pushed by digest")])  # never tagged
    # OCI index over two OCI images pushed by digest.
    kids = []
    for arch in ("amd64", "arm64"):
        d = c.push_image(
            "multi", None, [shared, make_layer(f"oci-{arch}", arch.encode())], kind="oci", architecture=arch
        )
        kids.append((d, len(c.get_manifest("multi", d).body), MT_OCI_MANIFEST, {"os": "linux", "architecture": arch}))
    oci_index = c.push_index("multi", "idx", kids, kind="oci")
    # Docker manifest list over two schema2 images pushed by digest.
    lkids = []
    for arch in ("amd64", "s390x"):
        d = c.push_image("multi", None, [make_layer(f"list-{arch}", arch.encode())], architecture=arch)
        lkids.append(
            (d, len(c.get_manifest("multi", d).body), MT_DOCKER_MANIFEST, {"os": "linux", "architecture": arch})
        )
    docker_list = c.push_index("multi", "list", lkids, kind="docker-list")
    # A nested index: an index (pushed, then untagged by re-tagging) under a tagged outer index.
    ikids = []
    d = c.push_image("nested", None, [make_layer("nested-kid", b"deep")])
    ikids.append(
        (d, len(c.get_manifest("nested", d).body), MT_DOCKER_MANIFEST, {"os": "linux", "architecture": "amd64"})
    )
    inner = c.push_index("nested", "inner", ikids, kind="oci")
    inner_size = len(c.get_manifest("nested", inner).body)
    outer = c.push_index(
        "nested", "outer", [(inner, inner_size, MT_OCI_INDEX, {"os": "linux", "architecture": "amd64"})]
    )
    # Move the "inner" tag away so only the outer index keeps the inner one.
    c.push_image("nested", "inner", [make_layer("nested-other", b"other")])
    # An untagged index whose children only it references (all eligible with -m, in both).
    ukid = c.push_image("loose", None, [make_layer("loose-kid", b"loose")])
    loose = c.push_index(
        "loose",
        "tmp",
        [
            (
                ukid,
                len(c.get_manifest("loose", ukid).body),
                MT_DOCKER_MANIFEST,
                {"os": "linux", "architecture": "amd64"},
            )
        ],
    )
    c.push_image("loose", "tmp", [make_layer("loose-new", b"retagged")])
    # A manifest deleted by digest: its revision link goes, its blobs become unreferenced.
    gone = c.push_image("gone", "t", [make_layer("gone", b"deleted image")])
    c.delete_manifest("gone", gone)
    pushed = Pushed()
    pushed.kept_index_children = {k[0] for k in kids} | {k[0] for k in lkids} | {inner} | {k[0] for k in ikids}
    pushed.untagged_index = loose
    pushed.untagged = {app_old, app_loose, loose, ukid}  # reached from no tag at all
    pushed.indexes = {oci_index, docker_list, outer}
    return pushed


def check_delete_untagged(pushed: Pushed, gc_m: GCResult, data: dict, children: dict[str, bytes]) -> None:
    """``debris audit --delete-untagged --json`` output (``data``) against ``garbage-collect --dry-run
    --delete-untagged`` on the scenario: never more aggressive, differing only by the kept index
    children (``children``: their manifest bodies) and what they reference, and reporting exactly that."""
    mine_b = set(data["blobs_eligible"])
    mine_m = {m.split("@", 1)[1] for m in data["manifests_eligible"]}
    assert mine_b <= gc_m.eligible_blobs
    assert mine_m <= gc_m.eligible_manifests
    # Every manifest GC would delete and debris would not is a child (at any depth) of a kept index.
    assert set(children) == pushed.kept_index_children
    assert gc_m.eligible_manifests - mine_m == pushed.kept_index_children
    # Every blob GC would delete and debris would not is one of those children or what they reference.
    explained = set(pushed.kept_index_children)
    for child, body in children.items():
        refs = audit.parse_manifest(child, body)
        explained |= refs.blobs | refs.manifests
        assert not (refs.blobs | refs.manifests) & mine_b  # debris keeps all a kept child references
    extra = gc_m.eligible_blobs - mine_b
    assert extra and extra <= explained
    # Outside kept indexes both agree: the re-tagged, pushed-by-digest and untagged-index revisions go.
    assert pushed.untagged_index in mine_m
    assert mine_m == pushed.untagged
    assert gc_m.eligible_manifests == pushed.untagged | pushed.kept_index_children
    # And debris says so: exactly what 2.8 would delete that a kept index still needs is reported.
    found = {(p["kind"], p["digest"]) for p in data["problems"]}
    assert {k for k, _ in found} == {"gc_deletes_kept_manifest", "gc_sweeps_kept_blob"}
    assert {d for k, d in found if k == "gc_deletes_kept_manifest"} == gc_m.eligible_manifests - mine_m
    assert {d for k, d in found if k == "gc_sweeps_kept_blob"} == extra
