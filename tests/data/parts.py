"""What Python's safetensors reads of a checkpoint, for gpuring's load tests:
every tensor, or one rank's part of every tensor, as safetensors' own
`safe_open(...).get_slice(name)[...]` returns it.

    python3 parts.py CHECKPOINT OUTDIR [RANK WORLD DIM]

Writes OUTDIR/N.bin (the part's bytes, C order) per tensor and
OUTDIR/manifest.json: {name: {"file", "dtype", "shape", "sum"}}, where
`sum` is numpy's float64 sum of the values (null where numpy cannot read
the dtype; such a tensor has no file and "error" says why). A part is
`torch.chunk(tensor, WORLD, DIM)[RANK]`: rows [RANK*c, RANK*c + c) of
c = ceil(size / WORLD), clipped to the size; a tensor without dimension
DIM is whole.
"""

import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open


def main():
    path, out = sys.argv[1], sys.argv[2]
    part = [int(x) for x in sys.argv[3:6]] if len(sys.argv) >= 6 else None
    os.makedirs(out, exist_ok=True)
    manifest = {}
    with safe_open(path, framework="np") as f:
        for i, name in enumerate(f.keys()):
            s = f.get_slice(name)
            shape = list(s.get_shape())
            entry = {"dtype": s.get_dtype(), "shape": shape}
            index = tuple(slice(None) for _ in shape)
            if part is not None and part[2] < len(shape):
                rank, world, dim = part
                size = shape[dim]
                chunk = math.ceil(size / world)
                start = min(rank * chunk, size)
                index = index[:dim] + (slice(start, min(start + chunk, size)),) + index[dim + 1 :]
            entry["shape"] = [len(range(*i.indices(n))) for i, n in zip(index, shape)]
            # safetensors refuses an empty slice ("index out of bounds"):
            # an empty part, or an empty tensor, is sliced from its whole.
            empty = any(i.start is not None and i.start >= i.stop for i in index) or 0 in shape
            try:
                array = s[index] if shape and not empty else f.get_tensor(name)[index]
            except Exception as e:  # numpy has no such dtype (BF16, F8...)
                entry.update({"file": None, "sum": None, "error": str(e)})
                manifest[name] = entry
                continue
            array = np.array(array, order="C")  # keeps a scalar 0-d
            entry["shape"] = list(array.shape)
            entry["file"] = f"{i}.bin"
            entry["sum"] = float(array.astype(np.float64).sum()) if array.dtype.kind in "fiub" else None
            with open(os.path.join(out, entry["file"]), "wb") as g:
                g.write(array.tobytes())
            manifest[name] = entry
    with open(os.path.join(out, "manifest.json"), "w") as g:
        json.dump(manifest, g)


if __name__ == "__main__":
    main()
