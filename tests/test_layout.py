"""The grammar: every path kind, the traps in the layout, and a property over adversarial keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debris import layout
from debris.layout import SAFE_KINDS, Kind, Level

P = "docker/registry/v2"
UUID = "3f2a8c4e-1b2d-4c5e-9f60-7a8b9c0d1e2f"
HEX = "a" * 62 + "bc"
HEX2 = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("key", "kind", "repo", "upload_id"),
    [
        (f"{P}/repositories/alpine/_uploads/{UUID}/startedat", Kind.UPLOAD_SESSION, "alpine", UUID),
        (f"{P}/repositories/alpine/_uploads/{UUID}/data", Kind.UPLOAD_SESSION, "alpine", UUID),
        (f"{P}/repositories/alpine/_uploads/{UUID}/hashstates/sha256/0", Kind.UPLOAD_SESSION, "alpine", UUID),
        (f"{P}/repositories/alpine/_uploads/{UUID}/hashstates/sha512/5242880", Kind.UPLOAD_SESSION, "alpine", UUID),
        (f"{P}/repositories/a/b/c/_uploads/{UUID}/data", Kind.UPLOAD_SESSION, "a/b/c", UUID),
        (f"{P}/repositories/localhost:5000/app/_uploads/{UUID}/data", Kind.UPLOAD_SESSION, "localhost:5000/app", UUID),
        (f"{P}/repositories/my-org/my__app.x/_uploads/{UUID}/data", Kind.UPLOAD_SESSION, "my-org/my__app.x", UUID),
        (f"{P}/repositories/alpine/_uploads/{UUID}/startedat.{UUID}.tmp", Kind.TEMP_FILE, "alpine", UUID),
        (f"{P}/blobs/sha256/ab/{HEX[:0]}ab{HEX[2:]}/data", Kind.BLOB, None, None),
        (f"{P}/blobs/sha256/01/{HEX2}/data", Kind.BLOB, None, None),
        (f"{P}/blobs/sha256/01/{HEX2}/data.{UUID}.tmp", Kind.TEMP_FILE, None, None),
        (f"{P}/repositories/alpine/_layers/sha256/{HEX2}/link", Kind.LAYER_LINK, "alpine", None),
        (f"{P}/repositories/alpine/_layers/sha256/{HEX2}/link.{UUID}.tmp", Kind.TEMP_FILE, "alpine", None),
        (f"{P}/repositories/alpine/_manifests/revisions/sha256/{HEX2}/link", Kind.MANIFEST, "alpine", None),
        (f"{P}/repositories/alpine/_manifests/tags/latest/current/link", Kind.TAG, "alpine", None),
        (f"{P}/repositories/alpine/_manifests/tags/latest/index/sha256/{HEX2}/link", Kind.TAG, "alpine", None),
        # A tag may be called _uploads: it is still a tag, not an upload directory.
        (f"{P}/repositories/alpine/_manifests/tags/_uploads/current/link", Kind.TAG, "alpine", None),
        # Nested repositories: a/_uploads and a/b/_uploads coexist.
        (f"{P}/repositories/a/b/_uploads/{UUID}/data", Kind.UPLOAD_SESSION, "a/b", UUID),
    ],
)
def test_known_paths(key, kind, repo, upload_id):
    e = layout.parse(key)
    assert (e.kind, e.repository, e.upload_id) == (kind, repo, upload_id)


@pytest.mark.parametrize(
    "key",
    [
        f"{P}/repositories/alpine/_uploads/not-a-uuid/data",
        f"{P}/repositories/alpine/_uploads/{UUID.upper()}/data",  # ids are lower-case
        f"{P}/repositories/alpine/_uploads/{UUID}x/data",
        f"{P}/repositories/alpine/_uploads/{UUID}/other",
        f"{P}/repositories/alpine/_uploads/{UUID}/hashstates/md5/0",
        f"{P}/repositories/alpine/_uploads/{UUID}/hashstates/sha256/01",
        f"{P}/repositories/alpine/_uploads/{UUID}/hashstates/sha256/x",
        f"{P}/repositories/alpine/_uploads/{UUID}",  # a file where a directory belongs
        f"{P}/repositories/alpine/_uploads/data",
        f"{P}/repositories/Alpine/_uploads/{UUID}/data" + "/x",
        f"{P}/repositories/_uploads/{UUID}/data",  # no repository name at all
        f"{P}/repositories/alpine/_junk/{UUID}/data",
        f"{P}/repositories/al--pine_/_uploads/{UUID}/data",
        f"{P}/repositories/a/B/_uploads/{UUID}/data",  # upper case only allowed in a leading domain
        f"{P}/repositories/alpine/../alpine/_uploads/{UUID}/data",
        f"{P}/repositories/alpine/./_uploads/{UUID}/data",
        f"{P}/repositories/alpine//_uploads/{UUID}/data",
        f"/{P}/repositories/alpine/_uploads/{UUID}/data",
        f"x/{P}/repositories/alpine/_uploads/{UUID}/data",
        f"{P}/repositories/alpine/_uploads/{UUID}/data.{UUID}.tmp.{UUID}.tmp",
        f"{P}/repositories/alpine/_uploads/{UUID}/junk.{UUID}.tmp",
        f"{P}/blobs/sha256/ab/{HEX2}/data",  # prefix does not match the digest
        f"{P}/blobs/sha256/01/{HEX2[:-1]}/data",
        f"{P}/blobs/md5/01/{HEX2}/data",
        f"{P}/repositories/alpine/_layers/sha256/{HEX2}/data",
        f"{P}/repositories/alpine/_manifests/tags/-bad/current/link",
        "lost+found/x",
        "",
        f"{P}/repositories/alpine/_uploads/{UUID}/data\n",
        f"{P}/repositories/alpine/_uploads/{UUID}/data\x00",
        f"{P}/repositories/alp\udcffine/_uploads/{UUID}/data",  # non-UTF-8 byte, as os.fsdecode gives it
        f"{P}/repositories/alpi\u0131ne/_uploads/{UUID}/data",  # non-ASCII look-alike
        f"{P}/repositories/{'a' * 256}/_uploads/{UUID}/data",  # over 255 characters
    ],
)
def test_unknown_paths(key):
    assert layout.parse(key).kind is Kind.UNKNOWN


def test_folder_markers():
    assert layout.parse(f"{P}/repositories/alpine/_uploads/").kind is Kind.FOLDER_MARKER
    assert layout.parse("docker/").kind is Kind.FOLDER_MARKER
    assert layout.parse("a/../").kind is Kind.UNKNOWN


def test_session_directories():
    assert layout.parse_dir(f"{P}/repositories/a/b/_uploads/{UUID}").level is Level.SESSION
    assert layout.parse_dir(f"{P}/repositories/a/b/_uploads/{UUID}/hashstates/sha256").level is Level.HASHSTATE_ALG
    assert layout.parse_dir(f"{P}/repositories/a/b/_uploads").level is Level.UPLOADS
    assert layout.parse_dir(f"{P}/repositories/a/b/_manifests/tags/_uploads").level is Level.TAG_DIR


def test_repository_name_length_limit():
    name = "/".join(["abc"] * 63) + "/ab"  # 254 characters
    assert layout.is_valid_repository(name)
    assert layout.parse(f"{P}/repositories/{name}/_uploads/{UUID}/data").kind is Kind.UPLOAD_SESSION
    assert layout.parse(f"{P}/repositories/{name}xy/_uploads/{UUID}/data").kind is Kind.UNKNOWN


# -- property: no adversarial key is ever classified into a safe kind unless it matches an
# independent oracle written straight from the distribution path specs ------------------------

_REPO_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_MEMBER = r"(?:startedat|data|hashstates/(?:sha256|sha384|sha512)/(?:0|[1-9][0-9]*))"
ORACLE_SESSION = re.compile(
    rf"docker/registry/v2/repositories/(?P<repo>[^/_][^/]*(?:/{_REPO_COMPONENT})*)/_uploads/(?P<id>{_UUID_RE})/"
    rf"{_MEMBER}(?:\.{_UUID_RE}\.tmp)?"
)

COMPONENTS = [
    "docker",
    "registry",
    "v2",
    "repositories",
    "blobs",
    "_uploads",
    "_layers",
    "_manifests",
    "revisions",
    "tags",
    "current",
    "index",
    "link",
    "data",
    "startedat",
    "hashstates",
    "sha256",
    "md5",
    "0",
    "17",
    "01",
    UUID,
    UUID.upper(),
    UUID[:-1],
    f"data.{UUID}.tmp",
    f"link.{UUID}.tmp",
    "alpine",
    "a-b",
    "a__b",
    "A",
    "..",
    ".",
    "",
    "localhost:5000",
    "_",
    "x\udcff",
    "lost+found",
    HEX2,
    "01",
    "latest",
    "data\n",
    " data",
]


TEMPLATES = [
    f"{P}/repositories/team/app/_uploads/{UUID}/hashstates/sha256/0",
    f"{P}/repositories/app/_uploads/{UUID}/startedat",
    f"{P}/repositories/app/_manifests/tags/_uploads/current/link",
    f"{P}/repositories/app/_layers/sha256/{HEX2}/link",
    f"{P}/blobs/sha256/01/{HEX2}/data",
]
ADVERSARIAL = st.sampled_from(COMPONENTS) | st.text(min_size=0, max_size=6)


@st.composite
def keys(draw):
    """Random keys, half of them valid layout keys with a few components swapped for traps."""
    if draw(st.booleans()):
        parts = draw(st.sampled_from(TEMPLATES)).split("/")
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(parts) - 1))
            op = draw(st.sampled_from(["tweak", "replace", "insert", "delete"]))
            if op == "tweak" and parts[i]:
                j = draw(st.integers(0, len(parts[i]) - 1))
                parts[i] = parts[i][:j] + draw(st.sampled_from("Ag-_.:/\udcff\u0131 0")) + parts[i][j + 1 :]
            elif op == "replace":
                parts[i] = draw(ADVERSARIAL)
            elif op == "insert":
                parts.insert(i, draw(ADVERSARIAL))
            elif len(parts) > 1:
                del parts[i]
    else:
        parts = draw(st.lists(ADVERSARIAL, min_size=1, max_size=12))
    return "/".join(parts)


@settings(max_examples=2000, deadline=None)
@given(keys())
def test_only_oracle_matching_keys_are_safe(key):
    e = layout.parse(key)
    if e.kind in SAFE_KINDS and e.kind is not Kind.FOLDER_MARKER:
        if e.kind is Kind.TEMP_FILE and not e.in_session:
            # A temp file outside a session must sit next to a registry file: <target>.<uuid>.tmp
            assert re.fullmatch(rf".+/(?:data|link)\.{_UUID_RE}\.tmp", key), key
            return
        m = ORACLE_SESSION.fullmatch(key)
        assert m, key
        assert (m["repo"], m["id"]) == (e.repository, e.upload_id)
        assert layout.is_valid_repository(e.repository)


@settings(max_examples=500, deadline=None)
@given(keys())
def test_parse_is_the_fold_of_descend_and_classify(key):
    """The walker (descend/classify) and the gate (parse) agree on every key."""
    parts = layout.split_key(key)
    if parts is None or key.endswith("/"):
        return
    d = layout.STORE_ROOT
    for p in parts[:-1]:
        d = layout.descend(d, p)
    expected = layout.classify(d, parts[-1]) if d.level is not Level.UNKNOWN else Kind.UNKNOWN
    assert layout.parse(key).kind is expected
