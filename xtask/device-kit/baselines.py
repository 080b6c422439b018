#!/usr/bin/env python3
"""What gpuring is compared with on a GPU machine, on the same file.

Prints one JSON object: every case's GiB/s (median of --runs), whether the
bytes that reached the GPU equal the reference, and the versions used.

- pinned-htod: one copy of the file's size from pinned host memory to the
  GPU (CuPy): the PCIe ceiling, measured independently of gpuring's.
- read-copy: what users do today: read() the whole file into host memory,
  then copy it to the GPU (cupy.asarray from pageable memory). Its result
  is the reference the other cases are compared with on the GPU.
- kvikio-compat-{on,off}-{N}t: KvikIO's CuFile.read into a CuPy array with
  its thread pool of N threads; compat mode on (POSIX reads into bounce
  buffers, then copies) or off (cuFile, GPUDirect Storage where the
  platform allows it). The page cache is warm, as in gpuring's buffered
  cases.
- kvikio-compat-{on,off}-{N}t-cold: the same with the file dropped from the
  page cache before every run (compare with gpuring-direct).

A case that cannot run says why in its "error"; the script itself exits 0
whenever it could write its report.
"""

import argparse
import json
import os
import statistics
import sys
import time

GIB = float(1 << 30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", default="1", help="thread counts for KvikIO, comma-separated")
    a = ap.parse_args()
    size = os.path.getsize(a.file)
    report = {"file": a.file, "bytes": size, "runs": a.runs, "versions": {"python": sys.version.split()[0]}, "cases": []}

    def emit():
        print(json.dumps(report))

    try:
        import cupy
        import numpy

        report["versions"]["cupy"] = cupy.__version__
        report["versions"]["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        report["versions"]["gpus"] = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no CuPy, no driver, no GPU
        report["skipped"] = f"CuPy cannot reach a GPU here: {type(e).__name__}: {e}"
        return emit()

    def sync():
        cupy.cuda.runtime.deviceSynchronize()

    def timed(name, what, once, before=None, check=None):
        """Run `once` --runs times; `before` runs untimed before each."""
        case = {"name": name, "what": what, "runs": [], "match": None}
        report["cases"].append(case)
        try:
            for _ in range(a.runs):
                if before:
                    before()
                sync()
                t0 = time.perf_counter()
                moved = once()
                sync()
                seconds = time.perf_counter() - t0
                if moved != size:
                    raise RuntimeError(f"moved {moved} of {size} bytes")
                case["runs"].append(size / seconds / GIB)
            case["gib_per_s"] = statistics.median(case["runs"])
            if check:
                case["match"] = bool(check())
        except Exception as e:
            case["error"] = f"{type(e).__name__}: {e}"
        print(f"{name}: {case.get('gib_per_s', 0):.2f} GiB/s match {case['match']} {case.get('error', '')}", file=sys.stderr)

    # The PCIe ceiling: pinned host memory to the GPU, one copy.
    pinned = cupy.cuda.alloc_pinned_memory(size)
    host = numpy.frombuffer(pinned, numpy.uint8, size)
    host.fill(0x5A)
    dev = cupy.empty(size, dtype=cupy.uint8)

    def pinned_copy():
        dev.set(host)
        return size

    timed("pinned-htod", "one copy from pinned host memory (the PCIe ceiling)", pinned_copy)
    del host, pinned

    # Today's way, also the reference for every other case.
    ref = {}

    def read_copy():
        with open(a.file, "rb") as f:
            data = f.read()
        ref["array"] = cupy.asarray(numpy.frombuffer(data, numpy.uint8))
        return ref["array"].size

    timed("read-copy", "read() into host memory, then a copy to the GPU (pageable)", read_copy)
    reference = ref.get("array")
    if reference is None:
        report["skipped_kvikio"] = "the reference read failed"
        return emit()

    try:
        import kvikio

        report["versions"]["kvikio"] = kvikio.__version__
    except Exception as e:
        report["skipped_kvikio"] = f"KvikIO does not import: {type(e).__name__}: {e}"
        return emit()

    dst = cupy.empty(size, dtype=cupy.uint8)

    def kvikio_read():
        with kvikio.CuFile(a.file, "r") as f:
            return f.read(dst)

    def matches():
        return cupy.array_equal(dst, reference)

    # Untimed before each run: clear the destination (a stale match is no
    # match), and for the cold cases drop the file from the page cache.
    def clear():
        dst.fill(0)

    def clear_and_drop():
        dst.fill(0)
        kvikio.drop_file_page_cache(a.file)

    threads = [int(t) for t in a.threads.split(",") if t]
    for compat in ["on", "off"]:
        mode = kvikio.CompatMode.ON if compat == "on" else kvikio.CompatMode.OFF
        for n in threads:
            with kvikio.defaults.set({"compat_mode": mode, "num_threads": n}):
                what = f"KvikIO CuFile.read into a CuPy array, compat mode {compat}, {n} threads, warm page cache"
                timed(f"kvikio-compat-{compat}-{n}t", what, kvikio_read, before=clear, check=matches)
        n = max(threads)
        with kvikio.defaults.set({"compat_mode": mode, "num_threads": n}):
            what = f"KvikIO CuFile.read, compat mode {compat}, {n} threads, file dropped from the page cache before each run"
            timed(f"kvikio-compat-{compat}-{n}t-cold", what, kvikio_read, before=clear_and_drop, check=matches)
    emit()


if __name__ == "__main__":
    main()
