#!/usr/bin/env bash
# gpuring's device kit: prove the GPU paths on a machine that has no Rust
# toolchain and no network, in one call, each step time-boxed.
#
#   OUT=DIR bash run.sh
#
# writes into DIR: summary.md (one table: case, verdict, GiB/s, ratio to the
# pinned host-to-device ceiling), summary.json (the same rows), machine.txt
# (what the machine is) and logs.tar.gz (every log, JSON and report). They are
# rewritten after every step, so a run cut short still brings back what it did.
#
# Knobs (environment): KIT_SIZE (the bench's file, default 4G), KIT_CHECKPOINT
# (the bench's and load's checkpoint, default 1G), KIT_RUNS (runs per bench
# case, default 3), KIT_WORK (where the data goes, default
# device-kit-work/ beside the kit's folder, never inside it, so the kit stays
# small enough to carry; it must allow O_DIRECT), KIT_REQUIRE (backends the
# hardware suite must pass on besides those found here, e.g. "host vulkan"),
# KIT_BUDGET (seconds for the whole run, default 450: a step never runs past
# it, and one that would start with less than 20 s left is skipped).
#
# Made by `cargo xtask device-kit`; README.md ("On a GPU machine without Rust")
# says how to use it.
set -u
KIT="$(cd "$(dirname "$0")" && pwd)"
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${KIT_WORK:-$(dirname "$KIT")/device-kit-work}"
SIZE="${KIT_SIZE:-4G}"
RUNS="${KIT_RUNS:-3}"
CKPT="${KIT_CHECKPOINT:-1G}"
BUDGET="${KIT_BUDGET:-450}"
LOGS="$WORK/logs"
GPURING="$KIT/bin/gpuring"
rm -rf "$LOGS"
mkdir -p "$LOGS" "$WORK/bench"
START=$SECONDS
export PYTHONUNBUFFERED=1

say() { echo "run.sh: $*" | tee -a "$LOGS/steps.txt"; }

# Rewrite the summary and the log archive from what is there now.
pack() {
    timeout 60 python3 "$KIT/summarize.py" "$LOGS" "$OUT" >>"$LOGS/summarize.log" 2>&1 || echo "summarize.py failed (see summarize.log)" >>"$LOGS/steps.txt"
    cp "$LOGS/machine.txt" "$OUT/machine.txt" 2>/dev/null
    tar -czf "$OUT/logs.tar.gz.part" -C "$WORK" logs && mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
}

# step NAME SECONDS COMMAND...: stdout to NAME.out, stderr to NAME.err, the
# outcome to steps.txt; killed after SECONDS (and 10 more if it ignores TERM),
# or sooner when the kit's budget runs out.
step() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ $left -lt 20 ]; then
        skip "$name" "the kit's time budget (KIT_BUDGET=$BUDGET s) is spent"
        return 1
    fi
    if [ $limit -gt $((left - 10)) ]; then limit=$((left - 10)); fi
    echo "==> $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"
    rc=$?
    local why=""
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why=" (timed out)"; fi
    echo "step $name rc=$rc seconds=$((SECONDS - t0))$why" >>"$LOGS/steps.txt"
    tail -n 2 "$LOGS/$name.err" | sed 's/^/    /'
    pack
    return $rc
}

# skip NAME WHY: record that a step did not run, and why.
skip() {
    echo "step $1 skipped: $2" >>"$LOGS/steps.txt"
    echo "==> $1 skipped: $2"
}

# Whether the dynamic loader knows a library by this name.
known() { ldconfig -p | awk '{print $1}' | grep -qx "$1"; }
export -f known

