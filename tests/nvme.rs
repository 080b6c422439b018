//! NVMe passthrough.
//!
//! The tests marked `ignore` need an NVMe namespace holding the pattern
//! image that `cargo xtask nvme-vm` writes, and run inside its QEMU guest
//! (`--ignored`); the device comes from `GPURING_NVME_DEV` (default
//! `/dev/ng0n1`) and the `gpuring` binary from `GPURING_BIN`. The others
//! check, on any machine, what is refused before a device is touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use gpuring::core::nvme::{self, Namespace};
use gpuring::core::{slot_checksum, SlotGeometry};
use gpuring::host::{HostConsumer, HostStaging};
use gpuring::ingest::{self, IngestOptions};
use gpuring::uring::nvme::NvmeDevice;
use gpuring::uring::{Driver, DriverOptions, Event, IngestError, Ring, Source};

/// Word `i` (little-endian u64 at byte `8 * i`) of the disk image
/// `cargo xtask nvme-vm` writes (the same formula is in xtask/src/nvme_vm.rs).
fn pattern_word(i: u64) -> u64 {
    (i ^ 0x6770_7572_696e_6721).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The image's bytes `start..start + len` (both multiples of 8).
fn image_bytes(start: u64, len: usize) -> Vec<u8> {
    (start / 8..(start + len as u64) / 8).flat_map(|i| pattern_word(i).to_le_bytes()).collect()
}

fn char_device() -> PathBuf {
    std::env::var_os("GPURING_NVME_DEV").map_or_else(|| PathBuf::from("/dev/ng0n1"), PathBuf::from)
}

fn open() -> NvmeDevice {
    NvmeDevice::open(&char_device()).unwrap_or_else(|e| panic!("{e}"))
}

/// What one driver run over `sources` produced.
struct Run {
    /// (source, offset, bytes, checksum) of every released segment.
    segments: Vec<(usize, u64, u64, u64)>,
    telemetry: gpuring::core::Telemetry,
    fixed: Option<bool>,
    /// Whether the slots were registered with io_uring.
    registered: bool,
    seconds: f64,
}

fn drive(sources: &[Source], slots: u32, slot_size: usize, options: DriverOptions) -> Result<Run, IngestError> {
    drive_into(Arc::new(HostStaging::new(SlotGeometry::new(slots, slot_size).unwrap(), slots.next_power_of_two()).unwrap()), sources, options)
}

/// As [`drive`], into `staging`.
fn drive_into<S: gpuring::core::StagingMemory + 'static>(staging: Arc<S>, sources: &[Source], options: DriverOptions) -> Result<Run, IngestError> {
    let consumer = HostConsumer::start(staging.clone()).unwrap();
    let mut segments = Vec::new();
    let mut driver = Driver::new(staging, options)?;
    let registered = driver.registered();
    let result = driver.ingest(sources, |e| {
        if let Event::Released { source, offset, bytes, result: checksum, consumed: checksummed, .. } = e {
            assert!(checksummed);
            segments.push((source, offset, bytes, checksum));
        }
    });
    driver.close_queue();
    let fixed = driver.nvme_fixed();
    drop(driver);
    consumer.join().unwrap();
    let stats = result?;
    segments.sort();
    Ok(Run { segments, telemetry: stats.telemetry, fixed, registered, seconds: stats.elapsed.as_secs_f64() })
}

/// A slot of the namespace's max transfer, but no more than 4 MiB, so that
/// 16 of them fit the guest's memory whatever the controller allows (a
/// fabric namespace's max transfer is 32 MiB).
fn test_slot(ns: &Namespace) -> u32 {
    ns.max_transfer_bytes.min(4 << 20) / ns.lba_size * ns.lba_size
}

