//! `cargo xtask nvme-vm`: the NVMe passthrough suite on an emulated NVMe
//! controller.
//!
//! No machine this project runs on has an NVMe device, and KVM does not
//! work inside their VMs, so this boots QEMU with TCG (see
//! shared/PLATFORM.md for the measured facts behind each step):
//!
//! 1. installs `qemu-system-x86` and `busybox-static` when missing;
//! 2. fetches Debian's `linux-image-6.12.117+deb12-amd64` (`apt-get
//!    download`, `dpkg-deb -x`) once into `target/nvme-vm/`: Linux 6.12,
//!    because 6.1 refuses fixed-buffer passthrough into large registered
//!    buffers;
//! 3. builds the `gpuring` binary and the `tests/nvme.rs` test binary
//!    statically linked (`-C target-feature=+crt-static`);
//! 4. writes a disk image with a known pattern (word `i` is
//!    [`pattern_word`]`(i)`, which the tests check the bytes against);
//! 5. packs a busybox initramfs whose `/init` loads `nvme-auth`,
//!    `nvme-core`, `nvme` and `dm-mod` (a test makes a device-mapper
//!    device that fails mid-file), waits for `/dev/ng0n1` and runs the test
//!    binary's NVMe tests (`--ignored`), then powers off;
//! 6. boots QEMU with that image as an NVMe namespace, echoes the guest's
//!    console, and fails unless the guest reports that its tests passed.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{ensure_installed, ensure_package, run, step, under_ci};

/// The guest kernel: Debian 12's 6.12 package (PLATFORM.md).
const KERNEL_PACKAGE: &str = "linux-image-6.12.117+deb12-amd64";
const KERNEL_RELEASE: &str = "6.12.117+deb12-amd64";
/// Modules, in load order: NVMe, and device-mapper for the test that
/// makes a block device fail mid-file (the `error` target is in dm-mod).
const MODULES: [&str; 4] = ["nvme-auth", "nvme-core", "nvme", "dm-mod"];
/// The host triple the static binaries are built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The emulated namespace's size.
const DISK_BYTES: u64 = 64 << 20;
/// The guest's whole run, boot included (TCG: tens of seconds normally).
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);
/// What `/init` prints last, with the test binary's exit status.
const EXIT_MARKER: &str = "gpuring-vm: exit ";

