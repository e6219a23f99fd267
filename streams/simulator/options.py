"""What a simulation is asked for: contact size, plan limits, faults.

Parsed and validated here once so that every later stage can trust its
inputs; a bad request raises ``SimulationError`` with the fix in the message.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from core import units
from core.errors import SimulationError
from core.timecodes import utc_to_tai
from streams.packets import DETECTOR_CODES

#: Ka-band science downlink, 28 Mbit/s (docs/domain.md)
KA_RATE_BYTES_PER_S = 3.5e6

#: probability per eligible packet of a reorder when only ``reorder=N`` (the window) is given
DEFAULT_REORDER_P = 0.001
#: garbage runs are 1..GARBAGE_MAX_BYTES long
GARBAGE_MAX_BYTES = 256
#: largest contact simulated: the on-board recorder holds ~65 GB, a 4 h contact at Ka ~50 GB
MAX_CONTACT_BYTES = 100 * 10**9
#: packet times are uint32 seconds since 1958 (CCSDS coarse time): contacts must end before that wraps
MAX_START_TAI = 2**32 - 30 * 86400

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``200MB`` -> 200_000_000 (decimal units; KiB/MiB/GiB binary; :mod:`core.units`)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise SimulationError(f"{exc}; write e.g. 200MB, 1.5GB, 512MiB") from None


def parse_duration(text: str) -> float:
    """``4h``, ``90m``, ``1h30m``, ``45s``, ``120`` (seconds) -> seconds."""
    s = str(text).strip()
    if re.fullmatch(r"[0-9]*\.?[0-9]+", s):
        seconds = float(s)
    else:
        parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([smhd])", s)
        if not parts or re.sub(r"[0-9]*\.?[0-9]+\s*[smhd]", "", s).strip():
            raise SimulationError(f"duration {text!r} not understood; write e.g. 4h, 90m, 1h30m, 45s")
        seconds = sum(float(v) * _DURATION_UNITS[u] for v, u in parts)
    if seconds <= 0:
        raise SimulationError(f"duration {text!r} must be positive")
    return seconds


def tai_from_iso(text: str) -> float:
    """UTC ISO time (``2026-03-01T12:00:00``) -> TAI seconds since 1958-01-01."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise SimulationError(f"start time {text!r} is not ISO 8601 (2026-03-01T12:00:00)") from None
    return utc_to_tai(dt)


@dataclass(frozen=True)
class FaultSpec:
    """Faults to inject, from ``drop=P,dup=P,reorder=N,corrupt=P,garbage=P,hostile=P,wrap,split,truncate,redump``.

    Probabilities are per eligible packet (garbage: per packet boundary); every
    requested probabilistic fault is injected at least once. ``reorder=N`` is the
    window: a reordered packet is sent after up to N later packets of its own
    APID (probability ``reorder_p``, default 0.001).
    """

    drop: float = 0.0
    dup: float = 0.0
    reorder: int = 0
    reorder_p: float = 0.0
    corrupt: float = 0.0
    garbage: float = 0.0
    #: valid headers with bad fields, every class of ``streams.simulator.hostile`` at least once
    hostile: float = 0.0
    wrap: bool = False
    split: bool = False
    truncate: bool = False
    redump: bool = False

    @classmethod
    def parse(cls, text: str | None) -> "FaultSpec":
        if not text or not text.strip():
            return cls()
        values: dict[str, float | int | bool] = {}
        probs = ("drop", "dup", "corrupt", "garbage", "hostile", "reorder_p")
        flags = ("wrap", "split", "truncate", "redump")
        for token in (t.strip() for t in text.split(",")):
            if not token:
                continue
            key, eq, raw = (s.strip() for s in token.partition("="))
            if key in values:
                raise SimulationError(f"fault {key!r} given twice in {text!r}")
            if key in probs:
                try:
                    p = float(raw)
                except ValueError:
                    raise SimulationError(f"fault {key}={raw!r}: need a probability like {key}=0.001") from None
                if not 0.0 <= p < 1.0:
                    raise SimulationError(f"fault {key}={raw}: probability must be in [0, 1)")
                values[key] = p
            elif key == "reorder":
                if not raw.isdigit() or int(raw) < 1:
                    raise SimulationError(f"fault reorder={raw!r}: need a window of packets, e.g. reorder=5")
                values[key] = int(raw)
            elif key in flags:
                if eq:
                    raise SimulationError(f"fault {key!r} takes no value (write just {key})")
                values[key] = True
            else:
                raise SimulationError(
                    f"unknown fault {key!r}; known: drop=P, dup=P, reorder=N, corrupt=P, garbage=P, "
                    "hostile=P, reorder_p=P, wrap, split, truncate, redump")
        if "reorder_p" in values and "reorder" not in values:
            raise SimulationError("reorder_p needs reorder=N (the window)")
        if "reorder" in values and "reorder_p" not in values:
            values["reorder_p"] = DEFAULT_REORDER_P
        spec = cls(**values)  # type: ignore[arg-type]
        if spec.redump and not (spec.drop or spec.corrupt or spec.truncate):
            raise SimulationError("redump re-sends packets lost in this contact: add drop=P, corrupt=P "
                                  "or truncate to --faults")
        return spec

    @property
    def needs_next_contact(self) -> bool:
        return self.split or self.redump

    @property
    def any(self) -> bool:
        return self != FaultSpec()

    def __str__(self) -> str:
        parts = []
        for key in ("drop", "dup", "corrupt", "garbage", "hostile"):
            if getattr(self, key):
                parts.append(f"{key}={getattr(self, key):g}")
        if self.reorder:
            parts.append(f"reorder={self.reorder}")
            if self.reorder_p != DEFAULT_REORDER_P:
                parts.append(f"reorder_p={self.reorder_p:g}")
        parts += [k for k in ("wrap", "split", "truncate", "redump") if getattr(self, k)]
        return ",".join(parts)