/// Every segment of an NVMe run holds the image's bytes, and together they
/// cover blocks `slba..slba + blocks` in commands of at most `segment` bytes.
fn assert_image(run: &Run, ns: &Namespace, slba: u64, blocks: u64, segment: u32) {
    let lba = ns.lba_size as u64;
    let mut at = slba * lba;
    for &(_, offset, bytes, checksum) in &run.segments {
        assert_eq!(offset, at, "segments are contiguous");
        assert!(bytes <= segment as u64 && bytes % lba == 0 && bytes <= ns.max_transfer_bytes as u64);
        assert_eq!(checksum, slot_checksum(&image_bytes(offset, bytes as usize)), "bytes at {offset}..{} differ from the image", offset + bytes);
        at += bytes;
    }
    assert_eq!(at, (slba + blocks) * lba, "the whole range was read");
    let t = &run.telemetry;
    let total = blocks * lba;
    assert_eq!((t.dma.bytes, t.kernel_copy.bytes, t.bounce.bytes), (total, 0, 0), "NVMe passthrough counts as dma");
    let n = run.segments.len() as u64;
    assert_eq!((t.completed_reads, t.dma.reads, t.published, t.released), (n, n, n, n));
    assert_eq!((t.failed_completions, t.short_reads, t.inflight_reads), (0, 0, 0));
    let verdict = t.validate().unwrap();
    assert!(verdict.zero_bounce && verdict.dma_only && verdict.complete);
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn geometry_comes_from_the_device() {
    let dev = open();
    let ns = dev.namespace;
    let block = dev.block_device.clone().expect("a block device for the namespace");
    let bytes = std::fs::File::open(&block).and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))).unwrap();
    println!("geometry: {ns:?} limits {:?} block device {}", dev.limits, block.display());
    assert_eq!(ns.capacity_blocks * ns.lba_size as u64, bytes, "capacity agrees with the block device");
    assert!(ns.nsid >= 1);
    assert!([512, 4096].contains(&ns.lba_size));
    assert_eq!(ns.max_transfer_bytes, dev.limits.max_transfer(ns.lba_size));
    assert!(ns.max_transfer_bytes as u64 <= nvme::MAX_BLOCKS_PER_COMMAND as u64 * ns.lba_size as u64, "one command's block count bounds it");
    assert!(dev.limits.kernel_max_hw.is_some(), "sysfs gives the kernel's limit");
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn reads_at_several_sizes_and_offsets_fixed_and_plain() {
    let ns = open().namespace;
    // The largest command these slots (1 MiB at most) allow; a fabric
    // namespace's max transfer is far larger (32 MiB on NVMe/TCP).
    let max_blocks = (ns.max_transfer_bytes.min(1 << 20) / ns.lba_size) as u64;
    let end = ns.capacity_blocks;
    let ranges = [(0, 1), (1, 7), (8, 8), (123, 1000), (4095, max_blocks + 1), (77, 3 * max_blocks + 5), (end - 3, 3), (end - max_blocks - 9, max_blocks + 9)];
    for slot_size in [4096, 64 << 10, 1 << 20] {
        let segment = nvme::segment_bytes(&ns, slot_size);
        for fixed in [true, false] {
            for (slba, blocks) in ranges {
                let options = DriverOptions { nvme_fixed: Some(fixed), ..DriverOptions::default() };
                let run = drive(&[Source::nvme(char_device(), Some(slba..slba + blocks))], 4, slot_size, options)
                    .unwrap_or_else(|e| panic!("slot {slot_size}, fixed {fixed}, blocks {slba}+{blocks}: {e}"));
                assert_eq!(run.fixed, Some(fixed));
                assert_image(&run, &ns, slba, blocks, segment);
                assert_eq!(run.segments.len() as u64, (blocks * ns.lba_size as u64).div_ceil(segment as u64), "commands of the largest size allowed");
            }
        }
    }
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn the_buffer_form_is_probed_and_the_whole_namespace_reads() {
    let ns = open().namespace;
    let slot = test_slot(&ns);
    let run = drive(&[Source::nvme(char_device(), None)], 8, slot as usize, DriverOptions::default()).unwrap();
    // Linux 6.12 (the guest's kernel) takes fixed buffers for passthrough.
    assert_eq!(run.fixed, Some(true));
    assert_image(&run, &ns, 0, ns.capacity_blocks, slot);
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn bad_ranges_and_devices_are_refused_with_a_fix() {
    let dev = open();
    let ns = dev.namespace;
    let slot = 64 << 10;
    let err = |source: Source| drive(&[source], 4, slot, DriverOptions::default()).err().expect("refused");
    let e = err(Source::nvme(char_device(), Some(ns.capacity_blocks - 1..ns.capacity_blocks + 1)));
    assert!(matches!(e, IngestError::NvmeRange { error: nvme::NvmeError::PastEnd { .. }, .. }), "{e}");
    assert!(e.to_string().contains("past the end of the namespace"), "{e}");
    let e = err(Source::nvme(char_device(), Some(5..5)));
    assert!(matches!(e, IngestError::NvmeRange { error: nvme::NvmeError::ZeroBlocks, .. }), "{e}");
    let block = dev.block_device.clone().unwrap();
    let e = err(Source::nvme(&block, Some(0..1)));
    assert!(matches!(&e, IngestError::NotNvmeChar { kind: "a block device", hint: Some(h), .. } if h == &char_device()), "{e}");
    assert!(e.to_string().contains(&format!("pass {} instead", char_device().display())), "{e}");
    let e = err(Source::nvme("/dev/null", None));
    assert!(matches!(e, IngestError::NotNvme { .. }), "{e}");
    // One slot smaller than a block cannot hold a read.
    if ns.lba_size > 4096 {
        let e = drive(&[Source::nvme(char_device(), Some(0..1))], 4, 4096, DriverOptions::default()).err().unwrap();
        assert!(matches!(e, IngestError::NvmeRange { error: nvme::NvmeError::BufferTooSmall { .. }, .. }), "{e}");
    }
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn the_kernel_does_not_split_passthrough_so_the_driver_must() {
    let dev = open();
    let ns = dev.namespace;
    // A command of twice the kernel's limit, built by pretending the limit
    // is higher (the real geometry refuses to build it).
    let pretend = Namespace { max_transfer_bytes: u32::MAX, ..ns };
    let kernel = [dev.limits.kernel_max_hw, dev.limits.kernel_segments].into_iter().flatten().min().unwrap_or(ns.max_transfer_bytes);
    let len = 2 * kernel as u64;
    let blocks = len / ns.lba_size as u64;
    assert!(nvme::read_command(&ns, 0, blocks.min(u32::MAX as u64) as u32, 0, len.min(u32::MAX as u64) as u32).is_err());
    if blocks > nvme::MAX_BLOCKS_PER_COMMAND as u64 {
        // The kernel takes more than one command can say (NVMe/TCP): the
        // command's 16-bit block count is the limit, which the geometry keeps.
        let over = nvme::MAX_BLOCKS_PER_COMMAND + 1;
        assert_eq!(nvme::read_command(&pretend, 0, over, 0, u32::MAX), Err(nvme::NvmeError::TooManyBlocks { blocks: over }));
        assert_eq!(ns.max_transfer_bytes as u64, nvme::MAX_BLOCKS_PER_COMMAND as u64 * ns.lba_size as u64);
        println!("the kernel's limit ({kernel} bytes) is over one command's {} blocks: the command is the limit", nvme::MAX_BLOCKS_PER_COMMAND);
        return;
    }
    let len = len as usize;
    let buf = gpuring::uring::buffer::HeapBuffer::new(len, 0);
    let addr = buf.as_slice().as_ptr() as u64;
    let cmd = nvme::read_command(&pretend, 0, blocks as u32, addr, len as u32).unwrap();
    let mut ring = Ring::new(1).unwrap();
    // SAFETY: `buf` and the device outlive `ring`, declared after them.
    unsafe { ring.push_uring_cmd(std::os::fd::AsFd::as_fd(&dev.fd), nvme::NVME_URING_CMD_IO, &cmd.to_bytes(), None, 7).unwrap() };
    ring.wait_for(1).unwrap();
    let mut got = Vec::new();
    ring.reap(|u, r| got.push((u, r)));
    assert_eq!(got, [(7, -libc_einval())], "the kernel refuses a transfer over its limit");
}

fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn passthrough_equals_an_o_direct_read_of_the_block_device_through_the_same_driver() {
    let dev = open();
    let ns = dev.namespace;
    let block = dev.block_device.clone().unwrap();
    let lba = ns.lba_size as u64;
    let slot = test_slot(&ns) as usize;
    let (slba, blocks) = (100, ns.capacity_blocks - 200);
    let options = DriverOptions { direct: true, ..DriverOptions::default() };
    let sources = [Source::nvme(char_device(), Some(slba..slba + blocks)), Source::range(&block, slba * lba..(slba + blocks) * lba)];
    let run = drive(&sources, 8, slot, options).unwrap();
    let (nvme, direct): (Vec<&(usize, u64, u64, u64)>, Vec<_>) = run.segments.iter().partition(|s| s.0 == 0);
    assert_eq!(nvme.len(), direct.len());
    for (a, b) in nvme.iter().zip(&direct) {
        assert_eq!((a.1, a.2, a.3), (b.1, b.2, b.3), "passthrough and O_DIRECT agree at byte {}", a.1);
    }
    let total = 2 * blocks * lba;
    assert_eq!(run.telemetry.dma.bytes, total, "both paths are DMA");
    // And the library's own verification (O_DIRECT of the block device) agrees.
    let config = IngestOptions { slots: 8, slot_size: slot, ..IngestOptions::default() };
    let report = ingest::run(&[Source::nvme(char_device(), Some(slba..slba + blocks))], &config, &mut |_| {}).unwrap();
    assert!(report.checksum.verified && report.checksum.matched, "{:?}", report.checksum);
    assert!(report.dma_only && report.zero_bounce && report.complete);
    assert_eq!(report.nvme_fixed_buffers, Some(true));
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn throughput_of_passthrough_against_o_direct_block_reads() {
    let dev = open();
    let ns = dev.namespace;
    let block = dev.block_device.clone().unwrap();
    let bytes = dev.capacity_bytes();
    // The same slots on every namespace (local and fabric), so that their
    // throughputs compare: 512 KiB, the emulated controller's max transfer.
    let slot = (ns.max_transfer_bytes.min(512 << 10) / ns.lba_size * ns.lba_size) as usize;
    let (mut nvme, mut direct) = (Vec::new(), Vec::new());
    // Alternate the two, three rounds each: TCG timings drift.
    for _ in 0..3 {
        let started = Instant::now();
        let run = drive(&[Source::nvme(char_device(), None)], 16, slot, DriverOptions::default()).unwrap();
        assert_eq!(run.telemetry.dma.bytes, bytes);
        nvme.push(bytes as f64 / started.elapsed().as_secs_f64().max(run.seconds) / (1u64 << 30) as f64);
        let started = Instant::now();
        let run = drive(&[Source::file(&block)], 16, slot, DriverOptions { direct: true, ..DriverOptions::default() }).unwrap();
        assert_eq!(run.telemetry.dma.bytes, bytes);
        direct.push(bytes as f64 / started.elapsed().as_secs_f64().max(run.seconds) / (1u64 << 30) as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (n, d) = (median(&mut nvme), median(&mut direct));
    println!(
        "nvme-vm throughput ({} per run, 16 slots of {}): passthrough {n:.3} GiB/s, O_DIRECT block device {d:.3} GiB/s, ratio {:.2}",
        gpuring::core::Bytes(bytes),
        gpuring::core::Bytes(slot as u64),
        n / d
    );
}

fn gpuring_bin() -> PathBuf {
    std::env::var_os("GPURING_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gpuring")), PathBuf::from)
}

/// Run the `gpuring` command: (success, stdout, stderr).
fn run_gpuring(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(gpuring_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image: cargo xtask nvme-vm runs these in a QEMU guest"]
fn the_command_line_reads_and_verifies_a_namespace_and_probes_it() {
    let dev = char_device();
    let run = run_gpuring;
    let d = dev.to_str().unwrap();
    for args in [vec!["ingest", "--json", "--nvme", d, "--lba", "8", "--blocks", "3000"], vec!["ingest", "--json", "--nvme", d, "--nvme-buffers", "plain"]] {
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{args:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["checksum"]["match"], true, "{stdout}");
        assert_eq!(v["dma_only"], true, "{stdout}");
        assert_eq!(v["nvme_fixed_buffers"], args.len() == 8, "{stdout}");
        println!("{args:?}: {} bytes, {} GiB/s", v["bytes"], v["gib_per_s"]);
    }
    let (ok, stdout, _) = run(&["ingest", "--json", "--nvme", d, "--lba", "8", "--blocks", "3000"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["bytes"], 3000 * 512);
    let (ok, _, stderr) = run(&["ingest", "--nvme", d, "--lba", "1000000000"]);
    assert!(!ok && stderr.contains("past the end of the namespace"), "{stderr}");
    let (ok, stdout, stderr) = run(&["probe"]);
    assert!(ok, "{stderr}");
    let name = Path::new(d).file_name().unwrap().to_str().unwrap();
    let row = stdout.lines().find(|l| l.starts_with("nvme") && l.contains(name)).unwrap_or_else(|| panic!("no probe row for {name}: {stdout}"));
    println!("{row}");
    assert!(row.contains("fixed buffers yes, plain yes") && row.contains(" yes "), "{row}");
    // The device node is root's (0600): another user is told so, with a fix.
    let nobody = |args: &[&str]| {
        let out = std::os::unix::process::CommandExt::uid(std::os::unix::process::CommandExt::gid(&mut Command::new(gpuring_bin()), 65534), 65534)
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, _, stderr) = nobody(&["ingest", "--no-verify", "--slots", "2", "--slot-size", "64K", "--nvme", d]);
    assert!(!ok && stderr.contains("permission denied") && stderr.contains("Fix:"), "{stderr}");
    let (ok, stdout, stderr) = nobody(&["probe"]);
    assert!(ok, "{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("nvme") && l.contains(name)).unwrap_or_else(|| panic!("no probe row for {name}: {stdout}"));
    assert!(row.contains(" no ") && row.contains("permission denied"), "{row}");
}

#[test]
fn what_is_not_a_namespace_character_device_is_refused_before_any_read() {
    let dir = common::test_dir();
    let file = common::make_file(dir.path(), "f", 4096, 1);
    let refused = |path: &Path| drive(&[Source::nvme(path, None)], 2, 4096, DriverOptions::default()).err().expect("refused");
    let e = refused(&file);
    assert!(matches!(e, IngestError::NotNvmeChar { kind: "a regular file", hint: None, .. }), "{e}");
    let e = refused(Path::new("/dev/null"));
    assert!(matches!(e, IngestError::NotNvme { .. }), "{e}");
    let e = refused(Path::new("/dev/ng-does-not-exist"));
    assert!(matches!(e, IngestError::NotFound { .. }), "{e}");
    // The bounce path has no NVMe form.
    let config = IngestOptions { slots: 2, slot_size: 4096, bounce: true, ..IngestOptions::default() };
    let e = ingest::run(&[Source::nvme("/dev/null", None)], &config, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("not the bounce path"), "{e}");
}

#[test]
fn the_command_line_checks_nvme_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpuring")).args(["ingest", "--lba", "3", "/dev/null"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nvme"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_gpuring")).args(["ingest", "--nvme", "/dev/null"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an NVMe namespace"));
}

/// A loop device over a pattern file, detached on drop.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Option<Self> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !dev.is_empty()).then(|| Self(PathBuf::from(dev)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn block_devices_are_read_like_files_and_a_loop_device_is_not_dma() {
    let dir = common::test_dir();
    let file = common::make_file(dir.path(), "img", 3 << 20, 9);
    let Some(dev) = Loop::attach(&file) else {
        assert!(!common::under_ci(), "CI=true but losetup cannot attach a loop device here (the test command runs as root)");
        eprintln!("skipping: losetup cannot attach a loop device here (needs root and /dev/loop-control)");
        return;
    };
    for direct in [false, true] {
        let config = IngestOptions { slots: 4, slot_size: 64 << 10, direct, ..IngestOptions::default() };
        let whole = ingest::run(&[Source::file(&dev.0)], &config, &mut |_| {}).unwrap();
        assert!(whole.checksum.matched, "{:?}", whole.checksum);
        assert_eq!(whole.bytes, 3 << 20);
        // A loop device without its own direct I/O copies through the
        // backing file's page cache: a kernel copy, whatever O_DIRECT says.
        assert_eq!((whole.telemetry.kernel_copy_bytes, whole.telemetry.dma_bytes, whole.dma_only), (3 << 20, 0, false));
        let range = ingest::run(&[Source::range(&dev.0, 8192..(1 << 20) + 4096)], &config, &mut |_| {}).unwrap();
        assert!(range.checksum.matched && range.bytes == (1 << 20) - 4096, "{range:?}");
    }
}

/// A device-mapper device, made with the kernel's DM ioctls (the guest has
/// no dmsetup) and removed on drop: for block devices that fail where a
/// test wants them to (the `error` target between two `linear` ones).
mod dm {
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    /// `struct dm_ioctl` (linux/dm-ioctl.h), 312 bytes.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct DmIoctl {
        version: [u32; 3],
        data_size: u32,
        data_start: u32,
        target_count: u32,
        open_count: i32,
        flags: u32,
        event_nr: u32,
        padding: u32,
        dev: u64,
        name: [u8; 128],
        uuid: [u8; 129],
        data: [u8; 7],
    }

    /// `struct dm_target_spec`, 40 bytes, each followed by its parameters.
    #[repr(C)]
    struct TargetSpec {
        sector_start: u64,
        length: u64,
        status: i32,
        next: u32,
        target_type: [u8; 16],
    }

    const _: () = assert!(size_of::<DmIoctl>() == 312 && size_of::<TargetSpec>() == 40);

    /// The header and room for a table.
    #[repr(C, align(8))]
    struct Buf {
        header: DmIoctl,
        data: [u8; 4096],
    }

    /// `_IOWR(0xfd, nr, struct dm_ioctl)`.
    fn iowr(nr: u64) -> u64 {
        (3 << 30) | ((size_of::<DmIoctl>() as u64) << 16) | (0xfd << 8) | nr
    }
    const DEV_CREATE: u64 = 3;
    const DEV_REMOVE: u64 = 4;
    const DEV_SUSPEND: u64 = 6;
    const TABLE_LOAD: u64 = 9;

    pub struct Device {
        name: String,
        /// The block device, `/dev/dm-N`.
        pub path: PathBuf,
    }

    fn buf(name: &str) -> Box<Buf> {
        let mut header = DmIoctl {
            version: [4, 0, 0],
            data_size: size_of::<Buf>() as u32,
            data_start: size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; 128],
            uuid: [0; 129],
            data: [0; 7],
        };
        header.name[..name.len()].copy_from_slice(name.as_bytes());
        Box::new(Buf { header, data: [0; 4096] })
    }

    fn call(nr: u64, b: &mut Buf, what: &str) {
        let control = std::fs::File::open("/dev/mapper/control").expect("/dev/mapper/control (is dm-mod loaded?)");
        // SAFETY: `b` is a `struct dm_ioctl` followed by `data_size` bytes in
        // all, which the kernel reads and writes back within that size.
        let rc = unsafe { libc::ioctl(control.as_raw_fd(), iowr(nr) as libc::c_ulong, b as *mut Buf) };
        assert_eq!(rc, 0, "DM ioctl {what}: {}", std::io::Error::last_os_error());
    }

    /// Make device `name` with `table`: (start sector, sectors, target, parameters).
    pub fn create(name: &str, table: &[(u64, u64, &str, String)]) -> Device {
        let mut b = buf(name);
        call(DEV_CREATE, &mut b, "DM_DEV_CREATE");
        let minor = (b.header.dev & 0xff) | ((b.header.dev >> 12) & 0xfff00);
        let mut b = buf(name);
        b.header.target_count = table.len() as u32;
        let mut at = 0;
        for (start, len, target, params) in table {
            let size = (size_of::<TargetSpec>() + params.len() + 1).next_multiple_of(8);
            let mut spec = TargetSpec { sector_start: *start, length: *len, status: 0, next: size as u32, target_type: [0; 16] };
            spec.target_type[..target.len()].copy_from_slice(target.as_bytes());
            // SAFETY: `spec` is plain data of this size.
            let bytes = unsafe { std::slice::from_raw_parts((&spec as *const TargetSpec).cast::<u8>(), size_of::<TargetSpec>()) };
            b.data[at..at + bytes.len()].copy_from_slice(bytes);
            b.data[at + bytes.len()..at + bytes.len() + params.len()].copy_from_slice(params.as_bytes());
            at += size;
        }
        call(TABLE_LOAD, &mut b, "DM_TABLE_LOAD");
        // DM_DEV_SUSPEND without the suspend flag resumes: the table goes live.
        call(DEV_SUSPEND, &mut buf(name), "DM_DEV_SUSPEND (resume)");
        let path = PathBuf::from(format!("/dev/dm-{minor}"));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(path.exists(), "{} did not appear", path.display());
        Device { name: name.to_owned(), path }
    }

    impl Drop for Device {
        fn drop(&mut self) {
            call(DEV_REMOVE, &mut buf(&self.name), "DM_DEV_REMOVE");
        }
    }
}

#[test]
#[ignore = "needs an NVMe namespace with the pattern image and dm-mod: cargo xtask nvme-vm runs these in a QEMU guest"]
fn eio_from_a_block_device_mid_file_names_file_offset_and_slot_buffered_and_direct() {
    let dev = open();
    let block = dev.block_device.clone().unwrap();
    let sectors = dev.capacity_bytes() / 512;
    // 4 KiB that fail with EIO, 5 MiB + 12 KiB into the device.
    let bad = (5u64 << 20) + (12 << 10);
    let (from, len) = (bad / 512, 8);
    let table = [
        (0, from, "linear", format!("{} 0", block.display())),
        (from, len, "error", String::new()),
        (from + len, sectors - from - len, "linear", format!("{} {}", block.display(), from + len)),
    ];
    let dm = dm::create("gpuring-eio", &table);
    let slot = 64 << 10;
    let bad_segment = bad / slot as u64 * slot as u64;
    for direct in [false, true] {
        // One slot: segments complete in order, so what came before the
        // failure is exactly the segments before the bad one.
        let staging = Arc::new(HostStaging::new(SlotGeometry::new(1, slot).unwrap(), 1).unwrap());
        let consumer = HostConsumer::start(staging.clone()).unwrap();
        let mut segments = Vec::new();
        let mut driver = Driver::new(staging, DriverOptions { direct, ..DriverOptions::default() }).unwrap();
        let result = driver.ingest(&[Source::file(&dm.path)], |e| {
            if let Event::Released { offset, bytes, result: checksum, .. } = e {
                segments.push((offset, bytes, checksum));
            }
        });
        driver.close_queue();
        let t = *driver.telemetry();
        drop(driver);
        consumer.join().unwrap();
        let e = result.unwrap_err();
        println!("dm error target, direct {direct}: {e}");
        let IngestError::Read { path, offset, slot: 0, errno } = &e else { panic!("a read error naming slot 0: {e:?}") };
        assert_eq!((path, *errno), (&dm.path, rustix::io::Errno::IO));
        assert!((bad_segment..=bad).contains(offset), "the error names byte {offset}, in the failing segment {bad_segment}..={bad}");
        let want: Vec<_> = (0..bad_segment).step_by(slot).map(|o| (o, slot as u64, slot_checksum(&image_bytes(o, slot)))).collect();
        assert_eq!(segments, want, "every segment before the failure, once, with the device's bytes");
        assert_eq!((t.failed_completions, t.inflight_reads), (1, 0));
        assert_eq!(t.released, t.published, "everything published was released");
        assert_eq!(t.published, want.len() as u64 + 1, "the failed read is published (with its status) too");
    }
    // The command line says the same, with a fix.
    let out = Command::new(gpuring_bin()).args(["ingest", "--direct"]).arg(&dm.path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&*dm.path.to_string_lossy()) && stderr.contains("into slot") && stderr.contains("Fix:"), "{stderr}");
}

/// The PCI device whose peer memory (P2PDMA) holds the slots in the
/// `peer_` tests: `cargo xtask nvme-vm` sets it in its 7.2 guest, where an
/// emulated NVMe controller publishes its memory buffer.
fn peer_pci() -> String {
    std::env::var("GPURING_PEER_PCI").expect("GPURING_PEER_PCI names a PCI device that publishes peer memory (cargo xtask nvme-vm sets it)")
}

#[test]
#[ignore = "needs a PCI device publishing P2PDMA memory beside the NVMe namespace: cargo xtask nvme-vm runs these in its 7.2 guest"]
fn peer_memory_takes_o_direct_and_passthrough_reads_from_another_device() {
    use gpuring::core::{MemoryKind, StagingMemory};
    use gpuring::host::PeerStaging;
    let dev = open();
    let ns = dev.namespace;
    let block = dev.block_device.clone().unwrap();
    let lba = ns.lba_size as u64;
    let slot = (128usize << 10).max(ns.lba_size as usize);
    // 8 MiB of each, through 8 slots of the peer device's memory.
    let (slba, blocks) = (64, (8 << 20) / lba);
    let staging = Arc::new(PeerStaging::new(&peer_pci(), SlotGeometry::new(8, slot).unwrap(), 8).unwrap());
    assert_eq!(staging.kind(), MemoryKind::DevicePeer);
    let sources = [Source::nvme(char_device(), Some(slba..slba + blocks)), Source::range(&block, slba * lba..(slba + blocks) * lba)];
    let run = drive_into(staging, &sources, DriverOptions { direct: true, ..DriverOptions::default() }).unwrap();
    assert!(!run.registered, "the kernel registered peer memory as fixed buffers: update the docs, which say it refuses");
    assert_eq!(run.fixed, Some(false), "passthrough into peer memory goes by address");
    for &(source, offset, bytes, checksum) in &run.segments {
        assert_eq!(checksum, slot_checksum(&image_bytes(offset, bytes as usize)), "source {source}: bytes at {offset} differ from the image");
    }
    for source in 0..2 {
        let total: u64 = run.segments.iter().filter(|s| s.0 == source).map(|s| s.2).sum();
        assert_eq!(total, blocks * lba, "source {source} read whole");
    }
    let t = run.telemetry;
    assert_eq!((t.dma.bytes, t.kernel_copy.bytes, t.bounce.bytes), (2 * blocks * lba, 0, 0), "every byte is the NVMe device's DMA");
    println!("peer memory of {}: {} segments, {} bytes, all DMA", peer_pci(), run.segments.len(), t.dma.bytes);
}

#[test]
#[ignore = "needs a PCI device publishing P2PDMA memory beside the NVMe namespace: cargo xtask nvme-vm runs these in its 7.2 guest"]
fn peer_memory_from_the_command_line_is_verified_and_probed() {
    let pci = peer_pci();
    let dev = open();
    let block = dev.block_device.clone().unwrap();
    let run = |args: &[&str]| {
        let (ok, stdout, stderr) = run_gpuring(args);
        assert!(ok, "{args:?}: {stderr}");
        stdout
    };
    let (d, b) = (char_device(), block.clone());
    let stdout = run(&[
        "ingest",
        "--json",
        "--direct",
        "--slots",
        "8",
        "--slot-size",
        "256K",
        "--peer-memory",
        &pci,
        "--nvme",
        d.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["memory_kind"], "device_peer", "{stdout}");
    assert_eq!(v["device"], format!("peer memory of PCI device {pci}"), "{stdout}");
    assert_eq!(v["slots_registered"], false, "{stdout}");
    assert_eq!(v["nvme_fixed_buffers"], false, "{stdout}");
    assert_eq!((v["dma_only"].clone(), v["zero_bounce"].clone(), v["complete"].clone()), (true.into(), true.into(), true.into()), "{stdout}");
    assert_eq!(v["checksum"]["match"], true, "{stdout}");
    assert_eq!(v["bytes"], 2 * dev.capacity_bytes(), "{stdout}");
    println!("ingest --peer-memory {pci}: {} bytes, {} GiB/s", v["bytes"], v["gib_per_s"]);
    let probe = run(&["probe"]);
    let row = probe.lines().find(|l| l.starts_with("peer") && l.contains(&pci)).unwrap_or_else(|| panic!("no peer row for {pci}: {probe}"));
    println!("{row}");
    assert!(row.contains(" yes ") && row.contains("published: true"), "{row}");
    assert!(row.contains("io_uring fixed buffers: no"), "{row}");
    assert!(row.contains(&format!("O_DIRECT read from {} into it: yes", block.display())), "{row}");
}
