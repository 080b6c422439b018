//! Without libcuda (every CI machine), each entry point returns the
//! no-driver error with its fix, and nothing panics: cudarc itself panics
//! when asked to load a missing driver, so this is what guards it.

use gpuring_core::SlotGeometry;
use gpuring_cuda::{CudaError, CudaStaging, Device};

fn driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].into_iter().any(|name| {
        // SAFETY: loading the driver library runs its initialisers, which a
        // system driver library is expected to survive; it is dropped at once.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

#[test]
fn every_entry_point_reports_the_missing_driver() {
    if driver_present() {
        eprintln!("libcuda is present on this machine: the no-driver path cannot be tested here (hwtest covers the driver path)");
        return;
    }
    let geometry = SlotGeometry::new(4, 64 << 10).unwrap();
    let errors = [
        gpuring_cuda::devices().unwrap_err(),
        Device::open(None).unwrap_err(),
        Device::open(Some("0")).unwrap_err(),
        CudaStaging::new(None, geometry, 4).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, CudaError::NoDriver), "{e:?}");
        assert!(e.is_absent());
        let text = e.to_string();
        assert!(text.starts_with("no CUDA driver: libcuda.so.1 could not be loaded. Fix: install the NVIDIA driver"), "{text}");
        assert!(text.ends_with("or use the host backend"), "{text}");
    }
}
