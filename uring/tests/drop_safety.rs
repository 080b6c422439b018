//! Dropping a ring with reads in flight must not let the kernel write into
//! the buffer afterwards.
//!
//! The buffer is a memfd page mapped twice: the ring reads into mapping A,
//! the test watches mapping B. A read from an empty pipe stays in flight;
//! the ring is dropped; only then is data written into the pipe. If the
//! read had outlived the ring, the data would appear in B (the pinned page
//! is the same) and be gone from the pipe.

use std::os::fd::AsFd;
use std::time::Duration;

use gpuring_uring::Ring;
use rustix::mm::{MapFlags, ProtFlags};

const LEN: usize = 4096;

fn map_shared(fd: &std::os::fd::OwnedFd) -> *mut u8 {
    // SAFETY: a fresh shared mapping of our own memfd.
    unsafe { rustix::mm::mmap(std::ptr::null_mut(), LEN, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0) }.unwrap().cast()
}

#[test]
fn dropping_a_ring_with_a_read_in_flight_cancels_it_before_returning() {
    let memfd = rustix::fs::memfd_create("gpuring-drop-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, LEN as u64).unwrap();
    let (a, b) = (map_shared(&memfd), map_shared(&memfd));
    // SAFETY: both mappings are LEN bytes and live until the end of the test.
    unsafe { a.write_bytes(0xEE, LEN) };
    let (reader, writer) = rustix::pipe::pipe().unwrap();

    let mut ring = Ring::new(2).unwrap();
    // SAFETY: mapping A stays mapped until after the ring is dropped.
    unsafe { ring.register_buffers(&[(a, LEN)]).unwrap() };
    // SAFETY: buffer and pipe outlive the ring; offset 0 on a pipe means "current position".
    unsafe { ring.push_read_fixed(reader.as_fd(), a, LEN as u32, 0, 0, 1).unwrap() };
    ring.submit().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ring.reap(|_, _| panic!("the pipe is empty: nothing can complete")), 0);
    assert_eq!(ring.in_flight(), 1);

    drop(ring);

    rustix::io::write(&writer, b"written after the drop").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: B is mapped and LEN long.
    let seen = unsafe { std::slice::from_raw_parts(b, LEN) };
    assert!(seen.iter().all(|&x| x == 0xEE), "the kernel wrote into the buffer after the ring was dropped");
    let mut back = [0u8; 64];
    rustix::fs::fcntl_setfl(&reader, rustix::fs::OFlags::NONBLOCK).unwrap();
    let n = rustix::io::read(&reader, &mut back).unwrap();
    assert_eq!(&back[..n], b"written after the drop", "the data stayed in the pipe: the read was cancelled");
    // SAFETY: nothing refers to the mappings any more.
    unsafe {
        rustix::mm::munmap(a.cast(), LEN).unwrap();
        rustix::mm::munmap(b.cast(), LEN).unwrap();
    }
}

#[test]
fn cancel_all_on_a_live_ring_stops_the_read_before_returning() {
    let memfd = rustix::fs::memfd_create("gpuring-cancel-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, LEN as u64).unwrap();
    let (a, b) = (map_shared(&memfd), map_shared(&memfd));
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    let mut ring = Ring::new(2).unwrap();
    // SAFETY: mapping A stays mapped until after the ring is dropped.
    unsafe { ring.register_buffers(&[(a, LEN)]).unwrap() };
    // SAFETY: as in the test above.
    unsafe { ring.push_read_fixed(reader.as_fd(), a, LEN as u32, 0, 0, 1).unwrap() };
    ring.submit().unwrap();
    ring.cancel_all().unwrap();
    assert_eq!(ring.in_flight(), 0, "every request completed (cancelled) before cancel_all returned");
    rustix::io::write(&writer, b"late").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: B is mapped and LEN long.
    assert!(unsafe { std::slice::from_raw_parts(b, LEN) }.iter().all(|&x| x == 0), "no write after cancel_all");
    assert_eq!(ring.reap(|_, _| panic!("no completion may arrive after cancel_all")), 0);
    drop(ring);
    // SAFETY: nothing refers to the mappings any more.
    unsafe {
        rustix::mm::munmap(a.cast(), LEN).unwrap();
        rustix::mm::munmap(b.cast(), LEN).unwrap();
    }
}
