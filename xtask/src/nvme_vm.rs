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
//! 5. packs a busybox initramfs whose `/init` loads the NVMe modules,
//!    `dm-mod` (a test makes a device-mapper device that fails mid-file)
//!    and the NVMe over Fabrics modules ([`MODULES`]), waits for
//!    `/dev/ng0n1` and runs the test binary's NVMe tests (`--ignored`): the
//!    `local` suite; then exports the namespace with the kernel's NVMe
//!    target over TCP on 127.0.0.1, connects the kernel's initiator to it
//!    and runs the same tests on `/dev/ng1n1`: the `fabric` suite; between
//!    the two, it reads one namespace alone and two (the same image behind
//!    a second controller) in one ingest with two shards, three times each
//!    (`nvme-vm: two namespaces read together ...`); then powers off;
//! 6. boots QEMU with that image as an NVMe namespace, echoes the guest's
//!    console, prints one `nvme-vm: SUITE: ...` line per suite, and fails
//!    unless every suite reports that its tests passed.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{ensure_installed, ensure_package, run, step, under_ci};

/// How a Debian kernel is packaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packaging {
    /// Debian 12: `linux-image-<release>`, the image in `boot/`.
    Image,
    /// Debian unstable: `linux-binary-<release>` (the image, in the
    /// modules' directory) and `linux-modules-<release>`.
    BinaryAndModules,
}

/// A guest kernel: Debian packages unpacked under `target/nvme-vm/`.
struct Kernel {
    /// Short name: `GPURING_NVME_VM_KERNELS` picks kernels by it.
    name: &'static str,
    /// The release wanted (`uname -r`). When the archive no longer has it
    /// (unstable moves on), the newest release of the same series
    /// (`release_prefix`) is taken instead, and the task says so.
    release: &'static str,
    /// What a release of the same series starts with.
    release_prefix: &'static str,
    packaging: Packaging,
    /// Where apt finds them: `None`, the system's sources (Debian 12);
    /// `Some(line)`, a private apt configuration with this source line (the
    /// system's sources stay untouched; Debian's archive keyring verifies it).
    source: Option<&'static str>,
    /// Whether the guest gets a second controller with a memory buffer
    /// published as P2PDMA memory, both behind one emulated PCIe switch,
    /// and runs the `peer` suite (the kernel has CONFIG_PCI_P2PDMA).
    peer: bool,
}

/// The guest kernels (PLATFORM.md): Debian 12's 6.12 (6.1 refuses
/// fixed-buffer passthrough into large registered buffers; no P2PDMA), and
/// Debian unstable's 7.2, built with CONFIG_PCI_P2PDMA.
const KERNELS: [Kernel; 2] = [
    Kernel { name: "6.12", release: "6.12.117+deb12-amd64", release_prefix: "6.12.", packaging: Packaging::Image, source: None, peer: false },
    Kernel {
        name: "7.2",
        release: "7.2.13+deb14-amd64",
        release_prefix: "7.",
        packaging: Packaging::BinaryAndModules,
        source: Some("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main"),
        peer: true,
    },
];

/// A kernel with the release found in the archive (or unpacked already).
struct Guest<'a> {
    kernel: &'a Kernel,
    release: String,
}

impl Guest<'_> {
    /// The package holding the image, named by apt.
    fn image_package(packaging: Packaging, release: &str) -> String {
        match packaging {
            Packaging::Image => format!("linux-image-{release}"),
            Packaging::BinaryAndModules => format!("linux-binary-{release}"),
        }
    }

    fn packages(&self) -> Vec<String> {
        match self.kernel.packaging {
            Packaging::Image => vec![Self::image_package(Packaging::Image, &self.release)],
            Packaging::BinaryAndModules => vec![Self::image_package(Packaging::BinaryAndModules, &self.release), format!("linux-modules-{}", self.release)],
        }
    }

    /// The image, inside the unpacked packages.
    fn vmlinuz(&self) -> String {
        match self.kernel.packaging {
            Packaging::Image => format!("boot/vmlinuz-{}", self.release),
            Packaging::BinaryAndModules => format!("usr/lib/modules/{}/vmlinuz", self.release),
        }
    }

    /// The modules' directory, inside the unpacked packages.
    fn modules(&self) -> String {
        match self.kernel.packaging {
            Packaging::Image => format!("lib/modules/{}", self.release),
            Packaging::BinaryAndModules => format!("usr/lib/modules/{}", self.release),
        }
    }

    /// `major.minor`, for the summary lines.
    fn label(&self) -> String {
        self.release.split(['.', '+', '-']).take(2).collect::<Vec<_>>().join(".")
    }
}

