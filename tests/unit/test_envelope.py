"""Envelope codec: lossless round trip of what consumers send, clear refusal of what they cannot read."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, strategies as st

from core.errors import EnvelopeError
from streams import envelope

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=40), st.binary(max_size=200),
)
_value = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=20,
)
_body = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in ("v", "schema")), _value, max_size=8)


@given(schema=st.text(min_size=1, max_size=30), body=_body)
def test_round_trip(schema: str, body: dict) -> None:
    decoded = envelope.decode(envelope.encode(schema, body), expect=schema)
    assert decoded.pop("v") == envelope.SCHEMA_VERSION
    assert decoded.pop("schema") == schema
    assert decoded == body


def test_numpy_arrays_travel_as_raw_bytes() -> None:
    counts = np.arange(10, dtype=">u2")
    decoded = envelope.decode(envelope.encode("sci.packets", {"pixels": counts, "n": np.uint32(7)}))
    assert decoded["pixels"] == counts.tobytes()
    assert np.array_equal(np.frombuffer(decoded["pixels"], dtype=">u2"), counts)
    assert decoded["n"] == 7 and type(decoded["n"]) is int
    strided = np.arange(20, dtype=np.uint16)[::2]
    assert envelope.decode(envelope.encode("x", {"a": strided}))["a"] == strided.tobytes()
    assert envelope.decode(envelope.encode("x", {"m": memoryview(b"abc")}))["m"] == b"abc"


def test_unknown_version_names_version_and_what_this_build_reads() -> None:
    raw = msgpack.packb({"v": 99, "schema": "l0.ready", "path": "x"}, use_bin_type=True)
    with pytest.raises(EnvelopeError, match=r"version 99 .*understands version\(s\) \[1\]"):
        envelope.decode(raw)
    with pytest.raises(EnvelopeError, match="version None"):
        envelope.decode(msgpack.packb({"schema": "l0.ready"}))


def test_other_schema_and_garbage_are_refused() -> None:
    raw = envelope.encode("cal.done", {"id": 1})
    with pytest.raises(EnvelopeError, match="expected an envelope of schema 'l0.ready', got 'cal.done'"):
        envelope.decode(raw, expect="l0.ready")
    with pytest.raises(EnvelopeError, match="malformed envelope"):
        envelope.decode(b"\xc1\xff garbage")
    with pytest.raises(EnvelopeError, match="expected a map"):
        envelope.decode(msgpack.packb([1, 2]))
    with pytest.raises(EnvelopeError, match="malformed envelope"):
        envelope.decode(raw[:-1])


def test_encode_refuses_reserved_keys_and_unknown_types() -> None:
    with pytest.raises(EnvelopeError, match="reserved"):
        envelope.encode("x", {"v": 2})
    with pytest.raises(EnvelopeError, match="cannot encode"):
        envelope.encode("x", {"obj": object()})
    with pytest.raises(EnvelopeError, match="non-empty string"):
        envelope.encode("", {})
