"""Read a registry's own config.yml to find its storage (so on-call need not retype it)."""

from __future__ import annotations

from debris.stores.base import StoreError

DEFAULT_FS_ROOT = "/var/lib/registry"


def store_spec_from_config(path: str) -> tuple[str, dict]:
    """(STORE spec, store options) for the storage driver configured in ``path``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as e:
        raise StoreError(f"cannot read registry config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise StoreError(f"registry config {path} is not valid YAML: {e}") from None
    storage = config.get("storage") if isinstance(config, dict) else None
    if not isinstance(storage, dict):
        raise StoreError(f"registry config {path} has no storage section")
    drivers = [k for k in storage if k not in ("cache", "delete", "maintenance", "redirect", "tag")]
    if len(drivers) != 1:
        raise StoreError(f"registry config {path}: expected one storage driver, found {drivers or 'none'}")
    driver = drivers[0]
    params = storage[driver] or {}
    if driver == "filesystem":
        return "file://" + str(params.get("rootdirectory") or DEFAULT_FS_ROOT), {}
    if driver == "s3":
        return _s3_spec(path, params)
    raise StoreError(f"registry config {path}: storage driver {driver!r} is not supported yet")


def _s3_spec(path: str, params: dict) -> tuple[str, dict]:
    """The s3 driver's settings; credentials fall back to the AWS chain when not in the file."""
    bucket = params.get("bucket")
    if not bucket:
        raise StoreError(f"registry config {path}: storage.s3 has no bucket")
    root = str(params.get("rootdirectory") or "").strip("/")
    endpoint = params.get("regionendpoint") or None
    if endpoint and "://" not in str(endpoint):
        endpoint = ("https://" if _truthy(params.get("secure", True)) else "http://") + str(endpoint)
    options = {
        "endpoint_url": endpoint,
        "region": params.get("region") or None,
        "path_style": _truthy(params.get("forcepathstyle", False)),
        "access_key": params.get("accesskey") or None,
        "secret_key": params.get("secretkey") or None,
    }
    if _truthy(params.get("skipverify", False)):
        options["verify"] = False
    return (f"s3://{bucket}/{root}" if root else f"s3://{bucket}"), options


def _truthy(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