/// The newest release among apt's package `names` of `packaging`'s image
/// whose release starts with `prefix` (flavours such as `-cloud-amd64` or
/// `-rt-amd64` left out).
fn newest_release(names: &str, packaging: Packaging, prefix: &str) -> Option<String> {
    let image = Guest::image_package(packaging, "");
    let version = |release: &str| -> Vec<u64> { release.split(['.', '+', '-']).map_while(|p| p.trim_start_matches("deb").parse().ok()).collect() };
    names
        .lines()
        .filter_map(|name| name.trim().strip_prefix(&image))
        .filter(|release| release.starts_with(prefix) && release.ends_with("-amd64") && release.matches('-').count() == 1)
        .max_by_key(|release| version(release))
        .map(str::to_owned)
}

/// Modules, in load order: NVMe, device-mapper for the test that makes a
/// block device fail mid-file (the `error` target is in dm-mod), and NVMe
/// over Fabrics: the target (`nvmet`, `nvmet-tcp`, configured through
/// configfs) and the TCP initiator (`nvme-fabrics`, `nvme-tcp`). Their
/// `depends=` fields give this order on both kernels (the packages have no
/// modules.dep; 7.2's nvme-core needs nvme-keyring, 6.12's does not).
const MODULES: [&str; 10] = ["configfs", "nvme-auth", "nvme-keyring", "nvme-core", "nvme", "dm-mod", "nvmet", "nvmet-tcp", "nvme-fabrics", "nvme-tcp"];
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
    let (gpuring, tests) = build_static(cargo)?;
    let disk = work.join("disk.img");
    write_image(&disk)?;
    let mut failed = Vec::new();
    let asked = std::env::var("GPURING_NVME_VM_KERNELS").ok();
    for kernel in &KERNELS {
        // GPURING_NVME_VM_KERNELS=6.12 (a comma-separated list) runs only those.
        if asked.as_deref().is_some_and(|list| !list.split(',').any(|k| k.trim() == kernel.name)) {
            println!("nvme-vm: {}: not run: GPURING_NVME_VM_KERNELS leaves it out", kernel.name);
            continue;
        }
        let (guest, root) = fetch_kernel(&work, kernel)?;
        step(&format!("nvme-vm: initramfs for {}", guest.release));
        let initramfs = pack_initramfs(&work, &guest, &root, &gpuring, &tests)?;
        step(&format!("nvme-vm: booting {} in QEMU (TCG){}", guest.release, if kernel.peer { ", NVMe controllers behind a PCIe switch" } else { "" }));
        let mut booted = boot(&guest, &root.join(guest.vmlinuz()), &initramfs, &disk);
        // Under TCG a guest kernel has crashed while booting, before any
        // suite (an int3 oops in code being patched, seen once on 7.2 while
        // the host was busy): that says nothing about gpuring, so it is
        // booted again, once, and said so.
        if let Err(e) = &booted {
            if e.to_string().contains(CRASHED_BOOTING) {
                println!("nvme-vm: {}: {e:#}; booting it again, once", guest.label());
                booted = boot(&guest, &root.join(guest.vmlinuz()), &initramfs, &disk);
            }
        }
        if let Err(e) = booted {
            println!("nvme-vm: {}: {e:#}", guest.label());
            failed.push(guest.label());
        }
    }
    if !failed.is_empty() {
        bail!("the guest suites failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// Unpack `kernel`'s packages into `work/kernel-<name>`, downloading them
/// once; the release unpacked is in its file `release`.
fn fetch_kernel<'a>(work: &Path, kernel: &'a Kernel) -> Result<(Guest<'a>, PathBuf)> {
    let root = work.join(format!("kernel-{}", kernel.name));
    if let Ok(release) = std::fs::read_to_string(root.join("release")) {
        let guest = Guest { kernel, release: release.trim().to_owned() };
        if root.join(guest.vmlinuz()).exists() {
            return Ok((guest, root));
        }
    }
    let debs = work.join(format!("debs-{}", kernel.name));
    std::fs::create_dir_all(&debs)?;
    let downloaded = |package: &str| {
        std::fs::read_dir(&debs)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
    };
    let mut apt: Vec<String> = Vec::new();
    if let Some(line) = kernel.source {
        // A private configuration: the system's sources and lists stay as
        // they are.
        let conf = std::fs::canonicalize(work)?.join(format!("apt-{}", kernel.name));
        std::fs::create_dir_all(conf.join("lists/partial"))?;
        std::fs::write(conf.join("sources.list"), format!("{line}\n"))?;
        apt = vec![
            format!("-oDir::Etc::SourceList={}", conf.join("sources.list").display()),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={}", conf.join("lists").display()),
        ];
        run(Command::new("apt-get").args(&apt).args(["update", "-qq"]))?;
    }
    let guest = Guest { kernel, release: resolve_release(kernel, &apt)? };
    let packages = guest.packages();
    step(&format!("nvme-vm: fetching {}", packages.join(", ")));
    for package in packages.iter().map(String::as_str).filter(|p| downloaded(p).is_none()) {
        run(Command::new("apt-get").args(&apt).args(["download", package]).current_dir(&debs)).or_else(|_| {
            run(Command::new("apt-get").args(&apt).args(["update", "-qq"]))?;
            run(Command::new("apt-get").args(&apt).args(["download", package]).current_dir(&debs))
        })?;
    }
    for package in &packages {
        let deb = downloaded(package).with_context(|| format!("apt-get download left no .deb of {package}"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    std::fs::write(root.join("release"), &guest.release)?;
    Ok((guest, root))
}

/// The release to fetch: `kernel.release` while the archive has it, else
/// the newest of its series (said on the console).
fn resolve_release(kernel: &Kernel, apt: &[String]) -> Result<String> {
    let wanted = Guest::image_package(kernel.packaging, kernel.release);
    let known = || crate::succeeds(Command::new("apt-cache").args(apt).args(["show", "--no-all-versions", &wanted]));
    if known() {
        return Ok(kernel.release.to_owned());
    }
    if kernel.source.is_none() {
        // The system's lists may be missing or old (a fresh machine).
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if known() {
            return Ok(kernel.release.to_owned());
        }
    }
    let out =
        Command::new("apt-cache").args(apt).args(["pkgnames", &Guest::image_package(kernel.packaging, "")]).output().context("running apt-cache pkgnames")?;
    let release = newest_release(&String::from_utf8_lossy(&out.stdout), kernel.packaging, kernel.release_prefix)
        .with_context(|| format!("the archive has neither {wanted} nor another {}* release", kernel.release_prefix))?;
    println!("nvme-vm: the archive no longer has {wanted}; taking {release}, the newest of its series");
    Ok(release)
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

/// The guest's `/init`: the suite on the local namespace, then the same
/// suite on that namespace exported by the kernel's NVMe target over TCP on
/// the loopback address and connected by the kernel's initiator (NVMe over
/// Fabrics), then, where a controller publishes P2PDMA memory, the `peer_`
/// tests with the slots in that memory; one `gpuring-vm: suite NAME exit N`
/// line each. Controllers are found by serial number (`gpuring0` holds the
/// pattern image, `gpuring-peer` the memory buffer), whatever order the
/// kernel numbered them in.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in MODULES; do
    insmod /lib/modules/$m.ko || { echo "gpuring-vm: insmod $m failed:"; dmesg | tail -3; }
done
wait_for() {
    i=0
    while [ ! -e "$1" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
}
# The controller (nvmeN) whose file $1 holds $2.
controller() {
    for c in /sys/class/nvme/nvme*; do
        read -r v < $c/$1 2>/dev/null
        [ "$v" = "$2" ] && { echo ${c##*/}; return; }
    done
}
suite() {
    name=$1; dev=$2; shift 2
    echo "gpuring-vm: suite $name on $dev"
    GPURING_BIN=/gpuring GPURING_NVME_DEV=$dev /nvme-tests --ignored --test-threads=1 --nocapture "$@"
    code=$?
    echo "gpuring-vm: suite $name exit $code"
    [ $code -eq 0 ] || failed=1
}
failed=0
i=0
while [ -z "$(controller serial gpuring0)" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
data=$(controller serial gpuring0)
for c in /sys/class/nvme/nvme*; do echo "gpuring-vm: controller ${c##*/}: serial '$(cat $c/serial)', transport $(cat $c/transport), $(basename $(readlink -f $c/device))"; done
wait_for /dev/ng${data#nvme}n1
echo "gpuring-vm: kernel $(uname -r), $(cat /sys/block/${data}n1/queue/logical_block_size 2>/dev/null)-byte blocks, max_hw_sectors_kb $(cat /sys/block/${data}n1/queue/max_hw_sectors_kb 2>/dev/null)"
ls -l /dev/ng* /dev/nvme*
cd /tmp
suite local /dev/ng${data#nvme}n1 --skip peer_

# Several devices at once: a second controller (serial gpuring1) holds the
# same image. One namespace alone, then both in one ingest (each shard
# starts a source of its own), O_DIRECT through the block devices.
two=$(controller serial gpuring1)
if [ -n "$two" ]; then
    wait_for /dev/${two}n1
    rate() { /gpuring ingest --json --direct --no-verify --shards 2 "$@" 2>/dev/null | sed -n 's/.*"gib_per_s":\([0-9.e+-]*\).*/\1/p'; }
    for run in 1 2 3; do
        echo "gpuring-vm: devices run $run: one $(rate /dev/${data}n1) two $(rate /dev/${data}n1 /dev/${two}n1)"
    done
fi

# NVMe over Fabrics: nvmet exports the namespace over TCP on 127.0.0.1:4420
# and nvme-tcp connects to it. nvmet opens a block device for writing, which
# a read-only namespace may refuse: then it exports a copy in a tmpfs file.
ip link set lo up || ifconfig lo 127.0.0.1 up
mount -t configfs none /sys/kernel/config
t=/sys/kernel/config/nvmet
mkdir $t/subsystems/gpuring-fabric
echo 1 > $t/subsystems/gpuring-fabric/attr_allow_any_host
mkdir $t/subsystems/gpuring-fabric/namespaces/1
n=$t/subsystems/gpuring-fabric/namespaces/1
echo -n /dev/${data}n1 > $n/device_path
if echo 1 > $n/enable 2>/dev/null; then
    echo "gpuring-vm: fabric backend: block device /dev/${data}n1"
else
    dd if=/dev/${data}n1 of=/tmp/fabric.img bs=1M 2>/dev/null
    echo -n /tmp/fabric.img > $n/device_path
    echo 1 > $n/buffered_io
    echo 1 > $n/enable && echo "gpuring-vm: fabric backend: file /tmp/fabric.img (tmpfs; the namespace is read-only)"
fi
mkdir $t/ports/1
echo 127.0.0.1 > $t/ports/1/addr_traddr
echo tcp > $t/ports/1/addr_trtype
echo 4420 > $t/ports/1/addr_trsvcid
echo ipv4 > $t/ports/1/addr_adrfam
ln -s $t/subsystems/gpuring-fabric $t/ports/1/subsystems/gpuring-fabric
echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=gpuring-fabric" > /dev/nvme-fabrics || echo "gpuring-vm: connecting to the fabric target failed"
i=0
while [ -z "$(controller transport tcp)" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
fabric=$(controller transport tcp)
wait_for /dev/ng${fabric#nvme}n1
echo "gpuring-vm: fabric controller $fabric: $(cat /sys/class/nvme/$fabric/transport 2>/dev/null) $(cat /sys/class/nvme/$fabric/address 2>/dev/null), max_hw_sectors_kb $(cat /sys/block/${fabric}n1/queue/max_hw_sectors_kb 2>/dev/null)"
suite fabric /dev/ng${fabric#nvme}n1 --skip peer_

# P2PDMA: the controller with a memory buffer publishes it as peer memory.
peer=$(controller serial gpuring-peer)
if [ -n "$peer" ]; then
    pci=$(basename $(readlink -f /sys/class/nvme/$peer/device))
    echo "gpuring-vm: peer memory: $pci, $(cat /sys/bus/pci/devices/$pci/p2pmem/size 2>/dev/null) bytes, published $(cat /sys/bus/pci/devices/$pci/p2pmem/published 2>/dev/null)"
    export GPURING_PEER_PCI=$pci
    suite peer /dev/ng${data#nvme}n1 peer_
fi
echo "gpuring-vm: exit $failed"
poweroff -f
"#;

/// Pack the initramfs: busybox, the NVMe modules (decompressed, as busybox
/// insmod wants them), the two binaries and `/init`.
fn pack_initramfs(work: &Path, guest: &Guest<'_>, unpacked: &Path, gpuring: &Path, tests: &Path) -> Result<PathBuf> {
    let root = work.join(format!("initramfs-{}", guest.kernel.name));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["bin", "lib/modules"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    let modules = find_files(&unpacked.join(guest.modules()))?;
    for name in MODULES {
        let file = format!("{name}.ko.xz");
        let found =
            modules.iter().find(|p| p.file_name().is_some_and(|n| n == file.as_str())).with_context(|| format!("{file} is not in {}", guest.release))?;
        let ko = Command::new("xz").arg("-dc").arg(found).output().context("running xz")?;
        if !ko.status.success() {
            bail!("xz -dc {} failed", found.display());
        }
        std::fs::write(root.join(format!("lib/modules/{name}.ko")), ko.stdout)?;
    }
    std::fs::copy(gpuring, root.join("gpuring")).with_context(|| format!("copying {}", gpuring.display()))?;
    std::fs::copy(tests, root.join("nvme-tests")).with_context(|| format!("copying {}", tests.display()))?;
    std::fs::write(root.join("init"), INIT.replace("MODULES", &MODULES.join(" ")))?;
    for exe in ["init", "bin/busybox", "gpuring", "nvme-tests"] {
        std::fs::set_permissions(root.join(exe), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let cpio = std::fs::canonicalize(work)?.join(format!("initramfs-{}.cpio", guest.kernel.name));
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
/// What `boot` says when the guest's kernel crashed before any suite began.
const CRASHED_BOOTING: &str = "the guest kernel crashed before any suite began";

fn boot(guest: &Guest<'_>, vmlinuz: &Path, initramfs: &Path, disk: &Path) -> Result<()> {
    let kernel = guest.kernel;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot", "-net", "none", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d,format=raw,readonly=on", disk.display()))
        // The same image again, for a second controller: two namespaces
        // read at once against one alone.
        .arg("-drive")
        .arg(format!("file={},if=none,id=d2,format=raw,readonly=on", disk.display()));
    if kernel.peer {
        // Both controllers behind one switch: the kernel allows a peer path
        // there, and refuses one between two root ports of q35's host
        // bridge, which is not on its P2PDMA list (PLATFORM.md).
        cmd.args(["-machine", "q35"]);
        for device in [
            "pcie-root-port,id=rp1,chassis=1,slot=1",
            "x3130-upstream,id=up1,bus=rp1",
            "xio3130-downstream,id=dn1,bus=up1,chassis=2,slot=1",
            "xio3130-downstream,id=dn2,bus=up1,chassis=3,slot=1",
            "nvme,serial=gpuring0,drive=d,bus=dn1",
            "nvme,serial=gpuring-peer,cmb_size_mb=64,bus=dn2",
            "pcie-root-port,id=rp2,chassis=4,slot=2",
            "nvme,serial=gpuring1,drive=d2,bus=rp2",
        ] {
            cmd.args(["-device", device]);
        }
    } else {
        cmd.args(["-device", "nvme,serial=gpuring0,drive=d", "-device", "nvme,serial=gpuring1,drive=d2"]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
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
    let mut crashed = false;
    let mut summary = Vec::new();
    let mut suites = Suites { kernel: guest.label(), ..Suites::default() };
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("guest | {line}");
                // Test output and terminal escapes can precede a marker on its line.
                let at = |marker: &str| line.find(marker).map(|i| &line[i..]);
                if let Some(found) = ["gpuring-vm: kernel", "gpuring-vm: fabric", "gpuring-vm: peer"].into_iter().find_map(at) {
                    summary.push(found.to_owned());
                }
                suites.read(&line);
                crashed |= suites.list.is_empty() && (line.contains("Oops:") || line.contains("Kernel panic"));
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
        println!("nvme-vm: {}", line.trim_start_matches("gpuring-vm: "));
    }
    for line in suites.lines() {
        println!("{line}");
    }
    let expected: &[&str] = if kernel.peer { &["local", "fabric", "peer"] } else { &["local", "fabric"] };
    let missing: Vec<&str> = expected.iter().copied().filter(|name| !suites.list.iter().any(|s| s.name == *name && s.exit.is_some())).collect();
    match exit {
        None if crashed => bail!("{CRASHED_BOOTING} (see its console above)"),
        _ if !missing.is_empty() => bail!("the guest did not finish the suite(s) {} (see its console above)", missing.join(", ")),
        Some(0) => Ok(()),
        Some(_) => bail!("the NVMe passthrough tests failed inside the guest: {}", suites.failed().join(", ")),
        None => bail!("the guest ended without reporting its tests' result (see its console above)"),
    }
}

/// One suite as the guest's console reported it.
#[derive(Debug, Default, PartialEq)]
struct Suite {
    name: String,
    device: String,
    passed: u32,
    failed: u32,
    exit: Option<i32>,
    /// Passthrough GiB/s from the throughput test.
    passthrough: Option<f64>,
}

/// What the console said of each suite.
#[derive(Debug, Default)]
struct Suites {
    /// The guest kernel's `major.minor`.
    kernel: String,
    list: Vec<Suite>,
    /// GiB/s of one namespace alone and of two read together, per run.
    devices: Vec<(f64, f64)>,
}

impl Suites {
    /// Take in one console line.
    fn read(&mut self, line: &str) {
        let at = |marker: &str| line.find(marker).map(|i| &line[i + marker.len()..]);
        if let Some(rest) = at("gpuring-vm: suite ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            match (words.next(), words.next()) {
                (Some("on"), Some(device)) => self.list.push(Suite { name, device: device.to_owned(), ..Suite::default() }),
                (Some("exit"), Some(code)) => {
                    if let Some(s) = self.list.iter_mut().rev().find(|s| s.name == name) {
                        s.exit = code.parse().ok();
                    }
                }
                _ => {}
            }
            return;
        }
        if let Some(rest) = at("gpuring-vm: devices run ") {
            // "N: one X two Y"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [_, "one", one, "two", two] = words[..] {
                if let (Ok(one), Ok(two)) = (one.parse(), two.parse()) {
                    self.devices.push((one, two));
                }
            }
            return;
        }
        let Some(current) = self.list.last_mut() else { return };
        if let Some(rest) = at("test result: ") {
            // "ok. 9 passed; 0 failed; 4 ignored; ..."
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(what)?.trim().parse::<u32>().ok())
            };
            current.passed += count(" passed").unwrap_or(0);
            current.failed += count(" failed").unwrap_or(0);
        } else if let Some(rest) = at("passthrough ") {
            if line.contains("nvme-vm throughput") {
                current.passthrough = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        }
    }

    /// `nvme-vm: NAME: P passed, F failed` for each suite, and the fabric's
    /// passthrough throughput against the local namespace's.
    fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .list
            .iter()
            .map(|s| {
                let exit = s.exit.map_or_else(|| "did not finish".to_owned(), |c| format!("exit {c}"));
                let speed = s.passthrough.map_or_else(String::new, |g| format!(", passthrough {g:.3} GiB/s"));
                format!("nvme-vm: {} on {}: {} passed, {} failed on {} ({exit}{speed})", s.name, self.kernel, s.passed, s.failed, s.device)
            })
            .collect();
        let speed = |name: &str| self.list.iter().find(|s| s.name == name).and_then(|s| s.passthrough);
        if let (Some(local), Some(fabric)) = (speed("local"), speed("fabric")) {
            out.push(format!(
                "nvme-vm: fabric to local passthrough throughput on {}: {:.2}x (TCG; NVMe/TCP over the loopback address)",
                self.kernel,
                fabric / local
            ));
        }
        if !self.devices.is_empty() {
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let one = median(self.devices.iter().map(|d| d.0).collect());
            let two = median(self.devices.iter().map(|d| d.1).collect());
            out.push(format!(
                "nvme-vm: two namespaces read together on {}: {two:.3} GiB/s against {one:.3} for one alone, {:.2}x (median of {} runs; O_DIRECT, 2 shards, TCG)",
                self.kernel,
                two / one.max(1e-9),
                self.devices.len()
            ));
        }
        out
    }

    /// The suites that failed or did not finish.
    fn failed(&self) -> Vec<String> {
        self.list.iter().filter(|s| s.exit != Some(0) || s.failed > 0).map(|s| s.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_gives_each_suite_its_counts_and_speed() {
        let mut suites = Suites { kernel: "7.2".into(), ..Suites::default() };
        for line in [
            "gpuring-vm: suite local on /dev/ng0n1",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.1s",
            "\u{1b}[0mnvme-vm throughput (64 MiB per run, 16 slots of 512 KiB): passthrough 0.250 GiB/s, O_DIRECT block device 0.200 GiB/s, ratio 1.25",
            "test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 9.1s",
            "gpuring-vm: suite local exit 0",
            "gpuring-vm: devices run 1: one 0.2 two 0.3",
            "gpuring-vm: devices run 2: one 0.21 two 0.35",
            "gpuring-vm: devices run 3: one 0.19 two 0.33",
            "gpuring-vm: suite fabric on /dev/ng1n1",
            "test result: FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out; finished in 9.1s",
            "nvme-vm throughput (64 MiB per run, 16 slots of 512 KiB): passthrough 0.125 GiB/s, O_DIRECT block device 0.100 GiB/s, ratio 1.25",
            "gpuring-vm: suite fabric exit 101",
        ] {
            suites.read(line);
        }
        let lines = suites.lines();
        assert_eq!(lines[0], "nvme-vm: local on 7.2: 13 passed, 0 failed on /dev/ng0n1 (exit 0, passthrough 0.250 GiB/s)");
        assert_eq!(lines[1], "nvme-vm: fabric on 7.2: 8 passed, 1 failed on /dev/ng1n1 (exit 101, passthrough 0.125 GiB/s)");
        assert!(lines[2].starts_with("nvme-vm: fabric to local passthrough throughput on 7.2: 0.50x"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "nvme-vm: two namespaces read together on 7.2: 0.330 GiB/s against 0.200 for one alone, 1.65x (median of 3 runs; O_DIRECT, 2 shards, TCG)"
        );
        assert_eq!(suites.failed(), ["fabric"]);
    }

    #[test]
    fn the_newest_release_of_a_series_is_found_among_apt_s_names() {
        let names = "linux-binary-7.2.13+deb14-amd64\nlinux-binary-7.2.13+deb14-cloud-amd64\nlinux-binary-7.10.2+deb14-amd64\nlinux-binary-7.3.1+deb14-rt-amd64\nlinux-binary-6.19.4+deb14-amd64\n";
        assert_eq!(newest_release(names, Packaging::BinaryAndModules, "7.").as_deref(), Some("7.10.2+deb14-amd64"));
        assert_eq!(newest_release(names, Packaging::BinaryAndModules, "6.").as_deref(), Some("6.19.4+deb14-amd64"));
        assert_eq!(newest_release(names, Packaging::Image, "7."), None);
        let guest = Guest { kernel: &KERNELS[1], release: "7.10.2+deb14-amd64".into() };
        assert_eq!(guest.label(), "7.10");
        assert_eq!(guest.packages(), ["linux-binary-7.10.2+deb14-amd64", "linux-modules-7.10.2+deb14-amd64"]);
        assert_eq!(guest.vmlinuz(), "usr/lib/modules/7.10.2+deb14-amd64/vmlinuz");
        let old = Guest { kernel: &KERNELS[0], release: KERNELS[0].release.into() };
        assert_eq!((old.label().as_str(), old.vmlinuz().as_str()), ("6.12", "boot/vmlinuz-6.12.117+deb12-amd64"));
    }

    #[test]
    fn pattern_words_differ_and_are_stable() {
        assert_eq!(pattern_word(0), 0x6770_7572_696e_6721u64.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let words: std::collections::HashSet<u64> = (0..1 << 16).map(pattern_word).collect();
        assert_eq!(words.len(), 1 << 16);
    }
}
