//! Page-aligned heap memory for gpuring's own reads: the bounce path's
//! buffers, O_DIRECT scratch, NVMe checks. Its own module, so that what
//! reads through it (`bounce`, `nvme`, `read_into`) depends on it and not
//! on each other.

use std::alloc::{alloc, dealloc, Layout};

/// Page-aligned heap memory. O_DIRECT needs aligned buffers, and copies
/// into memory that is not 64-byte aligned are several times slower, so the
/// bounce path (and the bench's memcpy) use this rather than a `Vec<u8>`.
pub struct HeapBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

impl HeapBuffer {
    /// `len` bytes (at least one), every one set to `fill`: all pages are
    /// touched now, which keeps page faults out of later timings.
    pub fn new(len: usize, fill: u8) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("a length below isize::MAX - 4095");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else { std::alloc::handle_alloc_error(layout) };
        // SAFETY: a fresh allocation of `layout.size()` bytes.
        unsafe { ptr.as_ptr().write_bytes(fill, layout.size()) };
        Self { ptr, layout }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: an owned, initialised allocation of `layout.size()` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

// SAFETY: a plain owned allocation, like a `Vec<u8>`.
unsafe impl Send for HeapBuffer {}
// SAFETY: shared access is read-only (`as_slice`).
unsafe impl Sync for HeapBuffer {}

impl Drop for HeapBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
