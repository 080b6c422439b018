//! The capability report behind `gpuring probe`.

use std::path::Path;

use gpuring_uring::probe::{self, Check};
use serde::Serialize;

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    /// Group: `io_uring`, `memory`, `direct_io`, `nvme`, `backend`, `gpu`.
    pub group: &'static str,
    /// What was checked.
    pub name: String,
    /// Whether it is usable.
    pub ok: bool,
    /// Why (not).
    pub detail: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The backends compiled into this build, default first.
    pub backends: Vec<&'static str>,
    /// Every check, grouped.
    pub checks: Vec<Item>,
}

fn item(group: &'static str, c: Check) -> Item {
    Item { group, name: c.name.to_owned(), ok: c.ok, detail: c.detail }
}

/// Probe this machine for a ring of `ring_bytes` and direct I/O under `dir`.
pub fn report(ring_bytes: u64, dir: &Path) -> Report {
    let mut checks: Vec<Item> = probe::uring_checks().into_iter().map(|c| item("io_uring", c)).collect();
    checks.push(item("memory", probe::memlock_check(ring_bytes)));
    checks.push(item("direct_io", probe::direct_io_check(dir)));
    let mut namespaces: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("ng")).collect())
        .unwrap_or_default();
    namespaces.sort();
    checks.push(Item {
        group: "nvme",
        name: "namespaces".into(),
        ok: false,
        detail: if namespaces.is_empty() {
            "no NVMe character devices (/dev/ngXnY) on this machine; NVMe passthrough ingest is not built yet".into()
        } else {
            format!("found {}; NVMe passthrough ingest is not built yet", namespaces.join(", "))
        },
    });
    for name in crate::ingest::BACKENDS {
        checks.push(Item { group: "backend", name: (*name).into(), ok: true, detail: "locked host memory, CPU consumer thread; needs no GPU".into() });
    }
    for name in ["cuda", "vulkan", "rocm"] {
        if !crate::ingest::BACKENDS.contains(&name) {
            checks.push(Item { group: "backend", name: name.into(), ok: false, detail: "not compiled into this build".into() });
        }
    }
    checks.push(Item {
        group: "gpu",
        name: "peer_dma".into(),
        ok: false,
        detail: "no GPU backend is compiled in, so no GPU memory can be exposed for peer DMA (BAR1)".into(),
    });
    Report { backends: crate::ingest::BACKENDS.to_vec(), checks }
}
