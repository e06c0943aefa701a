//! The output queue every front's connection driver writes through: bytes
//! are appended at the back and written to a non-blocking socket as the web
//! server takes them.
//!
//! Owns: queued response bytes, the write loop that never blocks, and the
//! socket's send buffer (raised once a response fills the default one).
//! Must not: encode any protocol (fronts append already-encoded bytes) or wait.

use std::io::{self, Write};
use std::os::fd::AsFd;

use crate::sys::Conn;

/// The send buffer asked for once a response fills the default one
/// (net.core.wmem_default, 208 KiB; the kernel caps it at wmem_max). A 1 MiB
/// response then goes out in a few writes, each waking the web server once,
/// not one per 200 KiB it takes: measured through Apache + mod_fcgid, about
/// a fifth less CPU per 1 MiB response in the shim and in Apache
/// (bench/results.md).
const BIG_SEND_BUFFER: usize = 1 << 20;

/// Response bytes not yet taken by the peer.
#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    start: usize,
    /// Has this connection's send buffer been raised?
    raised: bool,
}

impl OutQueue {
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Where to append encoded output.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Write queued bytes to the connection until all are written or it is
    /// full; the first time it is full, raise its send buffer and go on.
    pub fn flush_to_socket(&mut self, conn: &mut Conn) -> io::Result<()> {
        self.flush_to(conn)?;
        if self.pending() > 0 && !self.raised {
            self.raised = true;
            if crate::sys::set_send_buffer(conn.as_fd(), BIG_SEND_BUFFER).is_ok() {
                self.flush_to(conn)?;
            }
        }
        Ok(())
    }

    /// Raise the connection's send buffer now (once), for output written
    /// around the queue (splice).
    pub fn raise_send_buffer(&mut self, conn: &Conn) {
        if !self.raised {
            self.raised = true;
            let _ = crate::sys::set_send_buffer(conn.as_fd(), BIG_SEND_BUFFER);
        }
    }

    /// Write queued bytes until all are written or `w` would block.
    pub fn flush_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while self.start < self.buf.len() {
            match w.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(3);
            self.taken.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut q = OutQueue::new();
        q.tail().extend_from_slice(b"hello world");
        let mut w = Narrow {
            taken: Vec::new(),
            room: 7,
        };
        q.flush_to(&mut w).unwrap();
        assert_eq!(q.pending(), 4);
        q.tail().extend_from_slice(b"!");
        w.room = 100;
        q.flush_to(&mut w).unwrap();
        assert_eq!(q.pending(), 0);
        assert_eq!(w.taken, b"hello world!");
    }

    /// The send buffer's size as the kernel reports it (twice what was set).
    fn send_buffer(fd: &impl AsFd) -> usize {
        nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SndBuf).unwrap()
    }

    #[test]
    fn a_full_socket_gets_a_bigger_send_buffer_once_and_loses_nothing() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let (ours, mut peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut conn = Conn::from(std::os::fd::OwnedFd::from(ours));
        let before = send_buffer(&conn);
        let mut q = OutQueue::new();
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        // Small output: the buffer stays as it is.
        q.tail().extend_from_slice(&data[..100]);
        q.flush_to_socket(&mut conn).unwrap();
        assert_eq!(q.pending(), 0);
        assert_eq!(send_buffer(&conn), before);
        // More than the socket holds: raised (unless the system caps it at
        // the default), and what did not fit stays queued.
        q.tail().extend_from_slice(&data[100..]);
        q.flush_to_socket(&mut conn).unwrap();
        assert!(q.pending() > 0);
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .map_or(0, |s| s.trim().parse().unwrap_or(0));
        if wmem_max >= BIG_SEND_BUFFER {
            assert!(
                send_buffer(&conn) >= BIG_SEND_BUFFER,
                "{} -> {}",
                before,
                send_buffer(&conn)
            );
        }
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        while got.len() < data.len() {
            let n = peer.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            q.flush_to_socket(&mut conn).unwrap();
        }
        assert_eq!(got, data);
    }
}
