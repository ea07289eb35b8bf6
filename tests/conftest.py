import sys
from pathlib import Path

# Test helper modules (treebuilder, conformance, registry, ceph) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
