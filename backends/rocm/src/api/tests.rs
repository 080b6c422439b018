//! The Rust signatures and hip-sys constants against the installed HIP
//! headers: a C++ file that `static_cast`s each real function to the C type
//! its Rust signature mirrors (a different prototype does not compile) and
//! `static_assert`s each constant the backend takes from hip-sys.

use std::process::Command;

use hip_sys::hiprt::{self, hipDeviceAttribute_t as Attr, hipError_t as Error};

use super::{Rtc, Runtime};

/// The directory holding `hip/hip_runtime_api.h`: `$HIP_PATH/include`,
/// `$ROCM_PATH/include`, `/opt/rocm/include` or `/usr/include`.
fn include_dir() -> Option<std::path::PathBuf> {
    let roots = ["HIP_PATH", "ROCM_PATH"].iter().filter_map(std::env::var_os).map(std::path::PathBuf::from);
    roots.chain(["/opt/rocm".into(), "/usr".into()]).map(|r| r.join("include")).find(|d| d.join("hip/hip_runtime_api.h").is_file())
}

#[test]
fn signatures_and_constants_match_the_installed_headers() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(include) = include_dir() else {
        assert!(!ci, "CI=true but HIP's headers are missing; the test command installs libamdhip64-dev");
        eprintln!("skipping the HIP header check: no hip/hip_runtime_api.h (install libamdhip64-dev)");
        return;
    };
    let constants: &[(&str, i64)] = &[
        ("hipSuccess", Error::hipSuccess as i64),
        ("hipErrorNotReady", Error::hipErrorNotReady as i64),
        ("hipErrorNoDevice", Error::hipErrorNoDevice as i64),
        ("hipDeviceAttributeCanMapHostMemory", Attr::hipDeviceAttributeCanMapHostMemory as i64),
        ("hipDeviceAttributeComputeCapabilityMajor", Attr::hipDeviceAttributeComputeCapabilityMajor as i64),
        ("hipDeviceAttributeComputeCapabilityMinor", Attr::hipDeviceAttributeComputeCapabilityMinor as i64),
        ("hipDeviceAttributeIntegrated", Attr::hipDeviceAttributeIntegrated as i64),
        ("hipDeviceAttributeMultiprocessorCount", Attr::hipDeviceAttributeMultiprocessorCount as i64),
        ("hipHostRegisterMapped", hiprt::hipHostRegisterMapped as i64),
        ("hipHostRegisterPortable", hiprt::hipHostRegisterPortable as i64),
        ("hipStreamNonBlocking", hiprt::hipStreamNonBlocking as i64),
        ("hipMemcpyDeviceToHost", super::DEVICE_TO_HOST as i64),
        ("HIPRTC_SUCCESS", super::SUCCESS as i64),
    ];
    let mut text = String::from("#define __HIP_PLATFORM_AMD__\n#include <hip/hip_runtime_api.h>\n#include <hip/hiprtc.h>\n");
    text += "static_assert(sizeof(hipError_t) == sizeof(int) && sizeof(hiprtcResult) == sizeof(int) && sizeof(hipDeviceAttribute_t) == sizeof(int) && sizeof(hipMemcpyKind) == sizeof(int), \"enums are ints\");\n";
    for (name, value) in constants {
        text += &format!("static_assert({name} == {value}, \"{name} differs from hip-sys ({value})\");\n");
    }
    text += "void gr_signatures() {\n";
    for (name, c_type) in Runtime::C_TYPES.iter().chain(Rtc::C_TYPES) {
        text += &format!("    (void)static_cast<{c_type}>(&{name});\n");
    }
    text += "}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signatures.cpp");
    std::fs::write(&file, &text).unwrap();
    let out = match Command::new("g++").args(["-std=c++17", "-fsyntax-only", "-Wall", "-Werror"]).arg("-I").arg(&include).arg(&file).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(!ci, "CI=true but g++ cannot run ({e}); the test command installs it");
            eprintln!("skipping the HIP header check: g++ cannot run ({e})");
            return;
        }
    };
    assert!(out.status.success(), "the backend's HIP signatures or constants differ from {}:\n{}", include.display(), String::from_utf8_lossy(&out.stderr));
}
