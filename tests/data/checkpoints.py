"""Write safetensors checkpoints with Python's `safetensors` and `numpy`, for
gpuring's load tests: files nobody in this project wrote by hand.

    python3 checkpoints.py DIR

DIR/good/: checkpoints gpuring must load byte for byte; DIR/bad/: damaged
files, each of which must get its own error. Prints one line per file.
"""

import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open, serialize_file
from safetensors import _safetensors_rust as _rust
from safetensors.numpy import save_file


def rng(seed):
    return np.random.default_rng(seed)


def raw_tensor(dtype, shape, array):
    """A tensor for safetensors' own serializer, given as raw bytes: 0.8 takes
    a TensorSpec (dtype, shape, address, length), earlier versions a dict."""
    if hasattr(_rust, "TensorSpec"):
        return _rust.TensorSpec(dtype=dtype, shape=shape, data_ptr=array.ctypes.data, data_len=array.nbytes)
    return {"dtype": dtype, "shape": shape, "data": array.tobytes()}


def write_good(d):
    r = rng(1)
    # Every dtype the tests ask for, a scalar, an empty tensor, metadata.
    mixed = {
        "f32": r.standard_normal((17, 33)).astype(np.float32),
        "f16": r.standard_normal((5, 7, 3)).astype(np.float16),
        "i64": r.integers(-(2**62), 2**62, size=(129,), dtype=np.int64),
        "u8": r.integers(0, 256, size=(1000,), dtype=np.uint8),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    save_file(mixed, os.path.join(d, "mixed.safetensors"), metadata={"format": "np", "written_by": "safetensors.numpy"})
    # bf16 (numpy has no bf16): raw bytes through safetensors' own serializer.
    bf16 = r.integers(0, 2**16, size=(64, 3), dtype=np.uint16)
    bias = np.ones(3, np.float32)
    serialize_file({"bf16": raw_tensor("bfloat16", [64, 3], bf16), "bias": raw_tensor("float32", [3], bias)}, os.path.join(d, "bf16.safetensors"), metadata=None)
    # Hundreds of tensors of odd sizes.
    many = {f"layer.{i:03}.weight": r.standard_normal((i % 13 + 1, i % 7 + 1)).astype(np.float32) for i in range(300)}
    save_file(many, os.path.join(d, "many.safetensors"))
    # One tensor spanning many slots (6 MiB and a bit).
    big = {"big": r.integers(0, 256, size=(6 * 1024 * 1024 + 4099,), dtype=np.uint8), "tail": np.arange(10, dtype=np.int64)}
    save_file(big, os.path.join(d, "big.safetensors"))
    # A sharded checkpoint and its index.
    shard1 = {"embed": r.standard_normal((100, 16)).astype(np.float32), "norm": np.ones(16, np.float16)}
    shard2 = {"head": r.standard_normal((16, 100)).astype(np.float32)}
    save_file(shard1, os.path.join(d, "model-00001-of-00002.safetensors"))
    save_file(shard2, os.path.join(d, "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in shard1} | {k: "model-00002-of-00002.safetensors" for k in shard2}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def header_file(path, header, data):
    """A file with this JSON header (as given) and data."""
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def write_bad(d, good):
    with open(os.path.join(good, "mixed.safetensors"), "rb") as f:
        whole = f.read()
    # Truncated: the last 100 bytes of data are gone.
    with open(os.path.join(d, "truncated.safetensors"), "wb") as f:
        f.write(whole[:-100])
    # The header length says more than the file holds.
    with open(os.path.join(d, "header-too-long.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 1 << 20) + b'{"a":')
    t = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    # Offsets past the data.
    header_file(os.path.join(d, "offsets-out-of-range.safetensors"), {"a": t, "b": {"dtype": "F32", "shape": [12], "data_offsets": [16, 64]}}, bytes(32))
    # Two tensors over the same bytes.
    header_file(os.path.join(d, "overlapping.safetensors"), {"a": t, "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    # Not JSON at all.
    with open(os.path.join(d, "invalid-header.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 12) + b"not json !!!" + bytes(8))


def main():
    out = sys.argv[1]
    good, bad = os.path.join(out, "good"), os.path.join(out, "bad")
    os.makedirs(good, exist_ok=True)
    os.makedirs(bad, exist_ok=True)
    write_good(good)
    write_bad(bad, good)
    # What safetensors itself reads back from each good file: name, dtype
    # and shape of every tensor, for the tests to compare gpuring's with.
    manifest = {}
    for name in sorted(os.listdir(good)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(good, name), framework="np") as f:
                manifest[name] = {k: {"dtype": f.get_slice(k).get_dtype(), "shape": list(f.get_slice(k).get_shape())} for k in f.keys()}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    for d in (good, bad):
        for name in sorted(os.listdir(d)):
            print(os.path.join(d, name), os.path.getsize(os.path.join(d, name)))


if __name__ == "__main__":
    main()
