//! Your own consumer on the host: a byte histogram of files, computed by a
//! closure that gpuring hands each slot to, on a thread of its own.
//!
//!     cargo run --release --example byte_histogram -- FILE...
//!
//! The driver reads the files through io_uring into the slots; the closure
//! gets each published slot's bytes and entry, adds them to its histogram
//! (its state, which the call gives back), and returns the entry's result.
//! `gpuring::consume::host` closes the queue on every path, so nothing
//! here can wait forever. The last line printed is one JSON object:
//! `{"files": N, "bytes": N, "histogram": [256 counts]}`.
//!
//! `main` returns `gpuring::Error` as it is: a missing file prints the
//! message and its `Fix:` (exit code 1).

use gpuring::consume::{self, ConsumeOptions};
use gpuring::Source;

fn main() -> Result<(), gpuring::Error> {
    let sources: Vec<Source> = std::env::args().skip(1).map(Source::file).collect();
    let options = ConsumeOptions { slots: 16, slot_size: 1 << 20, ..ConsumeOptions::default() };
    let run = consume::host(&sources, &options, [0u64; 256], |histogram, _entry, bytes| {
        for &b in bytes {
            histogram[b as usize] += 1;
        }
        0
    })?;
    let bytes: u64 = run.output.iter().sum();
    eprintln!("{} files, {bytes} bytes in {:.3} s", sources.len(), run.stats.elapsed.as_secs_f64());
    let counts: Vec<String> = run.output.iter().map(u64::to_string).collect();
    println!("{{\"files\": {}, \"bytes\": {bytes}, \"histogram\": [{}]}}", sources.len(), counts.join(", "));
    Ok(())
}
