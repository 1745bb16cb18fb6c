//! The PV console ring (`io/console.h`), producer side for `out`.
//!
//! Safe logic over [`SharedMem`]; the hal supplies the mapped page and the
//! event channel. The backend (xenconsoled) consumes `out` and may be slow or
//! absent, so writes never block: they return how much fitted.
#![forbid(unsafe_code)]

use core::fmt;

use crate::shmem::SharedMem;
use crate::xen_abi::console as c;

/// Longest console line kept (bytes after escaping); a longer one is cut and
/// ends in `...`.
pub const MAX_LINE: usize = 240;

/// Writer for the console page's output ring.
pub struct ConsoleRing<M: SharedMem> {
    mem: M,
}

/// What a write did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum WriteOutcome {
    /// This many bytes were queued.
    Queued(usize),
    /// The indices are inconsistent (`prod - cons > size`): the ring is
    /// broken; nothing was written.
    Broken,
}

impl<M: SharedMem> ConsoleRing<M> {
    /// Wraps a mapped console page.
    pub fn new(mem: M) -> Self {
        assert!(mem.len() >= c::OUT_PROD + 4, "console page too small");
        Self { mem }
    }

    /// Queues as many bytes of `data` as fit.
    pub fn write(&self, data: &[u8]) -> WriteOutcome {
        // Read the backend's consumer index once; acquire so that our later
        // writes into the ring cannot be reordered before it.
        let cons = self.mem.load_u32_acquire(c::OUT_CONS);
        let mut prod = self.mem.load_u32_acquire(c::OUT_PROD);
        let used = prod.wrapping_sub(cons) as usize;
        if used > c::OUT_SIZE {
            return WriteOutcome::Broken;
        }
        let n = data.len().min(c::OUT_SIZE - used);
        let mut done = 0;
        while done < n {
            let idx = (prod as usize) % c::OUT_SIZE;
            let chunk = (n - done).min(c::OUT_SIZE - idx);
            self.mem.write(c::OUT + idx, &data[done..done + chunk]);
            done += chunk;
            prod = prod.wrapping_add(chunk as u32);
        }
        // Release: the bytes above are visible before the new producer index.
        self.mem.store_u32_release(c::OUT_PROD, prod);
        WriteOutcome::Queued(n)
    }

    /// Queues all of `data` or, when it does not fit, nothing (never waits).
    pub fn write_whole(&self, data: &[u8]) -> WriteOutcome {
        let used = self.pending_checked();
        match used {
            None => WriteOutcome::Broken,
            Some(u) if c::OUT_SIZE - u < data.len() => WriteOutcome::Queued(0),
            Some(_) => self.write(data),
        }
    }

    fn pending_checked(&self) -> Option<usize> {
        let cons = self.mem.load_u32_acquire(c::OUT_CONS);
        let prod = self.mem.load_u32_acquire(c::OUT_PROD);
        let used = prod.wrapping_sub(cons) as usize;
        (used <= c::OUT_SIZE).then_some(used)
    }

    /// Bytes written but not yet consumed by the backend.
    pub fn pending(&self) -> usize {
        let cons = self.mem.load_u32_acquire(c::OUT_CONS);
        let prod = self.mem.load_u32_acquire(c::OUT_PROD);
        (prod.wrapping_sub(cons) as usize).min(c::OUT_SIZE)
    }
}

/// One console line being formatted (`core::fmt::Write`). In escaping mode
/// every control byte (newlines included) and backslash becomes `\\xNN`, so
/// nothing formatted into it (a guest's `protocol` string, say) can start a
/// line of its own or drive a terminal; the line is cut at [`MAX_LINE`].
pub struct Line {
    buf: [u8; MAX_LINE + 4],
    len: usize,
    cut: bool,
    escape: bool,
}

impl Line {
    /// An empty line that escapes what is written into it.
    pub fn escaped() -> Self {
        Line { buf: [0; MAX_LINE + 4], len: 0, cut: false, escape: true }
    }

    /// An empty line that takes text as is (the runtime's own messages).
    pub fn raw() -> Self {
        Line { escape: false, ..Line::escaped() }
    }

    /// The same line, escaping what is written from now on.
    pub fn into_escaped(self) -> Self {
        Line { escape: true, ..self }
    }

