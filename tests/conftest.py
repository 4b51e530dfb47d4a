"""Make `ansible_collections.apiary.cluster` importable (collections/ links to the repo root)."""
import os
import sys

_COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "collections")
if _COLLECTIONS not in sys.path:
    sys.path.append(_COLLECTIONS)