@dataclass(frozen=True)
class SimOptions:
    """One simulation request; exactly one of size_bytes, duration_s, exposures sets the extent."""

    seed: int = 0
    size_bytes: int | None = None
    duration_s: float | None = None
    exposures: int | None = None
    faults: FaultSpec = field(default_factory=FaultSpec)
    contact: str | None = None
    next_contact: str | None = None
    #: largest subarray side (pixels); None = 2048, or 256 when --exposures sets the extent
    max_subarray: int | None = None
    #: detector names to observe with (None = all 18)
    detectors: tuple[str, ...] | None = None
    #: contact start, TAI seconds since 1958 (None = derived from the seed)
    start_tai: float | None = None
    rate_bytes_per_s: float = KA_RATE_BYTES_PER_S
    #: engineering dictionary YAML (None = the shipped one)
    dictionary: str | None = None

    def __post_init__(self) -> None:
        extents = [x for x in (self.size_bytes, self.duration_s, self.exposures) if x is not None]
        if len(extents) != 1:
            raise SimulationError("give exactly one of --size, --duration or --exposures")
        if self.exposures is not None and not 1 <= self.exposures <= 100000:
            raise SimulationError("--exposures must be between 1 and 100000")
        if not 0 <= self.seed < 2**63:
            raise SimulationError("--seed must be a non-negative integer")
        if self.max_subarray is not None and not 64 <= self.max_subarray <= 2048:
            raise SimulationError("--max-subarray must be between 64 and 2048 pixels")
        if self.detectors is not None:
            unknown = [d for d in self.detectors if d.upper() not in DETECTOR_CODES]
            if unknown or not self.detectors:
                raise SimulationError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTOR_CODES)}")
            object.__setattr__(self, "detectors", tuple(sorted({d.upper() for d in self.detectors},
                                                               key=DETECTOR_CODES.get)))
        if not self.rate_bytes_per_s > 0 or self.rate_bytes_per_s == float("inf"):
            raise SimulationError("downlink rate must be positive and finite")
        if self.size_bytes is not None and not 0 < self.size_bytes <= MAX_CONTACT_BYTES:
            raise SimulationError(f"--size {self.size_bytes:,} bytes is outside 1 byte .. "
                                  f"{MAX_CONTACT_BYTES // 10**9} GB (the recorder holds ~65 GB); ask for less")
        if self.duration_s is not None and not (
                0 < self.duration_s and self.duration_s * self.rate_bytes_per_s <= MAX_CONTACT_BYTES):
            raise SimulationError(
                f"--duration {self.duration_s:g} s is outside 0 .. "
                f"{MAX_CONTACT_BYTES / self.rate_bytes_per_s / 3600:.1f} h at the Ka rate "
                f"({MAX_CONTACT_BYTES // 10**9} GB; a contact lasts ~4 h)")
        if self.start_tai is not None and not 0 <= self.start_tai <= MAX_START_TAI:
            raise SimulationError("--start must lie between 1958-01-01 and 2094 (packet times are "
                                  "uint32 seconds since 1958)")
        for label, cid in (("--contact", self.contact), ("--next-contact", self.next_contact)):
            if cid is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cid):
                raise SimulationError(f"{label} {cid!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if self.next_contact is not None and self.next_contact == self.contact_id:
            raise SimulationError("--next-contact must differ from --contact")

    @property
    def contact_id(self) -> str:
        return self.contact or f"sim{self.seed}"

    @property
    def next_contact_id(self) -> str:
        return self.next_contact or f"{self.contact_id}-next"

    @property
    def subarray_limit(self) -> int:
        if self.max_subarray is not None:
            return self.max_subarray
        return 256 if self.exposures is not None else 2048

    @property
    def target_bytes(self) -> int | None:
        """Contact size asked for (None when --exposures sets the extent)."""
        if self.size_bytes is not None:
            return self.size_bytes
        if self.duration_s is not None:
            return int(self.duration_s * self.rate_bytes_per_s)
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["faults"] = str(self.faults)
        d["contact"] = self.contact_id
        d["next_contact"] = self.next_contact_id if self.faults.needs_next_contact else None
        d["max_subarray"] = self.subarray_limit
        d["detectors"] = list(self.detectors) if self.detectors else None
        return d


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_paths(out: object, truth: object, next_out: object = None,
                inputs: tuple[object, ...] = ()) -> None:
    """Refuse outputs that would overwrite each other or an input, or cannot be written, before any work.

    ``out`` / ``next_out`` may be ``-`` (stdout) or an open file (not checked);
    ``inputs`` are files the simulation reads (the engineering dictionary).
    """
    named: list[tuple[str, Path]] = []
    for label, value in (("--out", out), ("--truth", truth), ("--next-out", next_out)):
        if isinstance(value, (str, Path)) and str(value) != "-":
            named.append((label, Path(value)))
        elif label == "--truth" and value is not None and str(value) == "-":
            raise SimulationError("--truth must be a file (the stream alone may go to stdout)")
    for i, (la, a) in enumerate(named):
        for lb, b in named[i + 1:]:
            if _same_file(a, b):
                raise SimulationError(f"{la} and {lb} are the same file ({a}): each output needs its own path")
        for src in inputs:
            if src is not None and _same_file(a, Path(str(src))):
                raise SimulationError(f"{la} {a} is an input of the simulation (the engineering "
                                      "dictionary): choose another path")
        if a.is_dir():
            raise SimulationError(f"{la} {a} is a folder: give a file path")
        parent = a.parent if str(a.parent) else Path(".")
        if not parent.is_dir():
            raise SimulationError(f"{la} {a}: folder {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise SimulationError(f"{la} {a}: folder {parent} is not writable")


def check_space(out: object, next_out: object, target_bytes: int | None) -> None:
    """Refuse a contact that cannot fit the free space of its output's file system."""
    if target_bytes is None:
        return
    import shutil

    for value in (out, next_out):
        if isinstance(value, (str, Path)) and str(value) != "-":
            path = Path(value)
            parent = path.parent if str(path.parent) else Path(".")
            if path.exists() and not path.is_file():
                continue  # a device or FIFO: no file system to fill
            free = shutil.disk_usage(parent).free + (path.stat().st_size if path.is_file() else 0)
            if target_bytes > free:
                raise SimulationError(
                    f"a contact of {target_bytes / 1e9:,.1f} GB does not fit the {free / 1e9:,.1f} GB free "
                    f"in {parent}: ask for a smaller --size/--duration or write elsewhere")
