#!/usr/bin/env python3
"""Turn a device-kit run's logs into one table.

    python3 summarize.py LOGS OUT

reads what run.sh left in LOGS (steps.txt, probe.out, hwtest.out, bench.out,
mode-*.out, kvikio.out) and writes OUT/summary.md and OUT/summary.json: one
row per case with its verdict (pass, fail, skipped, measured, or error for a
baseline that could not run), GiB/s, and
ratio to the pinned host-to-device ceiling (gpuring's bench measures it;
where that did not run, the baselines' own CuPy measurement stands in).
Whatever is missing or unreadable becomes a row that says so, never a crash.
"""

import json
import os
import sys


def load(path):
    """The JSON in `path`, or None."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def last_line(path, fallback):
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
        return lines[-1] if lines else fallback
    except OSError:
        return fallback


def main():
    logs, out = sys.argv[1], sys.argv[2]
    steps = []
    try:
        with open(os.path.join(logs, "steps.txt")) as f:
            steps = [l.rstrip("\n") for l in f]
    except OSError:
        pass
    rows = []

    def row(case, verdict, gib=None, detail=""):
        rows.append({"case": case, "verdict": verdict, "gib_per_s": gib, "detail": detail})

    def step_state(name):
        """('skipped', why), ('ran', line) or (None, None) from steps.txt."""
        for line in steps:
            if line.startswith(f"step {name} skipped: "):
                return "skipped", line.split("skipped: ", 1)[1]
            if line.startswith(f"step {name} rc="):
                return "ran", line
        return None, None

    def why_failed(name):
        state, line = step_state(name)
        if state == "skipped":
            return "skipped", line
        if state is None:
            return "fail", "did not run (the kit stopped before it)"
        if "timed out" in line:
            return "fail", f"timed out ({line})"
        return "fail", last_line(os.path.join(logs, f"{name}.err"), f"no output ({line})").removeprefix("gpuring: error: ")

    # The hardware suite.
    hw = load(os.path.join(logs, "hwtest.out"))
    if hw and isinstance(hw.get("rows"), list):
        for r in hw["rows"]:
            row(f"hwtest {r['backend']} {r['path']}", r["status"], r.get("gib_per_s"), r.get("detail", ""))
    else:
        verdict, why = why_failed("hwtest")
        row("hwtest", verdict, None, why)

    # gpuring's bench on the CUDA backend.
    bench = load(os.path.join(logs, "bench.out"))
    ceiling, ceiling_from = None, None
    if bench and isinstance(bench.get("cases"), list):
        for c in bench["cases"]:
            if c["name"] == "pinned-htod":
                ceiling, ceiling_from = c["gib_per_s"], "gpuring bench pinned-htod (cuMemcpyHtoD from pinned memory)"
        for c in bench["cases"]:
            detail = f"{bench['size']} bytes, {bench['slots']} slots of {bench['slot_size']}, median of {bench['runs']}"
            ratios = c.get("ratios") or {}
            extra = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if isinstance(v, (int, float)))
            row(f"bench {c['name']}", "measured", c["gib_per_s"], f"{detail}{'; ' + extra if extra else ''}")
        # Buffered ingest by shard count, and memory by input size.
        for p in bench.get("scaling") or []:
            row(f"bench scaling {p['shards']} shards", "measured", p["gib_per_s"], f"buffered, {bench['size']} bytes, CPU {p['cpu_s_per_gib']:.3f} s/GiB")
        for p in bench.get("size_section") or []:
            row(f"bench size {p['bytes']} B in {p['files']} file(s)", "measured", p["gib_per_s"], f"peak resident {p['peak_rss_bytes']} bytes (before {p['rss_before_bytes']})")
    else:
        verdict, why = why_failed("bench")
        row("bench (cuda)", verdict, None, why)

    # Every CUDA consumer mode on the bench's file.
    mode_steps = sorted({l.split()[1] for l in steps if l.startswith("step mode-")})
    state, why = step_state("modes")
    if state == "skipped":
        row("cuda modes", "skipped", None, why)
    for name in mode_steps:
        v = load(os.path.join(logs, f"{name}.out"))
        mode, how = name[len("mode-"):].rsplit("-", 1)
        case = f"cuda {mode} {'O_DIRECT' if how == 'direct' else 'buffered'}"
        if not isinstance(v, dict) or "complete" not in v:
            verdict, why = why_failed(name)
            row(case, verdict, None, why)
            continue
        ok = v.get("complete") and v.get("checksum", {}).get("match") and v.get("zero_bounce") and (how != "direct" or v.get("dma_only"))
        detail = (
            f"{v.get('bytes')} bytes, checksum match {v.get('checksum', {}).get('match')}, zero-bounce {v.get('zero_bounce')}, "
            f"DMA-only {v.get('dma_only')}, device copy {v.get('device_copy_bytes')} bytes"
        )
        row(case, "pass" if ok else "fail", v.get("gib_per_s"), detail)

    # gpuring load of the bench's checkpoint into CUDA device memory.
    for how in ("buffered", "direct"):
        name, case = f"load-{how}", f"cuda load {'O_DIRECT' if how == 'direct' else 'buffered'}"
        v = load(os.path.join(logs, f"{name}.out"))
        if not isinstance(v, dict) or "tensors" not in v:
            verdict, why = why_failed(name)
            row(case, verdict, None, why)
            continue
        ok = v.get("checksum", {}).get("match") and all(t.get("match") for t in v["tensors"]) and v.get("device_copy_bytes") == v.get("bytes")
        detail = f"{len(v['tensors'])} tensors, {v.get('bytes')} bytes, every tensor read back and matched: {bool(ok)}, device copy {v.get('device_copy_bytes')} bytes"
        row(case, "pass" if ok else "fail", v.get("gib_per_s"), detail)

    # gpuring::load::cuda: tensors kept in device memory, read back by view.
    v = load(os.path.join(logs, "load-kept.out"))
    if isinstance(v, dict) and "matched" in v:
        detail = f"{v.get('tensors')} tensors, {v.get('bytes')} bytes kept in device memory, every view read back and matched: {v.get('matched')}"
        row("cuda load kept", "pass" if v.get("matched") else "fail", v.get("gib_per_s"), detail)
    else:
        verdict, why = why_failed("load-kept")
        row("cuda load kept", verdict, None, why)

    # A CUDA kernel of a user's (the cuda_histogram example).
    ex = load(os.path.join(logs, "cuda-example.out"))
    if isinstance(ex, dict) and "match" in ex:
        row("cuda user kernel (cuda_histogram)", "pass" if ex["match"] else "fail", ex.get("gib_per_s"), f"{ex.get('bytes')} bytes against an independent histogram; {ex.get('note', '')}")
    elif isinstance(ex, dict):
        row("cuda user kernel (cuda_histogram)", "fail", None, ex.get("error", "no histogram"))
    else:
        verdict, why = why_failed("cuda-example")
        row("cuda user kernel (cuda_histogram)", verdict, None, why)

    # KvikIO and read()+copy.
    kv = load(os.path.join(logs, "kvikio.out"))
    if isinstance(kv, dict) and "cases" in kv:
        if kv.get("skipped"):
            row("kvikio baselines", "skipped", None, kv["skipped"])
        if kv.get("skipped_kvikio"):
            row("kvikio", "skipped", None, kv["skipped_kvikio"])
        for c in kv["cases"]:
            if c["name"] == "pinned-htod" and ceiling is None and c.get("gib_per_s"):
                ceiling, ceiling_from = c["gib_per_s"], "the baselines' pinned-htod (CuPy), gpuring's bench gave none"
            if c.get("error"):
                # A baseline that could not run here (say, KvikIO without
                # GPUDirect Storage) is a finding, not a failure of gpuring's.
                verdict = "error"
            elif c.get("match") is None:
                verdict = "measured"
            else:
                verdict = "pass" if c["match"] else "fail"
            detail = c.get("what", "") + (f"; error: {c['error']}" if c.get("error") else "")
            row(f"py {c['name']}", verdict, c.get("gib_per_s"), detail)
    else:
        verdict, why = why_failed("kvikio")
        row("kvikio baselines", verdict, None, why)

    for r in rows:
        g = r["gib_per_s"]
        r["vs_pinned_htod"] = g / ceiling if (ceiling and isinstance(g, (int, float))) else None

    summary = {"ceiling_gib_per_s": ceiling, "ceiling_from": ceiling_from, "rows": rows, "steps": steps}
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "MANIFEST.txt")) as f:
            manifest = f.readline().strip()
    except OSError:
        manifest = ""
    summary["kit"] = manifest
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = ["# gpuring device kit", ""]
    md.append(f"Pinned host-to-device ceiling: {f'{ceiling:.2f} GiB/s, from {ceiling_from}' if ceiling else 'not measured'}.")
    md += ["", "| case | verdict | GiB/s | vs pinned HtoD | detail |", "|---|---|---:|---:|---|"]
    for r in rows:
        g = "" if r["gib_per_s"] is None else f"{r['gib_per_s']:.2f}"
        x = "" if r["vs_pinned_htod"] is None else f"{r['vs_pinned_htod']:.2f}x"
        md.append(f"| {r['case']} | {r['verdict']} | {g} | {x} | {r['detail'].replace('|', '/')} |")
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    md += ["", "Verdicts: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())), "", "Steps:", ""]
    md += [f"    {l}" for l in steps]
    if manifest:
        md += ["", f"Kit: {manifest}"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
