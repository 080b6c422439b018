//! The bench's data: the large file, the small files, the checkpoint, and
//! the page-cache state each group starts from.

use super::*;

/// Read `sources` once, so that they are in the page cache.
pub(super) fn warm(sources: &[Source]) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    for s in sources {
        let file = std::fs::File::open(&s.path).map_err(io_error(&s.path, "opening"))?;
        let (mut at, end) = s.range.as_ref().map_or((0, u64::MAX), |r| (r.start, r.end));
        while at < end {
            let want = buf.len().min((end - at).try_into().unwrap_or(usize::MAX));
            let n = file.read_at(&mut buf[..want], at).map_err(io_error(&s.path, "warming the page cache"))?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// Make the large file and the small files unless they already exist with
/// the right sizes.
pub(super) fn prepare(config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Data, Error> {
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(io_error(dir, "creating the bench directory"))?;
    let large = dir.join("large.bin");
    if std::fs::metadata(&large).map(|m| m.len()).ok() != Some(config.size) {
        say(&format!("writing {} to {}", gpuring::core::Bytes(config.size), large.display()));
        write_pattern(&large, config.size, 1, true)?;
    }
    let small_dir = dir.join(format!("small-{}x{}", config.small_files, config.small_size));
    std::fs::create_dir_all(&small_dir).map_err(io_error(&small_dir, "creating the small-file directory"))?;
    let mut small = Vec::with_capacity(config.small_files as usize);
    let mut wrote = false;
    for i in 0..config.small_files {
        // fio's default name for file i of job `small`.
        let path = small_dir.join(format!("small.0.{i}"));
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(config.small_size) {
            if !wrote {
                say(&format!("writing {} files of {} to {}", config.small_files, gpuring::core::Bytes(config.small_size), small_dir.display()));
                wrote = true;
            }
            write_pattern(&path, config.small_size, i as u64 + 2, true)?;
        }
        small.push(Source::file(path));
    }
    let checkpoint = checkpoint(dir, config.checkpoint_size, say)?;
    let model = match &config.model {
        Some(dir) => Some(gpuring::load::Checkpoint::open(&[dir.join("model.safetensors")])?),
        None => None,
    };
    let destination = std::cell::RefCell::new(vec![0x5Au8; config.size as usize]);
    Ok(Data { large, checkpoint, model, python: numpy_python(), destination, small_dir, small, links_ready: std::cell::Cell::new(false) })
}

/// A tensor the bench's checkpoint is written from, made when written.
pub(super) struct Generated {
    shape: Vec<usize>,
    seed: u64,
}

impl safetensors::View for Generated {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut x = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes = (0..self.data_len() / 4)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u32).to_le_bytes()
            })
            .collect();
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// The shapes of the bench's checkpoint: `layers` layers of a weight
/// matrix (about `size / layers` bytes), a bias and a norm, as a model's
/// checkpoint has: about `size` bytes in `3 * layers` tensors.
pub(super) fn checkpoint_shapes(size: u64, layers: usize) -> Vec<(String, Vec<usize>)> {
    let cols = 1024;
    let rows = ((size / layers as u64 / 4 / cols as u64) as usize).max(1);
    (0..layers)
        .flat_map(|i| {
            [
                (format!("layers.{i:03}.weight"), vec![rows + i % 3, cols]),
                (format!("layers.{i:03}.bias"), vec![cols]),
                (format!("layers.{i:03}.norm"), vec![cols + 2 * (i % 5)]),
            ]
        })
        .collect()
}

/// Write the checkpoint with the `safetensors` crate unless it is there.
pub(super) fn checkpoint(dir: &Path, size: u64, say: &mut dyn FnMut(&str)) -> Result<gpuring::load::Checkpoint, Error> {
    let path = dir.join(format!("checkpoint-{size}.safetensors"));
    let shapes = checkpoint_shapes(size, 100);
    let want: u64 = shapes.iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 4).sum();
    if let Ok(found) = gpuring::load::Checkpoint::open(std::slice::from_ref(&path)) {
        if found.bytes() == want && found.tensors.len() == shapes.len() {
            return Ok(found);
        }
    }
    say(&format!("writing a checkpoint of {} in {} tensors to {}", gpuring::core::Bytes(want), shapes.len(), path.display()));
    let tensors = shapes.into_iter().enumerate().map(|(i, (name, shape))| (name, Generated { shape, seed: i as u64 + 7 }));
    safetensors::serialize_to_file(tensors, None, &path)
        .map_err(|e| Error::BenchFailed { case: "checkpoint".into(), why: format!("writing {}: {e}", path.display()) })?;
    gpuring::load::Checkpoint::open(&[path])
}

/// Write `len` pseudo-random bytes (xorshift) to `path`, and with `sync`
/// wait until they are on the disk (the direct cases read from there).
pub(super) fn write_pattern(path: &Path, len: u64, seed: u64, sync: bool) -> Result<(), Error> {
    let mut file = std::fs::File::create(path).map_err(io_error(path, "creating"))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).map_err(io_error(path, "writing"))?;
        left -= n as u64;
    }
    if sync {
        file.sync_all().map_err(io_error(path, "syncing"))?;
    }
    Ok(())
}

/// Warm the files a group reads, or drop the large file from the cache.
pub(super) fn set_cache(data: &Data, group: &str) -> Result<(), Error> {
    let sources: Vec<Source> = match group {
        "small-files" => data.small.clone(),
        "load" | "load-model" => data.load_checkpoint(group).files.iter().map(Source::file).collect(),
        _ => vec![Source::file(&data.large)],
    };
    if group != "large-direct" {
        return warm(&sources);
    }
    for s in &sources {
        let file = std::fs::File::open(&s.path).map_err(io_error(&s.path, "opening"))?;
        // Best effort: dirty or mapped pages stay, which O_DIRECT ignores anyway.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(())
}

impl Data {
    /// The checkpoint of load group `group`.
    pub(super) fn load_checkpoint(&self, group: &str) -> &gpuring::load::Checkpoint {
        match (group, &self.model) {
            ("load-model", Some(model)) => model,
            _ => &self.checkpoint,
        }
    }
}