# What the machine is.
record_machine() {
    local t=10
    section() { echo; echo "## $*"; }
    section date; date -u
    section kernel; uname -a; cat /proc/cmdline
    section os; cat /etc/os-release 2>/dev/null | head -4
    section cpus; nproc; grep -m1 'model name' /proc/cpuinfo
    section memory; free -g; echo "memlock: $(ulimit -l)"
    section "data directory ($WORK)"; df -hT "$WORK"
    section gpu; timeout $t nvidia-smi 2>&1 | head -30
    timeout $t nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id,pcie.link.gen.max,pcie.link.width.max --format=csv 2>&1
    section "nvidia kernel modules"; grep -i nvidia /proc/modules 2>&1; cat /proc/driver/nvidia/version 2>&1
    grep -i -E 'RegistryDwords|EnableResizableBar' /proc/driver/nvidia/params 2>&1
    ls /proc/driver/nvidia-fs 2>&1 | head -3
    section cuda; timeout $t nvcc --version 2>&1 | tail -2; ls -d /usr/local/cuda* 2>&1
    ldconfig -p | grep -E 'libcuda\.so|libnvrtc\.so|libcufile\.so' 2>&1
    section "nvme devices"; ls -l /dev/nvme* /dev/ng* 2>&1 | head -20
    timeout $t lsblk -o NAME,SIZE,TYPE,MODEL,TRAN,MOUNTPOINT 2>&1 | head -30
    section "p2pmem (PCI peer-to-peer memory)"
    local found=0
    for d in /sys/bus/pci/devices/*/p2pmem; do
        [ -d "$d" ] || continue
        found=1
        echo "$d: size $(cat "$d/size" 2>&1) available $(cat "$d/available" 2>&1) published $(cat "$d/published" 2>&1)"
    done
    [ $found = 1 ] || echo "no /sys/bus/pci/devices/*/p2pmem"
    section python; python3 --version 2>&1
    timeout 60 python3 -c 'import cupy; print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())' 2>&1 | tail -1
    timeout 60 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1
    section "vulkan"; echo "loader: $VULKAN_LOADER"; echo "ICDs: ${ICDS:-none}"; echo "NVIDIA ICD: ${NVIDIA_ICD:-none}"
    section environment; echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; echo "CUDA_PATH=${CUDA_PATH:-}"
}

# The Vulkan loader and GL dispatch libraries this kit carries, used only
# where the machine lacks them: links to the missing ones go into one folder
# on LD_LIBRARY_PATH.
FALLBACK="$WORK/lib"
rm -rf "$FALLBACK"
mkdir -p "$FALLBACK"
for lib in "$KIT"/lib/*.so.*; do
    [ -e "$lib" ] || continue
    name=$(basename "$lib")
    if ! known "$name"; then ln -sf "$lib" "$FALLBACK/$name"; fi
done
if known libvulkan.so.1; then
    VULKAN_LOADER="the machine's"
else
    VULKAN_LOADER="the kit's (the machine has none)"
fi
if [ -n "$(ls "$FALLBACK")" ]; then export LD_LIBRARY_PATH="$FALLBACK${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

# The CUDA driver where the dynamic loader does not know it (a driver
# folder mounted into a VM), and NVRTC where gpuring would not look (it
# tries the loader, $CUDA_PATH and /usr/local/cuda*): Python's NVIDIA wheels.
if ! known libcuda.so.1; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        if [ -e "$d/libcuda.so.1" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
    done
fi
if ! known libnvrtc.so.13 && ! known libnvrtc.so.12 && [ -z "${CUDA_PATH:-}" ] && ! ls /usr/local/cuda*/lib64/libnvrtc.so.1* >/dev/null 2>&1; then
    nvrtc=$(timeout 20 find /usr /opt -name 'libnvrtc.so.1[23]' 2>/dev/null | head -1)
    if [ -n "$nvrtc" ]; then export CUDA_PATH="$(dirname "$(dirname "$nvrtc")")"; fi
fi

