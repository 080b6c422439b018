//! A missing HIP runtime is an error that says where it was looked for and
//! how to fix it, never a panic or a failure to start. The runtime is
//! pointed at a file that does not exist (`GPURING_HIP_LIBRARY`), so this
//! runs the same on machines with and without ROCm. Its own test binary:
//! the runtime is looked up once per process.

use gpuring_core::SlotGeometry;
use gpuring_rocm::{devices, RocmError, RocmStaging, LIBRARY_VARIABLE};

#[test]
fn a_missing_runtime_is_an_error_with_a_fix() {
    std::env::set_var(LIBRARY_VARIABLE, "/nonexistent/libamdhip64.so.6");
    let e = devices().unwrap_err();
    assert!(matches!(&e, RocmError::NoRuntime { searched, why: None } if searched == &["/nonexistent/libamdhip64.so.6"]), "{e:?}");
    assert!(e.is_absent());
    let text = e.to_string();
    assert!(text.starts_with("no HIP runtime: libamdhip64 could not be loaded (tried /nonexistent/libamdhip64.so.6)"), "{text}");
    assert!(text.contains("Fix: install ROCm's HIP runtime"), "{text}");
    let staged = RocmStaging::new(None, SlotGeometry::new(4, 64 << 10).unwrap(), 8).unwrap_err();
    assert_eq!(staged.to_string(), text);
}
