//! What the histogram examples share: their arguments, the 256 counts a
//! GPU consumer's output buffer holds, and the JSON line each prints last.

#![allow(dead_code)] // each example uses what it needs of this

use gpuring::Source;

/// The files named on the command line, as sources; a usage error without any.
pub fn sources(example: &str) -> Result<Vec<Source>, Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err(format!("usage: {example} FILE...").into());
    }
    Ok(paths.iter().map(Source::file).collect())
}

/// 256 little-endian u32 counts (a bin holds at most 4 GiB - 1 bytes), as
/// the GPU examples' kernels and shader leave them in their output buffer.
pub fn counts(output: &[u8]) -> Vec<u64> {
    output.chunks_exact(4).take(256).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64).collect()
}

/// The last line, from a GPU consumer's output buffer of 256 counts.
pub fn print_output(files: usize, bytes: u64, output: &[u8]) {
    print(files, bytes, &counts(output));
}

/// The last line: `{"files": N, "bytes": N, "histogram": [256 counts]}`.
pub fn print(files: usize, bytes: u64, histogram: &[u64]) {
    let counts: Vec<String> = histogram.iter().map(u64::to_string).collect();
    println!("{{\"files\": {files}, \"bytes\": {bytes}, \"histogram\": [{}]}}", counts.join(", "));
}

/// Exit 0, or print the error (with its fix) and exit 2.
pub fn exit(example: &str, result: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{example}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
