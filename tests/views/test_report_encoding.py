"""The exported report's payload: its filters, checked against independent computations (plain
Python loops over the bytes), not against the code's own output."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from hopaudit.views import report, schema


def shuffle_by_hand(data: bytes, size: int) -> bytes:
    m = len(data) // size
    planes = [bytes(data[i * size + j] for i in range(m)) for j in range(size)]
    return b"".join(planes) + data[m * size :]


def delta_by_hand(data: bytes, size: int) -> bytes:
    m = len(data) // size
    vals = [int.from_bytes(data[i * size : (i + 1) * size], "little") for i in range(m)]
    mod = 1 << (8 * size)
    diffs = [vals[i] - (vals[i - 1] if i else 0) for i in range(m)]
    diffs = [d % mod for d in diffs]
    return b"".join(v.to_bytes(size, "little") for v in diffs) + data[m * size :]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 24, 101])
def test_shuffle_is_byte_planes_and_round_trips(size, n):
    data = np.random.default_rng(n * 10 + size).integers(0, 256, n, dtype=np.uint8).tobytes()
    out = report.apply_filter(data, "shuffle", size)
    assert out == shuffle_by_hand(data, size)
    assert report.undo_filter(out, "shuffle", size) == data


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_delta_wraps_around_and_round_trips_any_order(size):
    top = (1 << (8 * size)) - 1
    values = [5, 3, top, 0, 7, 7, top - 1, 1, top, 2]  # not monotone, crosses the wrap both ways
    data = b"".join(v.to_bytes(size, "little") for v in values) + b"\x09\x08"[: size - 1]
    out = report.apply_filter(data, "delta", size)
    assert out == delta_by_hand(data, size)
    # the second difference is 3 - 5 modulo 2**(8 size)
    assert int.from_bytes(out[size : 2 * size], "little") == top - 1
    assert report.undo_filter(out, "delta", size) == data
    rnd = np.random.default_rng(size).integers(0, 256, 8 * 999 + 5, dtype=np.uint8).tobytes()
    assert report.undo_filter(report.apply_filter(rnd, "delta", size), "delta", size) == rnd


def test_a_monotone_array_becomes_small_steps():
    offsets = np.cumsum(np.random.default_rng(0).integers(100, 400, 5000)).astype("<u4")
    data = offsets.tobytes()
    both = report.apply_filter(report.apply_filter(data, "delta", 4), "shuffle", 4)
    # every step is below 65536: the two high byte planes are zeros
    assert both[2 * 5000 :] == b"\0" * (2 * 5000)
    assert len(gzip.compress(both)) < len(gzip.compress(data)) / 2


def test_unknown_filters_are_refused():
    with pytest.raises(ValueError, match="unknown filter"):
        report.apply_filter(b"abcd", "rot13", 1)
    with pytest.raises(ValueError, match="unknown filter"):
        report.apply_filter(b"abcd", "delta", 3)


def test_pack_state_declares_its_filters_and_round_trips():
    rng = np.random.default_rng(1)
    state = {
        "kind": "audit",
        "text_offsets": schema.pack([0, 10, 5, 2**32 - 1, 3], "uint32"),
        "scatter_seq": schema.pack([9, 1, 65535, 0], "uint16"),
        "seq_ce": schema.pack(rng.random(33), "float16"),
        "scatter_ratio": schema.pack(np.arange(256), "uint8"),
        "empty": schema.pack([], "uint8"),
    }
    packed = report.pack_state(state)
    assert report.unpack_state(packed) == state
    (n,) = struct.unpack("<I", packed[4:8])
    header = json.loads(packed[8 : 8 + n])
    body = packed[8 + n :]
    assert header["text_offsets"]["$filters"] == [["delta", 4], ["shuffle", 4]]
    # the delta's item size follows the array's own dtype
    assert header["scatter_seq"]["$filters"] == [["delta", 2], ["shuffle", 2]]
    assert header["seq_ce"]["$filters"] == [["shuffle", 2]]
    assert "$filters" not in header["scatter_ratio"]
    assert header["seq_ce"]["dtype"] == "float16" and header["seq_ce"]["shape"] == [33]
    start, length = header["text_offsets"]["$buffer"]
    stored = body[start : start + length]
    raw = state["text_offsets"]["view"]
    assert stored == shuffle_by_hand(delta_by_hand(raw, 4), 4)
    start, length = header["scatter_ratio"]["$buffer"]
    assert body[start : start + length] == bytes(range(256))
    # no filters at all: the buffers are stored as they are
    assert report.unpack_state(report.pack_state(state, filters={})) == state


def test_a_damaged_payload_is_refused():
    page = '<script id="hopaudit-data" data-encoding="base64" type="x">AB$C</script>'
    with pytest.raises(ValueError, match="not base64"):
        report.read_html_page(page)
    other = page.replace("base64", "b7")
    with pytest.raises(ValueError, match="unknown payload encoding"):
        report.read_html_page(other)
