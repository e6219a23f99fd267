"""Publishing an L0 version: a data file and its manifest are always of one version."""

from __future__ import annotations

import errno
import json

import pytest

import consumers.l0.writer as writer
from consumers.l0.assembly import Assembly
from core.errors import StorageError
from products.l0 import file_tag, l0_paths, open_l0, sha256_file
from streams.decoder import decode_all
from tests.unit.l0_fixtures import EXPOSURE_ID, exposure


def _assembly(tmp_path, packets, token):
    a = Assembly.for_exposure(EXPOSURE_ID, tmp_path / "spool", token=token)
    d = decode_all(b"".join(packets))
    a.add(d.packets, d.data, "C1")
    return a


def _publish(tmp_path, packets, version, supersedes=None, token=""):
    a = _assembly(tmp_path, packets, token or str(version))
    sha, n = a.content_sha256()
    try:
        return writer.publish(tmp_path / "data", a, version, sha, n, supersedes=supersedes)
    finally:
        a.close()


def _temps(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_versions_pair_data_and_manifest_and_keep_the_superseded_one(tmp_path):
    pk = exposure(100, 90, 2)
    w1 = _publish(tmp_path, pk[:-2], 1)
    w2 = _publish(tmp_path, pk, 2, supersedes=1)
    data, manifest = l0_paths(tmp_path / "data", EXPOSURE_ID)
    m = json.loads(manifest.read_text())
    assert (m["version"], m["sha256"]) == (2, sha256_file(data)) and m["complete"]
    old_data, old_manifest = l0_paths(tmp_path / "data", EXPOSURE_ID, 1)
    assert sha256_file(old_data) == w1.sha256 == json.loads(old_manifest.read_text())["sha256"]
    tag = file_tag(data)
    assert tag is None or tag == (2, w2.sha256)
    product = open_l0(tmp_path / "data", EXPOSURE_ID, check_sha=True)
    assert product is not None and product.version == 2


def test_a_full_disk_changes_nothing_visible_and_leaves_no_temp_file(tmp_path, monkeypatch):
    pk = exposure(100, 90, 2)
    _publish(tmp_path, pk[:-2], 1)
    data, manifest = l0_paths(tmp_path / "data", EXPOSURE_ID)
    before = (data.read_bytes(), manifest.read_text())

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(writer, "_write_synced", full)
    with pytest.raises(StorageError) as err:
        _publish(tmp_path, pk, 2, supersedes=1)
    assert err.value.disk_full and err.value.retriable
    assert (data.read_bytes(), manifest.read_text()) == before, "a version mix after a full disk"
    assert _temps(tmp_path / "data") == []


def test_the_reader_refuses_a_version_mix(tmp_path):
    from core.errors import AssemblyError
    pk = exposure(100, 90, 2)
    _publish(tmp_path, pk[:-2], 1)
    data, _ = l0_paths(tmp_path / "data", EXPOSURE_ID)
    data.write_bytes(b"".join(pk))  # the data of another version under the manifest of version 1
    with pytest.raises(AssemblyError, match="rebuild"):
        open_l0(tmp_path / "data", EXPOSURE_ID)
