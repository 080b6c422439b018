//! The layers under `gpuring ingest`, put together by hand: host staging
//! memory, its CPU consumer, and the io_uring driver, reporting each segment
//! as the consumer releases it.
//!
//!     cargo run --release --example layers -- FILE [--direct]

use std::sync::Arc;

use gpuring::core::{Bytes, SlotGeometry};
use gpuring::host::{HostConsumer, HostStaging};
use gpuring::uring::{Driver, DriverOptions, Event, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: layers FILE [--direct]")?;
    let direct = args.any(|a| a == "--direct");

    // 8 slots of 1 MiB, and an io_queue with room for every slot.
    let geometry = SlotGeometry::new(8, 1 << 20)?;
    let staging = Arc::new(HostStaging::new(geometry, 8)?);
    let consumer = HostConsumer::start(staging.clone())?;
    let mut driver = Driver::new(staging, DriverOptions { direct, ..DriverOptions::default() })?;

    let stats = driver.ingest(&[Source::file(&path)], |event| match event {
        Event::Released { segment, offset, bytes, result: checksum, .. } => {
            println!("segment {segment:>5} at byte {offset:>12}: {:>9}, checksum {checksum:016x}", Bytes(bytes).to_string())
        }
        Event::SourceDone { bytes, .. } => println!("done: {}", Bytes(bytes)),
    })?;
    driver.close_queue();
    drop(driver);
    let consumed = consumer.join()?;

    let verdict = stats.telemetry.validate()?;
    println!(
        "{:.2} GiB/s; consumer checksummed {} in {} entries; zero-bounce {}, DMA-only {}",
        stats.telemetry.completed_bytes as f64 / stats.elapsed.as_secs_f64() / (1u64 << 30) as f64,
        Bytes(consumed.bytes),
        consumed.entries,
        verdict.zero_bounce,
        verdict.dma_only
    );
    Ok(())
}
