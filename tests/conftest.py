import sys
from pathlib import Path

# Test helper modules (treebuilder, conformance, registry, ceph) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture(scope="session")
def ceph(tmp_path_factory):
    """One throw-away Ceph RGW for every test that needs one (bring-up ~2 s; buckets isolate tests)."""
    from ceph import CephCluster

    cluster = CephCluster.start(tmp_path_factory.mktemp("ceph"))
    try:
        yield cluster
    finally:
        cluster.stop()
