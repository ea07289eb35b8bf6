"""Property tests for the audit's mark and sweep, against two independent models.

Random registries (images, referrers with a ``subject``, indexes nested at any depth, several repositories sharing blobs,
tags, untagged revisions, repositories without ``_layers``) are audited with ``audit.audit``
and held against:

* what is really needed: the full closure of every root, written here from scratch. Nothing in
  it may ever be eligible (data loss if it were);
* a model of distribution 2.8's garbage-collect (each root and one level of what it references,
  OCI ``subject`` unknown to it; repositories without ``_layers`` never visited). debris is never more aggressive, and where
  the repositories all have ``_layers`` the difference is exactly what debris reports as
  ``gc_deletes_kept_manifest`` / ``gc_sweeps_kept_blob``.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from debris import audit


def _d(n: int, kind: str) -> str:
    return "sha256:" + hashlib.sha256(f"{kind}{n}".encode()).hexdigest()


@st.composite
def registries(draw):
    n_layers = draw(st.integers(1, 12))
    layers = [_d(i, "layer") for i in range(n_layers)]
    manifests: dict[str, audit.References] = {}
    order: list[str] = []  # manifests in creation order: an index only names earlier ones
    for i in range(draw(st.integers(1, 10))):
        if order and draw(st.booleans()):
            kids = draw(st.lists(st.sampled_from(order), min_size=1, max_size=3, unique=True))
            m = _d(i, "index")
            manifests[m] = audit.References(frozenset(), frozenset(kids))
        else:
            refs = draw(st.lists(st.sampled_from(layers), min_size=1, max_size=4, unique=True))
            m = _d(i, "image")
            # A referrer (signature, SBOM) names an earlier manifest as its subject.
            subject = frozenset(draw(st.lists(st.sampled_from(order), max_size=1)) if order else ())
            manifests[m] = audit.References(frozenset({_d(i, "config"), *refs}), subject, subject)
        order.append(m)
    blobs = {d: 10 for d in layers}
    blobs |= {d: 1 for m in manifests.values() for d in m.blobs}
    blobs |= {m: 2 for m in manifests}
    blobs |= {_d(i, "orphan"): 3 for i in range(draw(st.integers(0, 3)))}
    repositories: dict[str, audit.RepoLinks] = {}
    for r in range(draw(st.integers(1, 3))):
        revisions = draw(st.lists(st.sampled_from(order), min_size=1, max_size=len(order), unique=True))
        # The registry refuses an index whose children are not in the repository: add them.
        todo, present = list(revisions), set()
        while todo:
            m = todo.pop()
            if m not in present:
                present.add(m)
                todo += manifests[m].manifests
        tagged = draw(st.lists(st.sampled_from(sorted(present)), max_size=3, unique=True))
        layer_links = {d for m in present for d in manifests[m].blobs} if draw(st.booleans()) else set()
        repositories[f"repo{r}"] = audit.RepoLinks(
            has_layers=draw(st.integers(0, 4)) > 0,
            layers=layer_links,
            revisions={m: m for m in present},
            tags={f"t{i}": m for i, m in enumerate(tagged)},
        )
    return audit.Inventory(blobs=blobs, repositories=repositories, manifests=dict(manifests))


def _needed(inv: audit.Inventory, delete_untagged: bool) -> set[str]:
    """Everything a kept revision needs, at any depth (what must never be deleted)."""
    out: set[str] = set()
    for links in inv.repositories.values():
        roots = set(links.tags.values()) if delete_untagged and links.has_layers else set(links.revisions)
        stack = list(roots)
        while stack:
            m = stack.pop()
            if m in out:
                continue
            out.add(m)
            out |= inv.manifests[m].blobs
            stack += inv.manifests[m].manifests
    return out


def _gc_2_8(inv: audit.Inventory, delete_untagged: bool) -> tuple[set[str], set[str]]:
    """(blobs, manifests as repo@digest) that a model of 2.8's garbage-collect would delete."""
    marked: set[str] = set()
    deleted: set[str] = set()
    for repo, links in inv.repositories.items():
        if not links.has_layers:
            continue  # its catalog walk keys on _layers
        tagged = set(links.tags.values())
        for m in links.revisions:
            if delete_untagged and m not in tagged:
                deleted.add(f"{repo}@{m}")
                continue
            refs = inv.manifests[m]
            marked |= {m} | refs.blobs | (refs.manifests - refs.subject)  # 2.8 does not know subject
    return set(inv.blobs) - marked, deleted


@settings(max_examples=300, deadline=None)
@given(registries(), st.booleans())
def test_never_eligible_when_needed_never_more_aggressive_than_gc(inv, delete_untagged):
    r = audit.audit(inv, delete_untagged)
    eligible = set(r.blobs_eligible)
    eligible_manifests = set(r.manifests_eligible)
    assert not eligible & _needed(inv, delete_untagged)
    gc_blobs, gc_manifests = _gc_2_8(inv, delete_untagged)
    assert eligible <= gc_blobs
    assert eligible_manifests <= gc_manifests
    assert r.bytes_reclaimable == sum(inv.blobs[d] for d in eligible)
    assert r.blobs_marked == len(inv.blobs) - len(eligible)
    assert sum(r.by_repository.values()) <= r.bytes_reclaimable
    if all(links.has_layers for links in inv.repositories.values()):
        # Same rules as 2.8 but for index children; each difference is reported, nothing else.
        found = {(p.kind, p.repository, p.digest) for p in r.problems}
        assert {d for k, _, d in found if k == "gc_sweeps_kept_blob"} == gc_blobs - eligible
        assert {
            f"{repo}@{d}" for k, repo, d in found if k == "gc_deletes_kept_manifest"
        } == gc_manifests - eligible_manifests
        assert {k for k, _, _ in found} <= {"gc_sweeps_kept_blob", "gc_deletes_kept_manifest"}


@settings(max_examples=100, deadline=None)
@given(registries())
def test_what_is_unreferenced_everywhere_is_eligible(inv):
    """Not only safe but useful: a blob no revision reaches, in no careful repository, is eligible."""
    r = audit.audit(inv, delete_untagged=False)
    careful = {p.repository for p in r.problems if p.kind == "repository_without_layers"}
    assert careful == {name for name, links in inv.repositories.items() if not links.has_layers}
    assert set(r.blobs_eligible) == set(inv.blobs) - _needed(inv, delete_untagged=False)
