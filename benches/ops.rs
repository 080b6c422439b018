//! Per-operation costs of the core and the driver, in nanoseconds.
//!
//! `cargo bench` runs them; `cargo bench -- checksum` one group. Each group
//! reports time per operation (criterion's `time:` line) and, where it has
//! one, throughput. These are costs of one call on this machine, to compare
//! before and after a change; `gpuring bench` measures whole ingests.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::os::fd::AsFd;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gpuring::core::io_queue::{Completion, Consumer, EntryKind, IoQueue, Producer, CONSUMED};
use gpuring::core::nvme::{read_command, Namespace};
use gpuring::core::SlotGeometry;
use gpuring::host::{HostConsumer, HostStaging, Mapping};
use gpuring::uring::{Driver, DriverOptions, Ring, Source};

const MIB: usize = 1 << 20;

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..MIB as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("core_portable_1MiB", |b| b.iter(|| gpuring::core::slot_checksum(black_box(&data))));
    let name = format!("host_{}_1MiB", gpuring::host::checksum::flavour());
    g.bench_function(name, |b| b.iter(|| gpuring::host::checksum::slot_checksum(black_box(&data))));
    g.finish();
}

fn io_queue(c: &mut Criterion) {
    let mut region = vec![0u8; IoQueue::bytes_for(64) + 64];
    let skew = region.as_ptr().align_offset(64);
    let q = IoQueue::init(&mut region[skew..], 64).expect("queue");
    // SAFETY: the bench's queue, in memory of its own: these are its only ends.
    let (mut producer, mut consumer) = unsafe { (Producer::attach(&q), Consumer::attach(&q)) };
    let completion = Completion { slot: 3, status: 0, kind: EntryKind::File, bytes: 4096, offset: 8192, tag: 1 };
    let mut g = c.benchmark_group("io_queue");
    g.throughput(Throughput::Elements(1));
    // One entry's whole trip on one thread: publish, peek, release, reap.
    g.bench_function("publish_peek_release_reap", |b| {
        b.iter(|| {
            producer.publish(&q, black_box(&completion)).expect("room");
            let entry = consumer.peek(&q).expect("valid").expect("published");
            consumer.release(&q, entry.offset, CONSUMED);
            producer.poll_released(&q, |r| {
                black_box(r);
            })
        })
    });
    let batch = [completion; 32];
    g.throughput(Throughput::Elements(32));
    g.bench_function("batch_of_32", |b| {
        b.iter(|| {
            assert_eq!(producer.publish_batch(&q, black_box(&batch)), 32);
            while let Some(entry) = consumer.peek(&q).expect("valid") {
                consumer.release(&q, entry.offset, CONSUMED);
            }
            producer.poll_released(&q, |r| {
                black_box(r);
            })
        })
    });
    g.finish();
}

fn nvme(c: &mut Criterion) {
    let ns = Namespace { nsid: 1, lba_size: 512, capacity_blocks: 1 << 30, max_transfer_bytes: 512 << 10 };
    c.bench_function("nvme/encode_read_command", |b| {
        b.iter(|| read_command(black_box(&ns), black_box(4096), black_box(256), black_box(0x7000_0000), 128 << 10).map(|cmd| cmd.to_bytes()))
    });
}

fn ring(c: &mut Criterion) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), vec![7u8; MIB]).expect("write");
    let buffer = Mapping::new(MIB).expect("locked buffer");
    let mut ring = Ring::new(8).expect("ring");
    // SAFETY: `buffer` outlives `ring` (declared before it, dropped after).
    unsafe { ring.register_buffers(&[(buffer.as_ptr().as_ptr(), MIB)]).expect("register") };
    let fd = file.as_file().as_fd();
    let mut g = c.benchmark_group("ring");
    for len in [4096u32, 64 << 10] {
        g.throughput(Throughput::Bytes(len as u64));
        // Push, submit, wait for and reap one READ_FIXED from the page cache.
        g.bench_function(format!("read_fixed_{}K_cached", len >> 10), |b| {
            b.iter(|| {
                // SAFETY: one request at a time; it is reaped before the next
                // push, and the buffer and fd outlive the ring.
                unsafe { ring.push_read_fixed(fd, buffer.as_ptr().as_ptr(), len, 0, 0, 1) }.expect("push");
                ring.submit().expect("submit");
                ring.wait(None).expect("wait");
                let mut res = 0;
                ring.reap(|_, r| res = r);
                assert_eq!(res, len as i32);
            })
        });
    }
    g.finish();
}

fn driver(c: &mut Criterion) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), vec![9u8; 8 * MIB]).expect("write");
    let sources = [Source::file(file.path())];
    let mut g = c.benchmark_group("driver");
    for slot_size in [4096usize, 64 << 10] {
        let geometry = SlotGeometry::new(32, slot_size).expect("geometry");
        let segments = (8 * MIB / slot_size) as u64;
        g.throughput(Throughput::Elements(segments));
        // A whole ingest of a cached 8 MiB file with the host consumer,
        // reported per segment: read, publish, checksum, release.
        g.bench_function(format!("ingest_8MiB_per_{}K_segment", slot_size >> 10), |b| {
            b.iter_batched(
                || {
                    let staging = Arc::new(HostStaging::new(geometry, 32).expect("staging"));
                    let consumer = HostConsumer::start(staging.clone()).unwrap();
                    let driver = Driver::new(staging, DriverOptions::default()).expect("driver");
                    (driver, consumer)
                },
                |(mut driver, consumer)| {
                    driver.ingest(&sources, |_| {}).expect("ingest");
                    driver.close_queue();
                    consumer.join().expect("consumer")
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, checksum, io_queue, nvme, ring, driver);
criterion_main!(benches);
