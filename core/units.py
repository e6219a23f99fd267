"""Quantities typed by operators: byte sizes and link rates, parsed once for every command.

k, M, G, T are powers of 1000 and Ki, Mi, Gi, Ti powers of 1024 (case-insensitive).
Errors are ``ValueError`` with the offending text; callers re-raise them as
their own typed error with an example of what to write.
"""

from __future__ import annotations

import re

PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_NUMBER = r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<prefix>[kKmMgGtT][iI]?)?"
_SIZE = re.compile(rf"^\s*{_NUMBER}(?P<unit>[bB])?\s*$")
#: the unit's case matters here: b = bits, B = bytes
_RATE = re.compile(rf"^\s*{_NUMBER}(?P<unit>bps|bit/s|b/s|B/s|Bps)\s*$")
_BITS = ("bps", "bit/s", "b/s")


def parse_size(text: str) -> int:
    """``200MB`` -> 200_000_000, ``512MiB`` -> 536_870_912, ``65536`` -> 65536 bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"size {text!r} not understood")
    value = int(float(m["num"]) * PREFIX[(m["prefix"] or "").lower()])
    if value <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return value


def parse_rate(text: str) -> float:
    """``28Mbps`` / ``28 Mbit/s`` -> 3.5e6 bytes/s; ``3.5MB/s`` -> 3.5e6.

    A unit is required: link rates are quoted in bits, sizes in bytes, and
    guessing between them is how pacing goes wrong by 8x. ``b`` is bits, ``B``
    bytes (the only case that matters).
    """
    m = _RATE.match(str(text))
    if not m:
        raise ValueError(f"rate {text!r} not understood")
    value = float(m["num"]) * PREFIX[(m["prefix"] or "").lower()]
    if m["unit"] in _BITS:
        value /= 8
    if value <= 0:
        raise ValueError(f"rate {text!r} must be positive")
    return value
