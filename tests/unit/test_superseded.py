"""A product rebuilt in place keeps its earlier build, and the archive finds the announced bytes there."""

from __future__ import annotations

import hashlib
from pathlib import Path

from consumers.archive import store
from consumers.archive.catalogue import _candidates
from products.superseded import keep_superseded, superseded_paths


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_rebuilds_are_kept_newest_first(tmp_path: Path):
    path = tmp_path / "jw01234-o001_t001_nircam_f200w_i2d.fits"
    assert keep_superseded(path) is None  # nothing built yet
    for k in range(3):
        keep_superseded(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"build %d" % k)
        tmp.replace(path)  # what an atomic rebuild does
    assert [p.name for p in superseded_paths(path)] == [
        "jw01234-o001_t001_nircam_f200w_i2d.v2.fits", "jw01234-o001_t001_nircam_f200w_i2d.v1.fits"]
    assert [p.read_bytes() for p in superseded_paths(path)] == [b"build 1", b"build 0"]
    assert path.read_bytes() == b"build 2"


def test_the_archive_secures_an_announced_build_that_was_rebuilt_since(tmp_path: Path):
    products = tmp_path / "products"
    products.mkdir()
    path = products / "jw01234-o001_t001_nircam_f200w_i2d.fits"
    path.write_bytes(b"first build")
    announced = _sha(b"first build")
    keep_superseded(path)
    path.with_suffix(".tmp").write_bytes(b"second build, more members")
    path.with_suffix(".tmp").replace(path)
    secured = store.secure(tmp_path / "data", _candidates(path), announced)
    assert secured.path.read_bytes() == b"first build"