# Vulkan drivers (ICDs) in the loader's places, and the NVIDIA driver's own
# folder, which the loader does not search.
ICDS=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json /usr/local/nvidia/share/vulkan/icd.d/*.json 2>/dev/null | tr '\n' ' ')
NVIDIA_ICD=""
for f in $ICDS; do
    if grep -q -i nvidia "$f"; then NVIDIA_ICD=$f; break; fi
done
case "$NVIDIA_ICD" in
    /usr/local/nvidia/*) export VK_DRIVER_FILES="$NVIDIA_ICD" ;;
esac
if [ -n "$NVIDIA_ICD" ]; then
    say "an NVIDIA Vulkan driver (ICD) is present: $NVIDIA_ICD"
else
    say "no NVIDIA Vulkan driver (ICD) here; ICDs: ${ICDS:-none}"
fi

# A GPU here means CUDA must pass; any Vulkan driver means Vulkan must.
REQUIRE="${KIT_REQUIRE:-}"
GPU=""
if timeout 20 nvidia-smi -L >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then GPU=yes; REQUIRE="$REQUIRE cuda"; fi
if [ -n "$ICDS" ]; then REQUIRE="$REQUIRE vulkan"; fi
REQUIRE=$(echo $REQUIRE | tr ' ' '\n' | sort -u | tr '\n' ' ')
REQUIRE_ARGS=()
for b in $REQUIRE; do REQUIRE_ARGS+=(--require "$b"); done
say "kit $(head -1 "$KIT/MANIFEST.txt" 2>/dev/null); hardware suite requires: ${REQUIRE:-nothing}"

export VULKAN_LOADER ICDS NVIDIA_ICD WORK
export -f record_machine
timeout 90 bash -c record_machine >"$LOGS/machine.txt" 2>&1
pack

step probe 60 "$GPURING" probe --json --dir "$WORK"

step hwtest 170 "$KIT/bin/xtask" hwtest --gpuring "$GPURING" --out "$WORK/hwtest" --json "${REQUIRE_ARGS[@]}"
cp "$WORK/hwtest/report.md" "$LOGS/hwtest-report.md" 2>/dev/null

# The CUDA cases need a usable CUDA backend; the probe says why not.
CUDA_WHY=$(python3 - "$LOGS/probe.out" <<'EOF'
import json, sys
try:
    probe = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"gpuring probe gave no report ({e})")
    sys.exit()
row = next((c for c in probe["checks"] if c["group"] == "backend" and c["name"] == "cuda"), None)
if row is None:
    print("this gpuring was built without the cuda backend")
elif not row["ok"]:
    print(row["detail"])
EOF
)

BIG="$WORK/bench/large.bin"
if [ -n "$CUDA_WHY" ]; then
    skip bench "$CUDA_WHY"
    skip load-buffered "$CUDA_WHY"
    skip load-direct "$CUDA_WHY"
    skip load-kept "$CUDA_WHY"
    skip modes "$CUDA_WHY"
else
    # The bench makes its file unless one of the right size is there.
    step bench 240 "$GPURING" bench --json --backend cuda --dir "$WORK/bench" --size "$SIZE" --runs "$RUNS" --checkpoint-size "$CKPT" --size-max 1G --files-max 10000
    # The bench's checkpoint loaded into device memory (read_into on CUDA:
    # slots, then cuMemcpyHtoDAsync), every tensor read back and compared.
    CHECKPOINT=$(ls "$WORK"/bench/checkpoint-*.safetensors 2>/dev/null | head -1)
    if [ -n "$CHECKPOINT" ]; then
        step load-buffered 60 "$GPURING" load --json --backend cuda "$CHECKPOINT"
        step load-direct 60 "$GPURING" load --json --backend cuda --direct "$CHECKPOINT"
        # gpuring::load::cuda: the tensors stay in device memory; each is
        # read back through its CudaView and compared with a host load.
        step load-kept 60 "$KIT/bin/load_device" "$CHECKPOINT"
    else
        skip load-buffered "the bench made no checkpoint"
        skip load-direct "the bench made no checkpoint"
        skip load-kept "the bench made no checkpoint"
    fi
    if [ -f "$BIG" ]; then
        for mode in batched persistent device-copy; do
            step "mode-$mode-buffered" 45 "$GPURING" ingest --json --backend cuda --cuda-mode "$mode" "$BIG"
            step "mode-$mode-direct" 45 "$GPURING" ingest --json --backend cuda --cuda-mode "$mode" --direct "$BIG"
        done
    else
        skip modes "the bench made no file to read ($BIG)"
    fi
fi

# A CUDA kernel of a user's (examples/cuda_histogram.rs) on the hardware
# suite's files, checked against an independent histogram. Without a GPU it
# says why (the driver's error) and the row is skipped.
if [ -n "$CUDA_WHY" ]; then
    skip cuda-example "$CUDA_WHY"
else
    step cuda-example 120 python3 "$KIT/histogram_check.py" "$KIT/bin/cuda_histogram" "$WORK/hwtest/data/large.bin" "$WORK/hwtest/data/aligned.bin"
fi

# KvikIO and read()+copy on the same file, in Python with CuPy.
if [ -z "$GPU" ]; then
    skip kvikio "no NVIDIA GPU here (nvidia-smi -L failed and there is no /dev/nvidia0)"
elif [ ! -f "$BIG" ]; then
    skip kvikio "no data file ($BIG): the bench did not make one"
else
    SITE="$WORK/site"
    rm -rf "$SITE"
    if timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$KIT"/wheels/*.whl >"$LOGS/pip.log" 2>&1; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        say "installing the KvikIO wheels failed (see pip.log); the baselines run without KvikIO"
    fi
    step kvikio 150 python3 "$KIT/baselines.py" --file "$BIG" --runs "$RUNS" --threads "1,$(nproc)"
fi

say "done in $((SECONDS - START)) s"
pack
cat "$OUT/summary.md" 2>/dev/null
