"""The engineering dictionary: parameter layouts, calibrations and limits.

Engineering packets (kind 1, APIDs 0x100-0x1FF) carry a parameter block from
byte 14 (``streams.packets.HEADER_LEN``). Each APID has one fixed layout,
declared in ``streams/data/eng_dictionary.yaml``; this module loads and
validates it, turns a layout into a numpy structured dtype so many packets of
one APID decode in one vectorized step, and applies calibration polynomials
(raw -> engineering units) and yellow/red limit checks.

Validation happens once, at load, with errors that name the file and the
parameter, so a bad dictionary stops a service before it starts (Yamcs
``Spec`` style) instead of mis-decoding telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.errors import ConfigError
from streams.packets import ENG_APID_MAX, ENG_APID_MIN, HEADER_LEN, PRIMARY_HEADER_LEN

#: libyaml's loader when available (10x faster), same safe semantics
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "eng_dictionary.yaml"

#: dictionary type name -> big-endian numpy type
TYPES: dict[str, str] = {
    "uint8": ">u1", "uint16": ">u2", "uint32": ">u4",
    "int16": ">i2", "int32": ">i4",
    "float32": ">f4", "float64": ">f8",
}

#: limit states returned by ``limit_state``
NOMINAL, YELLOW, RED = 0, 1, 2
LIMIT_NAMES = ("nominal", "yellow", "red")

MODELS = ("analog", "state", "counter")
_PARAM_REQUIRED = ("name", "apid", "offset", "type", "unit", "calibration", "yellow", "red",
                   "subsystem", "description")
_PARAM_OPTIONAL = ("nominal", "model", "rate")
_PACKET_REQUIRED = ("apid", "name", "subsystem", "period_s", "description")
_MAX_BLOCK = 0xFFFF + 1 + PRIMARY_HEADER_LEN - HEADER_LEN  # CCSDS length field limit


@dataclass(frozen=True)
class Parameter:
    """One engineering parameter: where it sits in its APID's block and what it means."""

    name: str
    apid: int
    offset: int
    type: str
    unit: str
    calibration: tuple[float, ...]
    yellow: tuple[float, float] | None
    red: tuple[float, float] | None
    subsystem: str
    description: str
    #: simulator hints (typical value, behaviour, counter increments per second)
    nominal: float | None = None
    model: str = "analog"
    rate: float | None = None

    @property
    def size(self) -> int:
        return np.dtype(TYPES[self.type]).itemsize

    @property
    def end(self) -> int:
        return self.offset + self.size

    def calibrate(self, raw: Any) -> np.ndarray:
        """Engineering value(s) from raw value(s): c0 + c1*raw + c2*raw^2 + ..."""
        x = np.asarray(raw, dtype=np.float64)
        return np.polynomial.polynomial.polyval(x, self.calibration)

    def limit_state(self, value: Any) -> np.ndarray:
        """NOMINAL / YELLOW / RED per engineering value (limits themselves are in limits)."""
        v = np.asarray(value, dtype=np.float64)
        state = np.zeros(v.shape, dtype=np.int8)
        if self.yellow is not None:
            state[(v < self.yellow[0]) | (v > self.yellow[1])] = YELLOW
        if self.red is not None:
            state[(v < self.red[0]) | (v > self.red[1])] = RED
        return state


@dataclass(frozen=True)
class PacketDef:
    """One engineering APID: its name, owner and sampling period."""

    apid: int
    name: str
    subsystem: str
    period_s: float
    description: str