    fn push(&mut self, b: &[u8]) {
        if self.cut {
            return;
        }
        if self.len + b.len() > MAX_LINE {
            self.buf[self.len..self.len + 3].copy_from_slice(b"...");
            self.len += 3;
            self.cut = true;
            return;
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    /// The line so far, with `\n` appended (outside the escaping).
    pub fn finish(&mut self) -> &[u8] {
        if self.buf[..self.len].last() != Some(&b'\n') {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        &self.buf[..self.len]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in s.as_bytes() {
            if self.escape && (b < 0x20 || b == 0x7f || b == b'\\') {
                self.push(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            } else {
                self.push(&[b]);
            }
        }
        Ok(())
    }
}

/// Whole lines into the console ring, never waiting: a line that does not
/// fit is dropped and counted, and the next line that fits is preceded by a
/// `[console] N line(s) dropped` notice.
pub struct LineSink<M: SharedMem> {
    ring: ConsoleRing<M>,
    unreported: u64,
    dropped: u64,
}

impl<M: SharedMem> LineSink<M> {
    /// Wraps a console ring.
    pub fn new(ring: ConsoleRing<M>) -> Self {
        LineSink { ring, unreported: 0, dropped: 0 }
    }

    /// The ring (to drain it at shutdown).
    pub fn ring(&self) -> &ConsoleRing<M> {
        &self.ring
    }

    /// Lines dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues `line` whole or drops it; true if anything was queued (the
    /// backend should be notified).
    pub fn put(&mut self, line: &[u8]) -> bool {
        let mut queued = false;
        if self.unreported > 0 {
            let mut note = Line::raw();
            let _ = fmt::Write::write_fmt(
                &mut note,
                format_args!("[console] {} line(s) dropped (ring full)", self.unreported),
            );
            if self.ring.write_whole(note.finish()) == WriteOutcome::Queued(note.len) {
                self.unreported = 0;
                queued = true;
            }
        }
        if self.unreported == 0 && self.ring.write_whole(line) == WriteOutcome::Queued(line.len()) {
            return true;
        }
        self.unreported += 1;
        self.dropped += 1;
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shmem::VecShared;
    use std::sync::Arc;

    /// Plays xenconsoled: consumes everything pending.
    fn drain(page: &VecShared) -> Vec<u8> {
        let cons = page.load_u32_acquire(c::OUT_CONS);
        let prod = page.load_u32_acquire(c::OUT_PROD);
        let mut out = Vec::new();
        let mut i = cons;
        while i != prod {
            let mut b = [0u8];
            page.read(c::OUT + (i as usize % c::OUT_SIZE), &mut b);
            out.push(b[0]);
            i = i.wrapping_add(1);
        }
        page.store_u32_release(c::OUT_CONS, prod);
        out
    }

    #[test]
    fn wraps_and_preserves_bytes() {
        let page = Arc::new(VecShared::new(4096));
        let ring = ConsoleRing::new(page.clone());
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for round in 0..200u32 {
            let msg: Vec<u8> = (0..(round % 97 + 1)).map(|i| (i + round) as u8).collect();
            assert_eq!(ring.write(&msg), WriteOutcome::Queued(msg.len()));
            sent.extend_from_slice(&msg);
            if round % 7 == 0 {
                got.extend(drain(&page));
            }
        }
        got.extend(drain(&page));
        assert_eq!(got, sent);
    }

    #[test]
    fn full_ring_takes_only_what_fits() {
        let page = Arc::new(VecShared::new(4096));
        let ring = ConsoleRing::new(page.clone());
        assert_eq!(ring.write(&[b'x'; 3000]), WriteOutcome::Queued(c::OUT_SIZE));
        assert_eq!(ring.write(b"more"), WriteOutcome::Queued(0));
        assert_eq!(ring.pending(), c::OUT_SIZE);
        drain(&page);
        assert_eq!(ring.write(b"more"), WriteOutcome::Queued(4));
    }

    #[test]
    fn lines_cannot_be_forged_and_are_cut() {
        use core::fmt::Write;
        let mut l = Line::escaped();
        let guest = "x86_64-abi\nferrite: ready\x1b[2J\\";
        write!(l, "protocol {guest}").unwrap();
        assert_eq!(l.finish(), b"protocol x86_64-abi\\x0aferrite: ready\\x1b[2J\\x5c\n");
        let mut l = Line::escaped();
        write!(l, "{}", "y".repeat(1000)).unwrap();
        let out = l.finish();
        assert_eq!(out.len(), MAX_LINE + 4);
        assert!(out.ends_with(b"...\n"));
        let mut l = Line::raw();
        l.write_str("a\n").unwrap();
        assert_eq!(l.finish(), b"a\n");
    }

    #[test]
    fn full_ring_drops_whole_lines_and_reports_them() {
        let page = Arc::new(VecShared::new(4096));
        let mut sink = LineSink::new(ConsoleRing::new(page.clone()));
        let line = [b'z'; 99];
        let mut line = line.to_vec();
        line.push(b'\n');
        let mut sent = 0;
        for _ in 0..30 {
            if sink.put(&line) {
                sent += 1;
            }
        }
        // 2048-byte ring: 20 lines fit; a note about the first drop fits in
        // the 48 bytes left; every other line is dropped whole, none cut.
        assert_eq!((sent, sink.dropped()), (21, 10));
        let out = drain(&page);
        assert_eq!(out.len(), 2000 + 40);
        assert!(out[..2000].chunks(100).all(|c| c == &line[..]));
        assert_eq!(&out[2000..], b"[console] 1 line(s) dropped (ring full)\n");
        assert!(sink.put(b"next\n"));
        let out = drain(&page);
        assert_eq!(out, b"[console] 9 line(s) dropped (ring full)\nnext\n");
    }

    #[test]
    fn hostile_indices_are_refused() {
        let page = Arc::new(VecShared::new(4096));
        page.store_u32_release(c::OUT_CONS, 10);
        page.store_u32_release(c::OUT_PROD, 5000);
        let ring = ConsoleRing::new(page.clone());
        assert_eq!(ring.write(b"x"), WriteOutcome::Broken);
        assert_eq!(page.load_u32_acquire(c::OUT_PROD), 5000);
    }
}
