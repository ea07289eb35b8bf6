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
    raise StoreError(f"registry config {path}: storage driver {driver!r} is not supported yet")
