"""The exported report's payload: filters and text encoding, checked against independent
computations (plain Python loops over the bytes), not against the code's own output."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from hopaudit import report


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
        "text_offsets": np.array([0, 10, 5, 2**32 - 1, 3], "<u4").tobytes(),
        "scatter_seq": np.array([9, 1, 65535, 0], "<u2").tobytes(),
        "scatter_seq_bytes": 2,
        "seq_ce": rng.random(33).astype("<f2").tobytes(),
        "scatter_ratio": bytes(range(256)),
        "empty": b"",
    }
    packed = report.pack_state(state)
    assert report.unpack_state(packed) == state
    (n,) = struct.unpack("<I", packed[4:8])
    header = json.loads(packed[8 : 8 + n])
    body = packed[8 + n :]
    assert header["text_offsets"]["$filters"] == [["delta", 4], ["shuffle", 4]]
    assert header["scatter_seq"]["$filters"] == [["delta", 2], ["shuffle", 2]]
    assert header["seq_ce"]["$filters"] == [["shuffle", 2]]
    assert "$filters" not in header["scatter_ratio"] and header["scatter_seq_bytes"] == 2
    start, length = header["text_offsets"]["$buffer"]
    stored = body[start : start + length]
    assert stored == shuffle_by_hand(delta_by_hand(state["text_offsets"], 4), 4)
    start, length = header["scatter_ratio"]["$buffer"]
    assert body[start : start + length] == bytes(range(256))
    # no filters at all: the buffers are stored as they are
    assert report.unpack_state(report.pack_state(state, filters={})) == state


def b7_by_hand(data: bytes) -> str:
    """The b7 text of ``data``, from its description, one bit at a time."""
    bits = "".join(f"{b:08b}" for b in data)
    bits += "0" * (-len(bits) % 7)
    out = []
    for i in range(0, len(bits), 7):
        v = int(bits[i : i + 7], 2)
        unsafe = {0x00: 0, 0x0D: 1, 0x3C: 2, 0x7F: 3}
        out.append("\x7f" + "0123"[unsafe[v]] if v in unsafe else chr(v))
    return f"{len(data)}:" + "".join(out)


def check_b7_text(text: str) -> None:
    raw = text.encode("utf-8")  # a Python str of ASCII is valid UTF-8; check the bytes anyway
    raw.decode("utf-8", errors="strict")
    assert text.isascii()
    assert "\0" not in text and "\r" not in text and "<" not in text


@pytest.mark.parametrize(
    "data",
    [b"", bytes(range(256)), bytes(range(255, -1, -1)), b"\0" * 50, b"\xff" * 50, b"<" * 9]
    + [bytes((7 * i + 60) % 256 for i in range(n)) for n in range(1, 21)],
)
def test_b7_matches_its_description_and_round_trips(data):
    text = report.encode_text(data)
    assert text == b7_by_hand(data)
    check_b7_text(text)
    assert report.decode_text(text) == data


def test_b7_every_group_value_and_its_escapes():
    # 128 groups of 7 bits holding 0, 1, ..., 127 in order: 112 bytes
    bits = "".join(f"{v:07b}" for v in range(128))
    data = int(bits, 2).to_bytes(112, "big")
    text = report.encode_text(data)
    body = text.split(":", 1)[1]
    assert text.startswith("112:")
    expected = [chr(v) for v in range(128)]
    for i, v in enumerate((0x00, 0x0D, 0x3C, 0x7F)):
        expected[v] = "\x7f" + str(i)
    assert body == "".join(expected)
    assert report.decode_text(text) == data


def test_b7_one_megabyte_round_trips_fast_and_small():
    import time

    data = np.random.default_rng(5).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    t = time.perf_counter()
    text = report.encode_text(data)
    seconds = time.perf_counter() - t
    check_b7_text(text)
    assert report.decode_text(text) == data
    assert seconds < 0.5, seconds
    # 8/7 characters per byte, plus 4 escapes in 128 random groups: about 1.18 (base64: 1.33)
    assert len(text) / len(data) == pytest.approx(8 / 7 * (1 + 4 / 128), rel=0.003)


@pytest.mark.parametrize(
    "text",
    [
        "3",  # no colon
        "x:abcd",  # no length
        "3:0XL",  # one group short
        "3:0XL00",  # one group too many
        "3:0XL1",  # padding bits set
        "3:0XL0\x7f",  # an escape at the end
        "3:0XL0\x7f9",  # an unknown escape
        "1:<\x00",  # a raw unsafe character
        "1:é0",  # outside ASCII
    ],
)
def test_b7_refuses_damaged_text(text):
    assert report.decode_text("3:0XL0") == b"abc"
    with pytest.raises(ValueError, match="not b7 text"):
        report.decode_text(text)