@dataclass(frozen=True)
class EngDictionary:
    """Validated parameters grouped by APID, with vectorized decode and calibration."""

    parameters: tuple[Parameter, ...]
    packets: tuple[PacketDef, ...] = ()
    path: str = "<memory>"
    _by_apid: dict[int, tuple[Parameter, ...]] = field(init=False, repr=False, compare=False)
    _by_name: dict[str, Parameter] = field(init=False, repr=False, compare=False)
    _dtypes: dict[int, np.dtype] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(self.parameters))
        if not self.packets:
            apids = sorted({p.apid for p in self.parameters})
            object.__setattr__(self, "packets", tuple(
                PacketDef(a, f"APID_{a:03X}", "", 1.0, "") for a in apids))
        object.__setattr__(self, "packets", tuple(self.packets))
        _validate(self.path, self.parameters, self.packets)
        groups: dict[int, list[Parameter]] = {pk.apid: [] for pk in self.packets}
        for p in self.parameters:
            groups[p.apid].append(p)
        by_apid = {a: tuple(sorted(ps, key=lambda p: p.offset)) for a, ps in sorted(groups.items())}
        object.__setattr__(self, "_by_apid", by_apid)
        object.__setattr__(self, "_by_name", {p.name: p for p in self.parameters})
        object.__setattr__(self, "_dtypes", {a: _layout_dtype(ps) for a, ps in by_apid.items()})

    # -- layout ---------------------------------------------------------------------------
    def by_apid(self) -> dict[int, list[Parameter]]:
        """APID -> its parameters in offset order."""
        return {a: list(ps) for a, ps in self._by_apid.items()}

    def packet_lengths(self) -> dict[int, int]:
        """APID -> total packet length including the 14-byte header (the decoder's eng_lengths)."""
        return {a: HEADER_LEN + dt.itemsize for a, dt in self._dtypes.items()}

    def block_length(self, apid: int) -> int:
        return self.dtype(apid).itemsize

    def dtype(self, apid: int) -> np.dtype:
        """Structured big-endian dtype of the parameter block of ``apid``."""
        try:
            return self._dtypes[apid]
        except KeyError:
            raise ConfigError(f"{self.path}: no engineering packet with APID 0x{apid:03x}") from None

    def packet(self, apid: int) -> PacketDef:
        for pk in self.packets:
            if pk.apid == apid:
                return pk
        raise ConfigError(f"{self.path}: no engineering packet with APID 0x{apid:03x}")

    def parameter(self, name: str) -> Parameter:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"{self.path}: unknown parameter {name!r}") from None

    def subsystems(self) -> set[str]:
        return {p.subsystem for p in self.parameters}

    # -- decode / encode ------------------------------------------------------------------
    def decode(self, apid: int, data: bytes) -> dict[str, int | float]:
        """Raw values of one packet: ``data`` is the parameter block or the whole packet."""
        dt = self.dtype(apid)
        if len(data) == dt.itemsize + HEADER_LEN:
            data = bytes(data)[HEADER_LEN:]
        if len(data) != dt.itemsize:
            raise ConfigError(
                f"{self.path}: APID 0x{apid:03x} block is {dt.itemsize} bytes "
                f"(packet {dt.itemsize + HEADER_LEN}), got {len(data)}")
        row = np.frombuffer(data, dtype=dt, count=1)[0]
        return {name: row[name].item() for name in dt.names}

    def decode_many(self, apid: int, data: bytes | memoryview | np.ndarray, *,
                    header: bool = True) -> np.ndarray:
        """Raw values of many packets of one APID at once, as a structured array.

        ``data`` is either concatenated whole packets (``header=True``) or
        concatenated parameter blocks, as bytes or a (n, length) uint8 array.
        Fields keep their big-endian dtype; use ``calibrate`` for engineering values.
        """
        dt = self.dtype(apid)
        step = dt.itemsize + (HEADER_LEN if header else 0)
        buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if buf.size % step:
            raise ConfigError(f"{self.path}: {buf.size} bytes is not a whole number of "
                              f"{step}-byte APID 0x{apid:03x} {'packets' if header else 'blocks'}")
        rows = buf.reshape(-1, step)[:, HEADER_LEN if header else 0:]
        return np.ascontiguousarray(rows).view(dt).reshape(-1)

    def encode_many(self, apid: int, raw: Mapping[str, Any], n: int | None = None) -> np.ndarray:
        """Parameter blocks from raw values (name -> scalar or array): (n, block) uint8.

        Values are cast to each parameter's type; unnamed spare bytes are zero.
        """
        dt = self.dtype(apid)
        missing = set(dt.names) - set(raw)
        if missing:
            raise ConfigError(f"{self.path}: APID 0x{apid:03x} needs values for {sorted(missing)}")
        if n is None:
            n = max((np.size(v) for v in raw.values()), default=1)
        out = np.zeros(n, dtype=dt)
        for name in dt.names:
            out[name] = raw[name]
        return out.view(np.uint8).reshape(n, dt.itemsize)

    # -- calibration and limits ---------------------------------------------------------
    def calibrate(self, parameter: str | Parameter, raw: Any) -> np.ndarray:
        """Engineering value(s) of a parameter from raw value(s), vectorized."""
        p = parameter if isinstance(parameter, Parameter) else self.parameter(parameter)
        return p.calibrate(raw)

    def calibrate_all(self, apid: int, decoded: np.ndarray) -> dict[str, np.ndarray]:
        """Engineering values of every parameter of ``decode_many`` output."""
        return {p.name: p.calibrate(decoded[p.name]) for p in self._by_apid[apid]}

    def limit_state(self, parameter: str | Parameter, value: Any) -> np.ndarray:
        """NOMINAL (0) / YELLOW (1) / RED (2) per engineering value."""
        p = parameter if isinstance(parameter, Parameter) else self.parameter(parameter)
        return p.limit_state(value)


