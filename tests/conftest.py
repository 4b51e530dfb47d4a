"""Make `ansible_collections.apiary.cluster` (collections/ links to the repo root) and the node
runtime package `apiary` (runtime/src) importable from tests."""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(_ROOT, "collections"), os.path.join(_ROOT, "runtime", "src")):
    if _path not in sys.path:
        sys.path.append(_path)
