//! Reading files whose paths come from outside: the configuration, the
//! command line, the admin API. Only regular files are read, and only up to
//! a size limit, so a path such as `/dev/zero`, a FIFO or a huge file is
//! refused with a clear error instead of filling memory or hanging.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest component (`.wasm`) redloom reads. The biggest real plugins are
/// CPython components of 40–50 MB; this leaves room, and bounds the memory
/// one `load` (by `redloom.toml`, `redloom check` or `POST /plugins`) takes.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Largest `redloom.toml` read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Largest PEM file (CA, client certificate or key) read.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("it is over the limit of {max} bytes")]
    TooLarge { max: u64 },
}

/// Reads the regular file at `path` whole, if it holds at most `max` bytes.
///
/// The file is opened without blocking (a FIFO would otherwise wait for a
/// writer), its type checked on the open file (no race with a rename), and
/// at most `max + 1` bytes are read, so a file that grows while being read
/// is refused too.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge { max });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(bytes)
}

/// A new random secret: 24 random bytes as 48 hex digits (passwords,
/// tokens).
pub fn new_secret() -> std::io::Result<String> {
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw)
        .map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Replaces `path` with a new file holding `text`, readable and writable by
/// this user only (mode 0600 from its creation, never wider).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Replaces `path` with `bytes` at once: written to a temporary file in the
/// same folder, then renamed over it, so a reader (or a crash) never sees
/// half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// The first line of the small file at `path`, if it has a non-empty one
/// (a stored secret).
pub fn read_secret(path: &Path) -> Option<String> {
    let bytes = read_bounded(path, 4096).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Devices, FIFOs and folders are refused, not read; a file over the
    /// limit is refused before it is read; a file within it is read whole.
    #[test]
    fn only_bounded_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 1 << 20),
            Err(ReadError::NotRegular)
        ));
        assert!(matches!(
            read_bounded(dir.path(), 1 << 20),
            Err(ReadError::NotRegular)
        ));
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            read_bounded(&fifo, 1 << 20),
            Err(ReadError::NotRegular)
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, vec![7u8; 1000]).unwrap();
        assert!(matches!(
            read_bounded(&file, 999),
            Err(ReadError::TooLarge { max: 999 })
        ));
        assert_eq!(read_bounded(&file, 1000).unwrap(), vec![7u8; 1000]);
        assert!(matches!(
            read_bounded(&dir.path().join("missing"), 10),
            Err(ReadError::Io(_))
        ));
    }
}
