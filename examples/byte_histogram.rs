//! Your own consumer on the host: a byte histogram of files, computed by a
//! closure that gpuring hands each slot to, on a thread of its own.
//!
//!     cargo run --release --example byte_histogram -- FILE...
//!
//! The driver reads the files through io_uring into the slots; the closure
//! gets each published slot's bytes and completion, adds them to its
//! histogram (its state, which `finish` gives back), and returns the
//! entry's result: here the slot's count of zero bytes, which the driver
//! reports with each segment. The last line printed is one JSON object:
//! `{"files": N, "bytes": N, "histogram": [256 counts]}`.

use std::sync::Arc;

use gpuring::core::io_queue::Completion;
use gpuring::core::SlotGeometry;
use gpuring::host::{HostConsumer, HostStaging};
use gpuring::uring::{Driver, DriverOptions, Event};

mod common;

fn main() -> std::process::ExitCode {
    common::exit("byte_histogram", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let sources = common::sources("byte_histogram")?;

    // 16 slots of 1 MiB, and an io_queue with room for every slot.
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(16, 1 << 20)?, 16)?);
    let consumer = HostConsumer::with(staging.clone(), [0u64; 256], |histogram, _: &Completion, bytes: &[u8]| {
        for &b in bytes {
            histogram[b as usize] += 1;
        }
        bytes.iter().filter(|&&b| b == 0).count() as u64
    })?;
    let mut driver = Driver::new(staging, DriverOptions::default())?;
    let mut zeros = 0;
    let ingested = driver.ingest(&sources, |event| {
        if let Event::Released { checksum: zeros_in_slot, .. } = event {
            zeros += zeros_in_slot;
        }
    });
    driver.close_queue();
    let (consumed, histogram) = consumer.finish()?;
    let stats = ingested?;
    assert_eq!(zeros, histogram[0], "each slot's result reached the driver");
    eprintln!("{} files, {} bytes in {:.3} s, {} slots", sources.len(), consumed.bytes, stats.elapsed.as_secs_f64(), consumed.entries);
    common::print(sources.len(), consumed.bytes, &histogram);
    Ok(())
}
