//! Compute shaders users write: [`Shader`], run by
//! [`VulkanConsumer::with_shader`](crate::VulkanConsumer::with_shader) on
//! the staging's queue and slots in place of gpuring's checksum shader.
//!
//! # The binding layout
//!
//! A shader of yours sees, in descriptor set 0:
//!
//! | binding | WGSL (as [`Shader::wgsl`] declares it) | what |
//! |---|---|---|
//! | 0 | `queue: array<atomic<u32>>` (read_write, coherent) | the io_queue, in 32-bit words (the `GPURING_*` word offsets of `gpuring header --lang wgsl`) |
//! | 1 | `slots: array<u32>` (read) | the slots: slot `s` starts at word `s * params.slot_bytes / 4` |
//! | 2 | `output: array<atomic<u32>>` (read_write) | your output, [`Shader::with_output`] bytes, zeroed at the start; [`VulkanConsumer::finish`](crate::VulkanConsumer::finish) returns it |
//!
//! and 20 bytes of push constants (`params`): `first`, `count`, `capacity`,
//! `slot_count`, `slot_bytes`, all `u32`. Each batch is one dispatch of
//! `count` workgroups in x: workgroup `i` owns the entry at position
//! `first + i` (wrapping), and must write that entry's `consumer_status`
//! (`GPURING_CONSUMED`, `GPURING_SKIPPED` for an entry whose `status` is not
//! 0, or `GPURING_REJECTED`) and may write its `result`. It must not write
//! `consumer` or anything else of the queue: the host thread releases the
//! batch after its fence, and fails the queue if an entry is rejected.

use std::ffi::CString;

use crate::error::VulkanError;

/// What [`Shader::wgsl`] puts before your source: the published contract
/// (`gpuring header --lang wgsl`) and the declarations of the bindings and
/// push constants, so your source holds only your functions.
fn wgsl_prelude() -> String {
    let mut text = String::from("// gpuring: the io_queue contract, then the bindings of a user's shader.\n");
    // Writing into a String cannot fail.
    let _ = gpuring_core::contract::write_wgsl(&mut text);
    text += include_str!("bindings.wgsl");
    text
}

/// A compute shader of yours, compiled to SPIR-V, with its entry point and
/// the size of its output buffer (see the [module docs](self) for what it
/// is bound to).
#[derive(Clone, Debug)]
pub struct Shader {
    pub(crate) spirv: Vec<u32>,
    pub(crate) entry: CString,
    pub(crate) output_bytes: usize,
}

impl Shader {
    /// Compile WGSL `source` (with naga) whose compute entry point is
    /// `entry`. The contract module and the declarations of `params`,
    /// `queue`, `slots` and `output` (and the helpers `gpuring_load` and
    /// `gpuring_store`) are put before it: declare none of them yourself.
    pub fn wgsl(source: &str, entry: &str) -> Result<Self, VulkanError> {
        let text = wgsl_prelude() + "\n" + source;
        let invalid = |what: String| VulkanError::Shader { what };
        let module = naga::front::wgsl::parse_str(&text).map_err(|e| invalid(e.emit_to_string(&text)))?;
        let capabilities = naga::valid::Capabilities::IMMEDIATES | naga::valid::Capabilities::MEMORY_DECORATION_COHERENT;
        let info =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities).validate(&module).map_err(|e| invalid(e.emit_to_string(&text)))?;
        if !module.entry_points.iter().any(|e| e.name == entry && e.stage == naga::ShaderStage::Compute) {
            return Err(invalid(format!("it has no compute entry point named `{entry}`")));
        }
        // Out-of-bounds indices are clamped to the buffer (naga cannot skip
        // an out-of-bounds atomic, which a histogram's adds are).
        let checks = naga::proc::BoundsCheckPolicy::Restrict;
        let options = naga::back::spv::Options {
            bounds_check_policies: naga::proc::BoundsCheckPolicies { index: checks, buffer: checks, ..Default::default() },
            flags: naga::back::spv::WriterFlags::empty(),
            ..Default::default()
        };
        let spirv = naga::back::spv::write_vec(&module, &info, &options, None).map_err(|e| invalid(format!("writing SPIR-V: {e}")))?;
        Self::spirv(spirv, entry)
    }

    /// SPIR-V of your own (from glslang, slang, naga, ...) whose compute
    /// entry point is `entry`, declaring the bindings and push constants of
    /// the [module docs](self) itself.
    pub fn spirv(words: Vec<u32>, entry: &str) -> Result<Self, VulkanError> {
        let entry = CString::new(entry).map_err(|_| VulkanError::Shader { what: format!("the entry point name {entry:?} holds a NUL") })?;
        Ok(Self { spirv: words, entry, output_bytes: 4 })
    }

    /// Give the shader an output buffer (binding 2) of `bytes` bytes
    /// (rounded up to 4), zeroed before the first batch (default: 4).
    pub fn with_output(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes.max(4).next_multiple_of(4);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgsl_compiles_with_the_contract_and_bindings_and_errors_say_where() {
        let ok = Shader::wgsl(
            "@compute @workgroup_size(1)\nfn main(@builtin(workgroup_id) g: vec3<u32>) {\n    gpuring_store(params.first + g.x, GPURING_E_CONSUMER_STATUS, GPURING_CONSUMED);\n}\n",
            "main",
        )
        .unwrap();
        assert!(ok.spirv.len() > 100 && ok.spirv[0] == 0x0723_0203, "SPIR-V's magic number");
        let e = Shader::wgsl("fn main() {", "main").unwrap_err().to_string();
        assert!(e.contains("Fix:"), "{e}");
        let e = Shader::wgsl("@compute @workgroup_size(1)\nfn main() {}\n", "other").unwrap_err().to_string();
        assert!(e.contains("no compute entry point named `other`"), "{e}");
    }
}
