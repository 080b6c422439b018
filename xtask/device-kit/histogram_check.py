#!/usr/bin/env python3
"""Run a histogram example of gpuring's on files and check its answer.

    python3 histogram_check.py EXAMPLE FILE...

The example prints, last, {"files": N, "bytes": N, "histogram": [256]};
this compares it with a histogram of an independent read (NumPy when it is
there) and prints one JSON object: match, bytes, seconds, GiB/s, and the
example's error when it failed.
"""

import json
import subprocess
import sys
import time


def histogram(paths):
    counts = [0] * 256
    try:
        import numpy

        for p in paths:
            counts = [a + int(b) for a, b in zip(counts, numpy.bincount(numpy.fromfile(p, dtype=numpy.uint8), minlength=256))]
    except ImportError:
        import collections

        for p in paths:
            with open(p, "rb") as f:
                for k, v in collections.Counter(f.read()).items():
                    counts[k] += v
    return counts


def main():
    example, paths = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    out = subprocess.run([example, *paths], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    report = {"example": example, "seconds": seconds, "exit": out.returncode}
    try:
        got = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        report["error"] = (out.stderr.strip().splitlines() or ["no output"])[-1]
        print(json.dumps(report))
        return
    want = histogram(paths)
    report.update(bytes=got["bytes"], match=got["histogram"] == want and got["bytes"] == sum(want))
    report["gib_per_s"] = got["bytes"] / seconds / float(1 << 30)
    report["note"] = (out.stderr.strip().splitlines() or [""])[-1]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