def _layout_dtype(params: Iterable[Parameter]) -> np.dtype:
    params = list(params)
    return np.dtype({
        "names": [p.name for p in params],
        "formats": [TYPES[p.type] for p in params],
        "offsets": [p.offset for p in params],
        "itemsize": max(p.end for p in params),
    })


def _validate(path: str, params: tuple[Parameter, ...], packets: tuple[PacketDef, ...]) -> None:
    """Cross-parameter checks (names, APIDs, overlaps); per-field checks are in the loader."""
    declared: dict[int, PacketDef] = {}
    for pk in packets:
        if not ENG_APID_MIN <= pk.apid <= ENG_APID_MAX:
            raise ConfigError(f"{path}: packet {pk.name}: APID 0x{pk.apid:03x} outside "
                              f"0x{ENG_APID_MIN:03x}-0x{ENG_APID_MAX:03x}")
        if pk.apid in declared:
            raise ConfigError(f"{path}: packet {pk.name}: APID 0x{pk.apid:03x} declared twice "
                              f"(also {declared[pk.apid].name})")
        if not pk.period_s > 0:
            raise ConfigError(f"{path}: packet {pk.name}: period_s must be positive")
        declared[pk.apid] = pk
    seen: dict[str, Parameter] = {}
    for p in params:
        where = f"{path}: parameter {p.name}"
        if p.name in seen:
            raise ConfigError(f"{where}: duplicate name")
        seen[p.name] = p
        if not ENG_APID_MIN <= p.apid <= ENG_APID_MAX:
            raise ConfigError(f"{where}: APID 0x{p.apid:03x} outside "
                              f"0x{ENG_APID_MIN:03x}-0x{ENG_APID_MAX:03x}")
        if p.apid not in declared:
            raise ConfigError(f"{where}: APID 0x{p.apid:03x} is not declared under 'packets'")
        if p.type not in TYPES:
            raise ConfigError(f"{where}: unknown type {p.type!r}; use one of {', '.join(TYPES)}")
        if p.offset < 0:
            raise ConfigError(f"{where}: negative offset {p.offset}")
        if p.end > _MAX_BLOCK:
            raise ConfigError(f"{where}: ends at byte {p.end}, beyond the CCSDS packet size")
        _check_limits(where, p.yellow, p.red)
        if p.model not in MODELS:
            raise ConfigError(f"{where}: model {p.model!r} is not one of {', '.join(MODELS)}")
        if not p.calibration or not any(c != 0 for c in p.calibration[1:]):
            raise ConfigError(f"{where}: calibration {list(p.calibration)} must be a polynomial "
                              "with a non-zero coefficient of raw (c0, c1, ...)")
    by_apid: dict[int, list[Parameter]] = {}
    for p in params:
        by_apid.setdefault(p.apid, []).append(p)
    for apid, pk in declared.items():
        if apid not in by_apid:
            raise ConfigError(f"{path}: packet {pk.name} (APID 0x{apid:03x}) has no parameters")
    for apid, ps in by_apid.items():
        ps = sorted(ps, key=lambda p: p.offset)
        for a, b in zip(ps, ps[1:]):
            if b.offset < a.end:
                raise ConfigError(
                    f"{path}: parameter {b.name}: bytes {b.offset}-{b.end - 1} overlap parameter "
                    f"{a.name} (bytes {a.offset}-{a.end - 1}) in APID 0x{apid:03x}")


