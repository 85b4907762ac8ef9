//! An append-only file of lines, synced on every append: the payout outbox's journal and the
//! commission ledger. A crash mid-append leaves a torn last line, never synced (so never
//! acknowledged): [`read`] leaves it out and [`Journal::open`] cuts it off. A failed append is
//! cut back the same way, so the next one never joins a torn line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The file's whole lines, and how many bytes after them were torn; empty if there is no file.
pub fn read(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut text)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let torn = (text.len() - whole) as u64;
    text.truncate(whole);
    Ok((text, torn))
}

pub struct Journal {
    pub(super) file: File,
    /// Bytes of whole lines in the file.
    len: u64,
}

impl Journal {
    /// Opens (creating) `path` to append after its first `len` bytes, the whole lines [`read`]
    /// found: anything after them is cut. The file and its directory are synced.
    pub fn open(path: &Path, len: u64) -> io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() > len {
            file.set_len(len)?;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(Journal { file, len })
    }

    /// Appends whole lines and syncs; on an error the file is cut back to its last whole line.
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        match self.file.write_all(lines).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// Writes `bytes` to `path` through a file beside it (`<name>.new`), synced and renamed over,
/// and the directory synced: a crash leaves the old file or the new one, whole.
pub fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = dir.join(name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
