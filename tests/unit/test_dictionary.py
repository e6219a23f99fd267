"""The engineering dictionary: the shipped file, validation errors, vectorized decode and calibration."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.errors import ConfigError
from streams.dictionary import (
    DEFAULT_PATH,
    NOMINAL,
    RED,
    TYPES,
    YELLOW,
    EngDictionary,
    Parameter,
    load_dictionary,
)
from streams.packets import HEADER_LEN, encode_eng
from streams.simulator.engineering import EngModel


@pytest.fixture(scope="module")
def shipped() -> EngDictionary:
    return load_dictionary()


@pytest.fixture()
def doc() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text())


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "bad_dictionary.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_shipped_dictionary_is_rich_enough(shipped):
    assert len(shipped.parameters) >= 60
    assert {"power", "thermal", "attitude_control", "communications", "propulsion",
            "instruments"} <= shipped.subsystems()
    apids = shipped.by_apid()
    assert len(apids) >= 6
    assert all(0x100 <= a <= 0x1FF for a in apids)
    names = {p.name for p in shipped.parameters}
    assert {"NRC_A_DET_TEMP", "MIR_IMG_DET_TEMP", "CRY_COLDHEAD_TEMP"} <= names  # detector + cryocooler
    assert {p.type for p in shipped.parameters} == set(TYPES)
    assert any(len(p.calibration) > 2 for p in shipped.parameters)  # a non-linear calibration
    for p in shipped.parameters:
        assert p.description and p.subsystem
        if p.yellow and p.red:
            assert p.red[0] <= p.yellow[0] < p.yellow[1] <= p.red[1]


def test_packet_lengths_include_header(shipped):
    lengths = shipped.packet_lengths()
    for apid, params in shipped.by_apid().items():
        assert lengths[apid] == HEADER_LEN + max(p.offset + p.size for p in params)
        assert shipped.block_length(apid) == lengths[apid] - HEADER_LEN


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["parameters"].append(copy.deepcopy(d["parameters"][0])), "duplicate name"),
    (lambda d: d["parameters"][1].update(offset=d["parameters"][0]["offset"]), "overlap"),
    (lambda d: d["parameters"][0].update(apid=0x200), "outside 0x100-0x1ff"),
    (lambda d: d["parameters"][0].update(apid=0x1F0), "not declared"),
    (lambda d: d["parameters"][0].update(type="uint64"), "unknown type"),
    (lambda d: d["parameters"][0].update(yellow=[10, 40], red=[20, 50]), "not nested"),
    (lambda d: d["parameters"][0].update(yellow=[40, 10]), "lo < hi"),
    (lambda d: d["parameters"][0].update(calibration=[1.0, 0.0]), "calibration"),
    (lambda d: d["parameters"][0].update(calibration=["x", 1.0]), "finite number"),
    (lambda d: d["parameters"][0].pop("unit"), "missing unit"),
    (lambda d: d["parameters"][0].update(colour="red"), "unknown field"),
    (lambda d: d["parameters"][0].update(offset=-2), "negative offset"),
    (lambda d: d["parameters"][0].update(model="random"), "model"),
])
def test_malformed_dictionary_names_file_and_parameter(tmp_path, doc, mutate, fragment):
    victim = doc["parameters"][1]["name"] if fragment == "overlap" else doc["parameters"][0]["name"]
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_dictionary(path)
    message = str(err.value)
    assert str(path) in message
    assert f"parameter {victim}" in message
    assert fragment in message


def test_malformed_packet_and_file_errors(tmp_path, doc):
    bad = copy.deepcopy(doc)
    bad["packets"].append(dict(bad["packets"][0]))
    with pytest.raises(ConfigError, match="declared twice"):
        load_dictionary(_write(tmp_path, bad))
    bad = copy.deepcopy(doc)
    bad["packets"].append({"apid": 0x1EE, "name": "EMPTY_HK", "subsystem": "power", "period_s": 1,
                           "description": "nothing"})
    with pytest.raises(ConfigError, match="EMPTY_HK .*has no parameters"):
        load_dictionary(_write(tmp_path, bad))
    (tmp_path / "broken.yaml").write_text("parameters: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_dictionary(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_dictionary(tmp_path / "absent.yaml")


def _random_raw(d: EngDictionary, apid: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = {}
    for p in d.by_apid()[apid]:
        dt = np.dtype(TYPES[p.type]).newbyteorder("=")
        if dt.kind in "iu":
            info = np.iinfo(dt)
            raw[p.name] = rng.integers(info.min, info.max, n, endpoint=True, dtype=dt)
        else:
            raw[p.name] = rng.normal(0, 1000, n).astype(dt)
    return raw


def test_vectorized_decode_round_trip(shipped):
    rng = np.random.default_rng(7)
    for apid in shipped.by_apid():
        n = 50
        raw = _random_raw(shipped, apid, n, rng)
        blocks = shipped.encode_many(apid, raw)
        assert blocks.shape == (n, shipped.block_length(apid))
        stream = b"".join(encode_eng(apid, i, 0, 2_100_000_000 + i, 0, blocks[i].tobytes()) for i in range(n))
        assert len(stream) == n * shipped.packet_lengths()[apid]
        decoded = shipped.decode_many(apid, stream)
        assert len(decoded) == n
        for name, values in raw.items():
            np.testing.assert_array_equal(decoded[name], values)
        # blocks without headers and a single packet decode the same
        np.testing.assert_array_equal(shipped.decode_many(apid, blocks, header=False), decoded)
        one = shipped.decode(apid, stream[: shipped.packet_lengths()[apid]])
        assert one == {k: v.item() for k, v in zip(decoded.dtype.names, decoded[0])}
        eng = shipped.calibrate_all(apid, decoded)
        for p in shipped.by_apid()[apid]:
            expected = sum(c * raw[p.name].astype(np.float64) ** k for k, c in enumerate(p.calibration))
            np.testing.assert_allclose(eng[p.name], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="not a whole number"):
        shipped.decode_many(0x101, b"\0" * 7)
    with pytest.raises(ConfigError, match="no engineering packet"):
        shipped.dtype(0x1FF)


def test_limit_states(shipped):
    p = shipped.parameter("EPS_BUS_VOLTAGE")
    (ylo, yhi), (rlo, rhi) = p.yellow, p.red
    values = np.array([31.0, ylo, yhi, ylo - 0.01, yhi + 0.01, rlo, rhi, rlo - 0.01, rhi + 0.01])
    assert shipped.limit_state("EPS_BUS_VOLTAGE", values).tolist() == [
        NOMINAL, NOMINAL, NOMINAL, YELLOW, YELLOW, YELLOW, YELLOW, RED, RED]
    no_limits = shipped.parameter("ACS_Q1")
    assert no_limits.limit_state([1e9]).tolist() == [NOMINAL]


def test_engineering_values_invert_calibration(shipped):
    """The simulator's raw values calibrate back to the engineering values it meant."""
    model = EngModel(shipped, seed=3)
    for p in shipped.parameters:
        if p.model != "analog":
            continue
        center = p.nominal if p.nominal is not None else 0.0
        want = np.array([center, center + 0.1 * abs(center) + 0.01])
        back = p.calibrate(model.to_raw(p, want))
        step = abs(p.calibration[1]) + 1e-3 * abs(center) if np.dtype(TYPES[p.type]).kind in "iu" \
            else 1e-5 * abs(center) + 1e-6
        np.testing.assert_allclose(back, want, atol=step, err_msg=p.name)


def test_programmatic_dictionary_validates():
    a = Parameter("A", 0x150, 0, "uint16", "V", (0.0, 1.0), None, None, "power", "a")
    b = Parameter("B", 0x150, 1, "uint16", "V", (0.0, 1.0), None, None, "power", "b")
    with pytest.raises(ConfigError, match="parameter B: bytes 1-2 overlap parameter A"):
        EngDictionary((a, b))
    d = EngDictionary((a,))
    assert d.packet_lengths() == {0x150: HEADER_LEN + 2}
