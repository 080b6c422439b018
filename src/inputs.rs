//! Turning command-line paths into sources: directories are walked
//! recursively, in a stable (byte-wise sorted) order.

use std::path::{Path, PathBuf};

use gpuring_uring::Source;

use crate::error::Error;

/// The sources found, and what was passed over inside directories.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Sources to ingest, in order.
    pub sources: Vec<Source>,
    /// Entries inside directories that are not regular files (special files,
    /// symbolic links to directories, dangling links), skipped.
    pub skipped: Vec<PathBuf>,
}

/// Expand `paths`: a file stays as it is (so a special file named explicitly
/// is refused later with a clear error), a directory becomes the regular
/// files under it, recursively, sorted by name at every level. Symbolic links
/// inside directories are followed to files but not into directories.
pub fn collect(paths: &[PathBuf]) -> Result<Inputs, Error> {
    let mut inputs = Inputs::default();
    for path in paths {
        if std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            walk(path, &mut inputs)?;
        } else {
            inputs.sources.push(Source::file(path));
        }
    }
    Ok(inputs)
}

/// The NVMe source for `--nvme DEV --lba A [--blocks N]`: `N` blocks from
/// `A`, or from `A` through the end of the namespace when `N` is not given.
/// A zero-length or overflowing range is refused here; one past the end of
/// the namespace when the driver asks the device.
pub fn nvme_source(dev: PathBuf, lba: u64, blocks: Option<u64>) -> Result<Source, Error> {
    let range = match blocks {
        None if lba == 0 => None,
        None => {
            let ns = gpuring_uring::nvme::NvmeDevice::open(&dev)?.namespace;
            Some(lba..ns.capacity_blocks.max(lba + 1))
        }
        Some(n) => Some(lba..lba.saturating_add(n)),
    };
    Ok(Source::nvme(dev, range))
}

fn walk(dir: &Path, inputs: &mut Inputs) -> Result<(), Error> {
    let io = |error| Error::Io { path: dir.to_owned(), op: "listing the directory", error };
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(io)?;
        if file_type.is_dir() {
            walk(&path, inputs)?;
        } else if file_type.is_file() || (file_type.is_symlink() && std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false)) {
            inputs.sources.push(Source::file(path));
        } else {
            inputs.skipped.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_directories_in_stable_order_and_skips_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/inner")).unwrap();
        for f in ["b/inner/z", "b/a", "c", "a"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        rustix::fs::mknodat(rustix::fs::CWD, d.join("fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        std::os::unix::fs::symlink(d.join("b"), d.join("link-to-dir")).unwrap();
        std::os::unix::fs::symlink(d.join("c"), d.join("link-to-file")).unwrap();
        let inputs = collect(&[d.to_owned()]).unwrap();
        let names: Vec<_> = inputs.sources.iter().map(|s| s.path.strip_prefix(d).unwrap().to_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["a", "b/a", "b/inner/z", "c", "link-to-file"]);
        let skipped: Vec<_> = inputs.skipped.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
        assert_eq!(skipped, ["fifo", "link-to-dir"]);
    }
}
