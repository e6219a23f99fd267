"""Synthetic reference files from the detector model, grouped in numbered immutable contexts.

``RefStore(root).best(pinned)`` gives a :class:`~products.refs.store.Context`;
``context.load(reftype, detector, substrt1, substrt2, subsize1, subsize2)`` the
arrays of one reference file cut to a subarray. docs/refs.md describes the
files, their units and the context rules.
"""

from products.refs.files import REFTYPES, applicable, model_class
from products.refs.store import Context, RefData, RefStore, context_name, refs_root

__all__ = ["REFTYPES", "Context", "RefData", "RefStore", "applicable", "context_name", "model_class",
           "refs_root"]
