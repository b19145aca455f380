#!/usr/bin/env python3
"""Writes the seed corpora (corpus/<target>/) and the regression inputs (regressions/<target>/)
of the fuzz targets, so that the checked-in bytes can be made again and read as code.

Seeds are small valid files of each kind plus a few damaged ones; regressions are the inputs
that reproduced a fixed defect, one file each, named after it. Run from anywhere:

    python3 tests/fuzz/make_corpus.py

Formats: nn/data/idx.h (IDX, big-endian, optionally gzip), nn/serialize.h (state dict,
little-endian, FNV-1a 64 checksum at the end) and optim/checkpoint.h (a state dict whose keys say
which part of the training state each tensor is).
"""
import gzip
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(kind, target, name, data):
    d = os.path.join(HERE, kind, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(data):
    return gzip.compress(data, mtime=0)


# ---- IDX ----

IDX_TYPES = {"u8": (0x08, "B"), "i32": (0x0C, "i"), "f32": (0x0D, "f"), "f64": (0x0E, "d")}


def idx(dtype, dims, values=None):
    code, fmt = IDX_TYPES[dtype]
    n = 1
    for d in dims:
        n *= d
    if values is None:
        values = [(i * 7) % 100 for i in range(n)]
    head = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + b"".join(struct.pack(">" + fmt, v) for v in values)


def idx_corpus():
    t = "idx"
    write("corpus", t, "u8_1d_plain", idx("u8", [5]))
    write("corpus", t, "u8_3d_images.gz", gz(idx("u8", [2, 4, 4])))
    write("corpus", t, "i32_2d.gz", gz(idx("i32", [3, 2], [-70000, 0, 1, 2147483647, -2147483648, 5])))
    write("corpus", t, "f32_2d.gz", gz(idx("f32", [2, 3], [1.5, -0.0, 3.25, 1e-20, 6.5e30, float("inf")])))
    write("corpus", t, "f64_3d.gz", gz(idx("f64", [1, 2, 2], [0.1, -2.0, 1e300, float("nan")])))
    write("corpus", t, "zero_dim.gz", gz(idx("u8", [0, 28, 28])))
    write("corpus", t, "two_gzip_members.gz", gz(idx("u8", [4])[:6]) + gz(idx("u8", [4])[6:]))
    # Damaged: cut, bad magic, bad type, wrong CRC, bytes after the data, no gzip trailer.
    good = gz(idx("u8", [3, 5]))
    write("corpus", t, "cut_in_half.gz", good[: len(good) // 2])
    write("corpus", t, "bad_magic", b"\x08\x03\x08\x01\x00\x00\x00\x01\x05")
    write("corpus", t, "i8_unsupported", bytes([0, 0, 0x09, 1, 0, 0, 0, 1, 5]))
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0x55
    write("corpus", t, "bad_crc.gz", bytes(bad_crc))
    write("corpus", t, "extra_bytes.gz", gz(idx("u8", [2]) + b"\x07"))
    write("corpus", t, "no_trailer.gz", good[:-8])
    write("corpus", t, "huge_claim", bytes([0, 0, 0x08, 1, 0xF0, 0, 0, 0, 1, 2, 3]))
    # Regressions: dims whose product only looked small because one of them is 0
    # (Note [shape arithmetic] in engine/shape.h): a ShapeError naming no file, then an
    # overflowed stride.
    ff = 0xFFFFFFFF
    write("regressions", t, "zero_dim_hides_overflow_last", idx("u8", [ff, ff, 0]))
    write("regressions", t, "zero_dim_hides_overflow_first", idx("u8", [0, ff, ff]))
    write("regressions", t, "zero_dim_hides_overflow_middle.gz", gz(idx("f64", [ff, 0, ff])))
    # Found by fuzz_idx: an empty tensor of dims (0, 2^32-1, 0) was not contiguous.
    write("regressions", t, "empty_tensor_is_contiguous", idx("u8", [0, ff, 0]))


# ---- state dict ----

DTYPES = {"f32": (0, "f"), "f64": (1, "d"), "f16": (2, "e"), "bf16": (3, "H"), "i32": (4, "i"),
          "i64": (5, "q"), "u8": (6, "B"), "bool": (7, "?")}


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def entry(name, dtype, dims, values=None, raw=None):
    code, fmt = DTYPES[dtype]
    n = 1
    for d in dims:
        n *= d
    if raw is None:
        if values is None:
            values = [i % 2 if dtype == "bool" else i for i in range(n)]
        raw = b"".join(struct.pack("<" + fmt, v) for v in values)
    name_b = name.encode()
    return (struct.pack("<I", len(name_b)) + name_b + bytes([code, len(dims)]) +
            b"".join(struct.pack("<q", d) for d in dims) + struct.pack("<Q", len(raw)) + raw)


def state_dict(entries, count=None, version=1, checksum=True):
    body = b"HRSTDICT" + struct.pack("<I", version) + struct.pack("<Q", len(entries) if count is None else count)
    body += b"".join(entries)
    return body + struct.pack("<Q", fnv1a64(body) if checksum else 0)


def state_dict_corpus():
    t = "state_dict"
    write("corpus", t, "empty", state_dict([]))
    write("corpus", t, "one_f32", state_dict([entry("w", "f32", [2, 3])]))
    write("corpus", t, "every_dtype", state_dict([entry("t_" + k, k, [3]) for k in DTYPES]))
    write("corpus", t, "scalar_and_zero_size",
          state_dict([entry("s", "f64", [], [2.5]), entry("z", "f32", [0, 4])]))
    write("corpus", t, "linear_layer",
          state_dict([entry("0.bias", "f32", [4]), entry("0.weight", "f32", [4, 3]), entry("step", "i64", [1])]))
    # Damaged: checksum, cut, version, duplicate names, a count beyond the file, a bad dtype.
    one = state_dict([entry("w", "f32", [2, 3])])
    write("corpus", t, "bad_checksum", one[:-1] + bytes([one[-1] ^ 1]))
    write("corpus", t, "cut", one[:40])
    write("corpus", t, "version_2", state_dict([entry("w", "f32", [1])], version=2))
    write("corpus", t, "duplicate_names", state_dict([entry("a", "u8", [1]), entry("a", "u8", [1])]))
    write("corpus", t, "count_too_big", state_dict([entry("a", "u8", [1])], count=3))
    bad_dtype = bytearray(state_dict([entry("a", "u8", [1])]))
    bad_dtype[20 + 4 + 1] = 9
    write("corpus", t, "dtype_9", bytes(bad_dtype))
    # Regressions: a zero dim beside dims whose strides overflow (was a ShapeError naming no
    # file), and a bool byte that is not 0 or 1 (undefined behaviour when read as a bool).
    big = 1 << 62
    write("regressions", t, "zero_dim_hides_overflow", state_dict([entry("e", "f32", [0, big, big], raw=b"")]))
    write("regressions", t, "zero_dim_hides_overflow_last", state_dict([entry("e", "u8", [big, big, 0], raw=b"")]))
    write("regressions", t, "bool_byte_2", state_dict([entry("m", "bool", [3], raw=b"\x01\x00\x02")]))


# ---- training checkpoint (optim/checkpoint.h) ----
# For the objects checkpoint_fuzz.cpp restores into: a Linear(3, 2) ("weight" [2, 3], "bias" [2]),
# SGD with momentum (a buffer per parameter), a GradScaler, a BatchSplitter, a StepLR, the RNG.


def i64(name, v):
    return entry(name, "i64", [], [v])


def checkpoint_entries(momentum=True):
    e = [i64("checkpoint/version", 1),
         entry("model/weight", "f32", [2, 3], [0.5, -0.25, 1.0, 0.0, 2.0, -1.5]),
         entry("model/bias", "f32", [2], [0.1, -0.2]),
         entry("optim/lr", "f64", [], [0.05]),
         entry("scaler/scale", "f64", [], [32768.0]), i64("scaler/growth_tracker", 3), i64("scaler/skipped_steps", 1),
         i64("splitter/micro_batch_size", 4), i64("splitter/steps", 5), i64("splitter/clean_steps", 2),
         i64("splitter/grow_wait", 0), i64("splitter/ooms_recovered", 1), i64("splitter/grow_attempts", 0),
         i64("splitter/grow_failures", 0), i64("schedule/step", 5), i64("rng/seed", 7), i64("rng/offset", 96),
         i64("loop/step", 5), i64("loop/epoch", 1), i64("loop/next_batch", 2),
         entry("loop/data_order", "i64", [4], [2, 0, 3, 1]), entry("extra/loss_sum", "f64", [], [1.25])]
    if momentum:
        e += [entry("optim/param.0.momentum_buffer", "f32", [2, 3]), entry("optim/param.1.momentum_buffer", "f32", [2])]
    return e


def checkpoint_corpus():
    t = "checkpoint"
    write("corpus", t, "after_five_steps", state_dict(checkpoint_entries()))
    write("corpus", t, "before_any_momentum", state_dict(checkpoint_entries(momentum=False)))
    # Refused by restore (a ValueError naming the file, nothing changed), one reason each.
    def without(name):
        return [x for x in checkpoint_entries() if not x[4:4 + len(name)] == name.encode()]
    write("corpus", t, "no_scaler", state_dict(without("scaler/")))
    write("corpus", t, "wrong_weight_shape",
          state_dict(without("model/weight") + [entry("model/weight", "f32", [3, 2])]))
    write("corpus", t, "one_momentum_buffer_missing", state_dict(without("optim/param.1.momentum_buffer")))
    write("corpus", t, "order_not_a_permutation",
          state_dict(without("loop/data_order") + [entry("loop/data_order", "i64", [3], [0, 0, 2])]))
    write("corpus", t, "negative_schedule_step", state_dict(without("schedule/step") + [i64("schedule/step", -1)]))
    write("corpus", t, "a_models_state_dict", state_dict([entry("weight", "f32", [2, 3]), entry("bias", "f32", [2])]))
    write("corpus", t, "version_2", state_dict(without("checkpoint/version") + [i64("checkpoint/version", 2)]))


if __name__ == "__main__":
    idx_corpus()
    state_dict_corpus()
    checkpoint_corpus()
