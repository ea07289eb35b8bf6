"""Stores: where a registry keeps its bytes. ``open_store`` turns a STORE argument into one.

S3-family stores are imported only when asked for, so a local run never imports boto3.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from debris.stores.base import Store, StoreError

LAYOUT_MARKER = "docker/registry/v2"


class StoreSpecError(StoreError):
    """The STORE argument or registry config cannot name a store (a usage error)."""


def open_store(spec: str | None, registry_config: str | None = None, **options) -> Store:
    if registry_config:
        if spec:
            raise StoreSpecError("give either STORE or --registry-config, not both")
        from debris.registry_config import store_spec_from_config

        spec, config_options = store_spec_from_config(registry_config)
        options = {**config_options, **{k: v for k, v in options.items() if v is not None}}
    if not spec:
        raise StoreSpecError("missing STORE: a directory, file://PATH, or --registry-config FILE")
    parsed = urlparse(spec)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else spec
        return open_local(path)
    if parsed.scheme in ("s3", "rgw"):
        if not parsed.netloc:
            raise StoreSpecError(f"{spec!r} names no bucket: use {parsed.scheme}://BUCKET[/ROOTDIR]")
        return open_s3(parsed.scheme, parsed.netloc, unquote(parsed.path), options)
    raise StoreSpecError(
        f"unsupported store {spec!r}: use a directory, file://PATH, s3://BUCKET[/ROOT] or rgw://BUCKET[/ROOT]"
    )


def open_s3(scheme: str, bucket: str, root: str, options: dict) -> Store:
    from debris.stores.s3 import RGWStore, S3Store

    known = {"endpoint_url", "region", "verify", "profile", "access_key", "secret_key", "path_style"}
    kwargs = {k: v for k, v in options.items() if k in known and v is not None}
    if scheme == "rgw" and not kwargs.get("endpoint_url"):
        raise StoreSpecError("rgw:// needs --endpoint-url (the radosgw address, e.g. http://127.0.0.1:7480)")
    cls = RGWStore if scheme == "rgw" else S3Store
    store = cls(bucket, root, **kwargs)
    store.check_layout()
    return store


def open_local(path: str) -> Store:
    from debris.stores.local import LocalStore

    root = os.path.realpath(path)
    if not os.path.isdir(os.path.join(root, LAYOUT_MARKER)):
        hint = ""
        norm = root.rstrip("/")
        for suffix in ("/docker/registry/v2", "/docker/registry", "/docker"):
            if norm.endswith(suffix):
                hint = f"; did you mean {norm[: -len(suffix)] or '/'}?"
                break
        if os.path.isdir(root):
            raise StoreError(
                f"{root} holds no {LAYOUT_MARKER}: pass the registry's rootdirectory "
                f"(the directory that holds docker/){hint}"
            )
    return LocalStore(root)