def _check_limits(where: str, yellow: tuple[float, float] | None,
                  red: tuple[float, float] | None) -> None:
    for label, lim in (("yellow", yellow), ("red", red)):
        if lim is not None and not lim[0] < lim[1]:
            raise ConfigError(f"{where}: {label} limits {list(lim)} need lo < hi")
    if yellow is not None and red is not None and not (red[0] <= yellow[0] and yellow[1] <= red[1]):
        raise ConfigError(f"{where}: limits not nested: red {list(red)} must lie outside "
                          f"yellow {list(yellow)} (red lo <= yellow lo, yellow hi <= red hi)")


# -- loading ----------------------------------------------------------------------------------
def load_dictionary(path: str | Path | None = None) -> EngDictionary:
    """Load and validate a dictionary YAML (default: the shipped one).

    Raises ConfigError naming the file and the parameter (or packet) at fault.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        doc = yaml.load(path.read_text(), Loader=_LOADER)
    except OSError as exc:
        raise ConfigError(f"cannot read engineering dictionary {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return dictionary_from_mapping(doc, str(path))


def dictionary_from_mapping(doc: Any, path: str = "<memory>") -> EngDictionary:
    """Build a validated dictionary from the parsed YAML document."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping with 'packets' and 'parameters'")
    unknown = set(doc) - {"version", "packets", "parameters"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}")
    raw_packets, raw_params = doc.get("packets"), doc.get("parameters")
    if not isinstance(raw_packets, list) or not raw_packets:
        raise ConfigError(f"{path}: 'packets' must be a non-empty list")
    if not isinstance(raw_params, list) or not raw_params:
        raise ConfigError(f"{path}: 'parameters' must be a non-empty list")
    packets = tuple(_packet(path, i, d) for i, d in enumerate(raw_packets))
    params = tuple(_parameter(path, i, d) for i, d in enumerate(raw_params))
    return EngDictionary(params, packets, path)


def _packet(path: str, i: int, d: Any) -> PacketDef:
    label = d.get("name", f"#{i + 1}") if isinstance(d, dict) else f"#{i + 1}"
    where = f"{path}: packet {label}"
    _keys(where, d, _PACKET_REQUIRED, ())
    return PacketDef(apid=_int(where, "apid", d["apid"]), name=_str(where, "name", d["name"]),
                     subsystem=_str(where, "subsystem", d["subsystem"]),
                     period_s=_num(where, "period_s", d["period_s"]),
                     description=str(d["description"]))


def _parameter(path: str, i: int, d: Any) -> Parameter:
    label = d.get("name", f"#{i + 1}") if isinstance(d, dict) else f"#{i + 1}"
    where = f"{path}: parameter {label}"
    _keys(where, d, _PARAM_REQUIRED, _PARAM_OPTIONAL)
    cal = d["calibration"]
    if not isinstance(cal, list) or not cal:
        raise ConfigError(f"{where}: calibration must be a list of polynomial coefficients")
    return Parameter(
        name=_str(where, "name", d["name"]),
        apid=_int(where, "apid", d["apid"]),
        offset=_int(where, "offset", d["offset"]),
        type=_str(where, "type", d["type"]),
        unit=str(d["unit"]) if d["unit"] is not None else "",
        calibration=tuple(_num(where, "calibration", c) for c in cal),
        yellow=_limits(where, "yellow", d["yellow"]),
        red=_limits(where, "red", d["red"]),
        subsystem=_str(where, "subsystem", d["subsystem"]),
        description=str(d["description"]),
        nominal=None if d.get("nominal") is None else _num(where, "nominal", d["nominal"]),
        model=_str(where, "model", d.get("model", "analog")),
        rate=None if d.get("rate") is None else _num(where, "rate", d["rate"]),
    )


def _keys(where: str, d: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: must be a mapping")
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _int(where: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}: {key} must be an integer, got {v!r}")
    return v


def _num(where: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: {key} must be a finite number, got {v!r}")
    return float(v)


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {v!r}")
    return v


def _limits(where: str, key: str, v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise ConfigError(f"{where}: {key} limits must be [lo, hi] or null, got {v!r}")
    return (_num(where, key, v[0]), _num(where, key, v[1]))
