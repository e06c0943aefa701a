//! A first-in first-out byte buffer that keeps at most a fixed amount in
//! memory and spills the rest to an unlinked temporary file.
//!
//! Owns: holding a request body between the web server, which may send all
//! of it before reading any response (mod_fcgid does), and an application
//! that reads it at its own pace. Must not: lose or reorder bytes, or hold more
//! than its memory limit in memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

/// Bytes kept in memory before spilling to a file.
pub const MEMORY_LIMIT: usize = 1024 * 1024;
/// How much is read back from the file at a time.
const REFILL: usize = 256 * 1024;

#[derive(Debug, Default)]
pub struct Spool {
    mem: Vec<u8>,
    mem_start: usize,
    file: Option<File>,
    /// Offsets in the file: bytes before `read_at` were returned, bytes
    /// between `read_at` and `write_at` are waiting.
    read_at: u64,
    write_at: u64,
    total: u64,
}

impl Spool {
    pub fn new() -> Spool {
        Spool::default()
    }

    /// Bytes ready to be taken (the in-memory front of the queue).
    pub fn front(&self) -> &[u8] {
        &self.mem[self.mem_start..]
    }

    /// Bytes waiting in all, memory and file.
    pub fn len(&self) -> u64 {
        (self.mem.len() - self.mem_start) as u64 + (self.write_at - self.read_at)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Append bytes at the back. Err: the temporary file could not be
    /// created or written (a full disk, no file descriptor left); the
    /// message says which and where. The bytes were not taken.
    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        let spilling = self.write_at > self.read_at;
        if !spilling && self.mem.len() - self.mem_start + data.len() <= MEMORY_LIMIT {
            if self.mem_start > 0 && self.mem_start * 2 >= self.mem.len() {
                self.mem.drain(..self.mem_start);
                self.mem_start = 0;
            }
            self.mem.extend_from_slice(data);
            self.total += data.len() as u64;
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(temp_file().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create a temporary file in {}: {e}",
                        std::env::temp_dir().display()
                    ),
                )
            })?),
        };
        file.write_all_at(data, self.write_at).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot write to the temporary file in {}: {e}",
                    std::env::temp_dir().display()
                ),
            )
        })?;
        self.write_at += data.len() as u64;
        self.total += data.len() as u64;
        Ok(())
    }

    /// Drop `n` bytes from the front, refilling memory from the file.
    pub fn consume(&mut self, n: usize) -> io::Result<()> {
        self.mem_start = (self.mem_start + n).min(self.mem.len());
        if self.mem_start < self.mem.len() {
            return Ok(());
        }
        self.mem.clear();
        self.mem_start = 0;
        let waiting = self.write_at - self.read_at;
        let Some(file) = &self.file else {
            return Ok(());
        };
        if waiting == 0 {
            return Ok(());
        }
        let take = usize::try_from(waiting).unwrap_or(REFILL).min(REFILL);
        self.mem.resize(take, 0);
        file.read_exact_at(&mut self.mem, self.read_at)?;
        self.read_at += take as u64;
        if self.read_at == self.write_at {
            // Everything spilled was read back: reuse the file from the start.
            self.read_at = 0;
            self.write_at = 0;
            file.set_len(0)?;
        }
        Ok(())
    }
}

/// An unlinked file in $TMPDIR (or /tmp), readable only by us.
fn temp_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path: PathBuf = dir.join(format!(
            ".fcgi-shim-body-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "cannot create a temporary file for the request body",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Push and take in uneven steps across the memory limit; bytes come out
    /// in order and memory never holds more than the limit.
    #[test]
    fn fifo_across_the_memory_limit() {
        let data: Vec<u8> = (0..3 * MEMORY_LIMIT + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut spool = Spool::new();
        let mut out = Vec::new();
        let mut pushed = 0;
        let mut step = 1;
        while out.len() < data.len() {
            if pushed < data.len() {
                let n = (step * 9973) % 200_000 + 1;
                let end = (pushed + n).min(data.len());
                spool.push(&data[pushed..end]).unwrap();
                pushed = end;
            }
            let take = spool.front().len().min((step * 7919) % 150_000 + 1);
            out.extend_from_slice(&spool.front()[..take]);
            spool.consume(take).unwrap();
            assert!(spool.front().len() <= MEMORY_LIMIT);
            // Consumed bytes are compacted away before the buffer doubles.
            assert!(spool.mem.len() <= 2 * MEMORY_LIMIT);
            assert_eq!(spool.len() as usize, pushed - out.len());
            step += 1;
        }
        assert_eq!(out, data);
        assert!(spool.is_empty());
        assert_eq!(spool.total() as usize, data.len());
    }
}
