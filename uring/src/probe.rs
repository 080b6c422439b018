//! What io_uring can do here, with reasons.
//!
//! Everything is asked of the running kernel and process: the sysctl that
//! disables io_uring, a ring setup, the opcodes gpuring uses (from
//! `IORING_REGISTER_PROBE`), 128-byte SQEs with 32-byte CQEs, and the
//! memlock limit against a requested registration.

use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

/// One capability: whether it is there, and why (not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// Whether it is usable.
    pub ok: bool,
    /// Why (not).
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Self { name, ok, detail: detail.into() }
    }
}

/// The io_uring checks: sysctl, setup, opcodes, SQE128.
pub fn uring_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_owned());
    checks.push(match sysctl.as_deref() {
        Ok("0") => Check::new("io_uring_enabled", true, "/proc/sys/kernel/io_uring_disabled is 0"),
        Ok(v) => Check::new("io_uring_enabled", false, format!("/proc/sys/kernel/io_uring_disabled is {v}. Fix: `sysctl kernel.io_uring_disabled=0` as root")),
        Err(_) => Check::new("io_uring_enabled", true, "no io_uring_disabled sysctl (kernel before 6.6): enabled unless compiled out"),
    });
    let ring = match IoUring::new(8) {
        Ok(ring) => {
            checks.push(Check::new("ring_setup", true, "an 8-entry ring was set up"));
            Some(ring)
        }
        Err(e) => {
            checks.push(Check::new(
                "ring_setup",
                false,
                format!("io_uring_setup failed: {e}. Fix: enable io_uring, or allow it in the seccomp profile of this container"),
            ));
            None
        }
    };
    if let Some(ring) = ring {
        let mut probe = Probe::new();
        match ring.submitter().register_probe(&mut probe) {
            Ok(()) => {
                for (name, code, why) in [
                    ("op_read_fixed", opcode::ReadFixed::CODE, "reads into registered slots"),
                    ("op_async_cancel", opcode::AsyncCancel::CODE, "cancels reads in flight on drop"),
                    ("op_uring_cmd", opcode::UringCmd80::CODE, "NVMe passthrough"),
                ] {
                    let ok = probe.is_supported(code);
                    checks.push(Check::new(name, ok, if ok { format!("supported ({why})") } else { format!("not supported by this kernel ({why} needs it)") }));
                }
            }
            Err(e) => checks.push(Check::new("opcodes", false, format!("IORING_REGISTER_PROBE failed: {e} (kernel before 5.6)"))),
        }
    }
    checks.push(match IoUring::<squeue::Entry128, cqueue::Entry32>::builder().build(8) {
        Ok(_) => Check::new("sqe128_cqe32", true, "rings with 128-byte SQEs and 32-byte CQEs work (NVMe passthrough can use them)"),
        Err(e) => Check::new("sqe128_cqe32", false, format!("SQE128/CQE32 ring setup failed: {e} (needs Linux 5.19)")),
    });
    checks
}

/// RLIMIT_MEMLOCK against registering `slots` slots of `slot_size` with
/// io_uring (their ring included; see [`crate::memlock`]).
pub fn memlock_check(slots: u32, slot_size: usize) -> Check {
    use gpuring_core::Bytes;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let Some(need) = crate::memlock::need(slots, slot_size) else {
        return Check::new("memlock", false, format!("{slots} slots of {slot_size} bytes do not fit in 64 bits. Fix: use fewer/smaller slots"));
    };
    match (crate::memlock::budget(), limit) {
        (_, None) => Check::new("memlock", true, "RLIMIT_MEMLOCK is unlimited"),
        (None, Some(limit)) => Check::new("memlock", true, format!("CAP_IPC_LOCK (root): io_uring charges nothing against the {} limit", Bytes(limit))),
        (Some(budget), _) if need <= budget => Check::new(
            "memlock",
            true,
            format!(
                "RLIMIT_MEMLOCK {} covers the {} io_uring charges for {slots} slots of {} and their ring",
                Bytes(budget),
                Bytes(need),
                Bytes(slot_size as u64)
            ),
        ),
        (Some(budget), _) => {
            let fix = match crate::memlock::fitting_ring(slots, slot_size, budget) {
                Some((n, size)) => format!("or use {n} slots of {}", Bytes(size as u64)),
                None => "no ring fits it".to_owned(),
            };
            Check::new(
                "memlock",
                false,
                format!(
                    "RLIMIT_MEMLOCK {} is below the {} io_uring charges for {slots} slots of {} and their ring. Fix: raise it to at least {} (`ulimit -l {}`), {fix}",
                    Bytes(budget),
                    Bytes(need),
                    Bytes(slot_size as u64),
                    Bytes(need),
                    need.div_ceil(1024)
                ),
            )
        }
    }
}

/// Direct-I/O alignment of the file system holding `dir`.
pub fn direct_io_check(dir: &std::path::Path) -> Check {
    let probe = tempfile_in(dir);
    let Some((path, fd)) = probe else {
        return Check::new("direct_io", false, format!("could not create a probe file in {}", dir.display()));
    };
    let result = crate::source::dio_alignment(&fd);
    let _ = std::fs::remove_file(&path);
    match result {
        Some((0, _)) => Check::new("direct_io", false, format!("{}: the file system does not support O_DIRECT", dir.display())),
        Some((offset, mem)) => Check::new("direct_io", true, format!("{}: O_DIRECT with {offset}-byte offset and {mem}-byte memory alignment", dir.display())),
        None => Check::new("direct_io", true, format!("{}: the kernel does not report direct-I/O alignment (before 6.1); gpuring assumes 4096", dir.display())),
    }
}

fn tempfile_in(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::os::fd::OwnedFd)> {
    let path = dir.join(format!(".gpuring-probe-{}", std::process::id()));
    let fd =
        rustix::fs::open(&path, rustix::fs::OFlags::CREATE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::from_raw_mode(0o600))
            .ok()?;
    Some((path, fd))
}
