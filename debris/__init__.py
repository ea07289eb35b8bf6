"""debris: safely reclaim space from container-registry backing stores."""

__version__ = "0.1.0"