/// Word `i` (little-endian u64 at byte `8 * i`) of the disk image; the same
/// formula is in tests/nvme.rs, which checks what it reads against it.
fn pattern_word(i: u64) -> u64 {
    (i ^ 0x6770_7572_696e_6721).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Run the task: `Ok` only when the guest's suite passed.
pub fn run_task(cargo: fn() -> Command) -> Result<()> {
    step("nvme-vm: prerequisites");
    ensure_package("qemu-system-x86_64", "qemu-system-x86", "the NVMe passthrough tests (an emulated NVMe controller)")?;
    ensure_installed("busybox (static)", "test -x /bin/busybox", &["busybox-static"], "the NVMe passthrough tests' initramfs")?;
    ensure_package("xz", "xz-utils", "unpacking the guest kernel's modules")?;
    let missing =
        ["qemu-system-x86_64", "busybox", "xz", "dpkg-deb"].into_iter().find(|c| !crate::succeeds(Command::new("sh").args(["-c", &format!("command -v {c}")])));
    if let Some(tool) = missing {
        if under_ci() {
            bail!("{tool} is missing and could not be installed; the NVMe passthrough tests need it");
        }
        println!("nvme-vm: skipped: {tool} is missing (run as root on Debian to have it installed)");
        return Ok(());
    }
    let work = PathBuf::from("target/nvme-vm");
    std::fs::create_dir_all(&work).context("creating target/nvme-vm")?;
    let kernel = fetch_kernel(&work)?;
    let (gpuring, tests) = build_static(cargo)?;
    step("nvme-vm: disk image and initramfs");
    let disk = work.join("disk.img");
    write_image(&disk)?;
    let initramfs = pack_initramfs(&work, &kernel, &gpuring, &tests)?;
    step("nvme-vm: booting QEMU (TCG) with an emulated NVMe controller");
    boot(&kernel.join(format!("boot/vmlinuz-{KERNEL_RELEASE}")), &initramfs, &disk)
}

/// Unpack the guest kernel package into `work/kernel`, downloading it once.
fn fetch_kernel(work: &Path) -> Result<PathBuf> {
    let root = work.join("kernel");
    if root.join(format!("boot/vmlinuz-{KERNEL_RELEASE}")).exists() {
        return Ok(root);
    }
    step(&format!("nvme-vm: fetching {KERNEL_PACKAGE}"));
    let deb = || std::fs::read_dir(work).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb"));
    if deb().is_none() {
        run(Command::new("apt-get").args(["download", KERNEL_PACKAGE]).current_dir(work)).or_else(|_| {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            run(Command::new("apt-get").args(["download", KERNEL_PACKAGE]).current_dir(work))
        })?;
    }
    let deb = deb().context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    Ok(root)
}

/// Build `gpuring` and the NVMe test binary statically linked; their paths.
fn build_static(cargo: fn() -> Command) -> Result<(PathBuf, PathBuf)> {
    step("nvme-vm: static builds of gpuring and tests/nvme.rs");
    // With --target, RUSTFLAGS reach only the target's crates, not build scripts.
    let flags = "-C target-feature=+crt-static";
    run(cargo().args(["build", "--release", "--target", TARGET, "--bin", "gpuring"]).env("RUSTFLAGS", flags))?;
    let out = cargo()
        .args(["test", "--release", "--target", TARGET, "--test", "nvme", "--no-run", "--message-format=json-render-diagnostics"])
        .env("RUSTFLAGS", flags)
        .stderr(Stdio::inherit())
        .output()
        .context("building the NVMe test binary")?;
    if !out.status.success() {
        bail!("building the NVMe test binary failed");
    }
    let tests = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "nvme" && v["executable"].is_string())
        .and_then(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for tests/nvme.rs")?;
    Ok((PathBuf::from(format!("target/{TARGET}/release/gpuring")), tests))
}

/// The pattern image, written unless one of the right size is there (the
/// pattern never changes, and the guest only reads it).
fn write_image(path: &Path) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == DISK_BYTES) {
        return Ok(());
    }
    let mut out = BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for i in 0..DISK_BYTES / 8 {
        out.write_all(&pattern_word(i).to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The guest's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in nvme-auth nvme-core nvme dm-mod; do
    insmod /lib/modules/$m.ko || echo "gpuring-vm: insmod $m failed"
done
i=0
while [ ! -e /dev/ng0n1 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
echo "gpuring-vm: kernel $(uname -r), $(cat /sys/block/nvme0n1/queue/logical_block_size 2>/dev/null)-byte blocks, max_hw_sectors_kb $(cat /sys/block/nvme0n1/queue/max_hw_sectors_kb 2>/dev/null)"
ls -l /dev/ng* /dev/nvme*
cd /tmp
GPURING_BIN=/gpuring GPURING_NVME_DEV=/dev/ng0n1 /nvme-tests --ignored --test-threads=1 --nocapture
echo "gpuring-vm: exit $?"
poweroff -f
"#;

/// Pack the initramfs: busybox, the NVMe modules (decompressed, as busybox
/// insmod wants them), the two binaries and `/init`.
fn pack_initramfs(work: &Path, kernel: &Path, gpuring: &Path, tests: &Path) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["bin", "lib/modules"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    let modules = find_files(&kernel.join(format!("lib/modules/{KERNEL_RELEASE}")))?;
    for name in MODULES {
        let file = format!("{name}.ko.xz");
        let found = modules.iter().find(|p| p.file_name().is_some_and(|n| n == file.as_str())).with_context(|| format!("{file} is not in {KERNEL_PACKAGE}"))?;
        let ko = Command::new("xz").arg("-dc").arg(found).output().context("running xz")?;
        if !ko.status.success() {
            bail!("xz -dc {} failed", found.display());
        }
        std::fs::write(root.join(format!("lib/modules/{name}.ko")), ko.stdout)?;
    }
    std::fs::copy(gpuring, root.join("gpuring")).with_context(|| format!("copying {}", gpuring.display()))?;
    std::fs::copy(tests, root.join("nvme-tests")).with_context(|| format!("copying {}", tests.display()))?;
    std::fs::write(root.join("init"), INIT)?;
    for exe in ["init", "bin/busybox", "gpuring", "nvme-tests"] {
        std::fs::set_permissions(root.join(exe), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let cpio = std::fs::canonicalize(work)?.join("initramfs.cpio");
    run(Command::new("sh").args(["-c", &format!("find . | /bin/busybox cpio -o -H newc > '{}'", cpio.display())]).current_dir(&root))?;
    Ok(cpio)
}

fn find_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(find_files(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Boot the guest and wait for its verdict, echoing its console.
fn boot(kernel: &Path, initramfs: &Path, disk: &Path) -> Result<()> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot", "-net", "none", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d,format=raw,readonly=on", disk.display()))
        .args(["-device", "nvme,serial=gpuring0,drive=d"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("$ {cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("QEMU's console")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exit = None;
    let mut summary = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("guest | {line}");
                // Test output and terminal escapes can precede a marker on its line.
                let at = |marker: &str| line.find(marker).map(|i| &line[i..]);
                if let Some(found) = ["gpuring-vm: kernel", "nvme-vm throughput", "test result:"].into_iter().find_map(at) {
                    summary.push(found.to_owned());
                }
                if let Some(code) = at(EXIT_MARKER) {
                    exit = code[EXIT_MARKER.len()..].trim().parse::<i32>().ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if started.elapsed() < GUEST_TIMEOUT => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guest did not finish within {GUEST_TIMEOUT:?}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    println!("\nnvme-vm: QEMU ended with {status} after {:.1} s", started.elapsed().as_secs_f64());
    for line in &summary {
        println!("nvme-vm: {line}");
    }
    match exit {
        Some(0) => Ok(()),
        Some(code) => bail!("the NVMe passthrough tests failed inside the guest (exit {code})"),
        None => bail!("the guest ended without reporting its tests' result (see its console above)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_words_differ_and_are_stable() {
        assert_eq!(pattern_word(0), 0x6770_7572_696e_6721u64.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let words: std::collections::HashSet<u64> = (0..1 << 16).map(pattern_word).collect();
        assert_eq!(words.len(), 1 << 16);
    }
}
