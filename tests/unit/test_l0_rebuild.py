"""``downlink l0 rebuild``'s decision (pure part): write only the recorded version, exactly."""

from __future__ import annotations

from consumers.l0.assembly import Assembly
from consumers.l0.rebuild import _restore
from products.l0 import l0_paths, sha256_file
from streams.decoder import decode_all
from streams.messages import L0State
from tests.unit.l0_fixtures import EXPOSURE_ID, exposure


def _assembly(tmp_path, packets, token):
    a = Assembly.for_exposure(EXPOSURE_ID, tmp_path / "spool", token=token)
    d = decode_all(b"".join(packets))
    a.add(d.packets, d.data, "C1")
    return a


def _state(packets, version=3):
    import hashlib
    raw = b"".join(packets)
    return L0State(exposure_id=EXPOSURE_ID, version=version, complete=True,
                   sha256=hashlib.sha256(raw).hexdigest(), packets=len(packets), bytes=len(raw),
                   partition=0, through_offset=10)


def test_the_recorded_bytes_are_written_as_the_recorded_version(tmp_path, settings):
    settings = settings.replace(data_dir=tmp_path / "data")
    pk = exposure(100, 90, 2)
    row = _restore(settings, _state(pk), "missing", _assembly(tmp_path, pk, "a"))
    assert row.status == "rebuilt" and row.version == 3
    data, manifest = l0_paths(settings.data_dir, EXPOSURE_ID)
    assert data.read_bytes() == b"".join(pk)
    import json
    m = json.loads(manifest.read_text())
    assert m["version"] == 3 and m["sha256"] == sha256_file(data) and m["rebuilt"]


def test_other_bytes_are_never_written(tmp_path, settings):
    settings = settings.replace(data_dir=tmp_path / "data")
    pk = exposure(100, 90, 2)
    row = _restore(settings, _state(pk), "missing", _assembly(tmp_path, pk[:-2], "b"))
    assert row.status == "failed" and "nothing written" in row.detail
    assert not l0_paths(settings.data_dir, EXPOSURE_ID)[0].exists()
    row = _restore(settings, _state(pk), "missing", None)
    assert row.status == "failed" and "retention" in row.detail
