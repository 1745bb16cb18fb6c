//! A data-integrity self-test for any `BlockDevice`: writes a pattern
//! across every queue with many requests in flight (so each queue wraps
//! several times), flushes, reads it back and compares, then checks discard
//! and write-zeroes where the device has them.
//!
//! The pattern is a pure function of the absolute byte offset, so a host
//! script can check the disk image after the run (data reached the disk).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::block::{BlockCompletion, BlockDevice, BlockRequest};
use drivers::Error;
use log::info;
use runtime::dev::DmaBuf;

/// 32-bit word at absolute disk byte offset `off` (a multiple of 4).
pub fn pattern_word(off: u64) -> u32 {
    ((off / 4) as u32).wrapping_mul(2_654_435_761) ^ 0x5EED_5EED
}

/// Fills `buf` with the pattern for disk byte offset `base`.
pub fn fill(buf: &mut [u8], base: u64) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&pattern_word(base + 4 * i as u64).to_le_bytes());
    }
}

/// First mismatching byte offset in `buf` against the pattern at `base`.
pub fn first_mismatch(buf: &[u8], base: u64) -> Option<u64> {
    buf.chunks_exact(4)
        .enumerate()
        .find(|(i, w)| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) != pattern_word(base + 4 * *i as u64))
        .map(|(i, _)| base + 4 * i as u64)
}

/// Runs `reqs` (queue, request) keeping as many in flight as the device
/// takes; returns the completions. Bounded by `deadline_ns`.
pub fn run_batch<D: BlockDevice<Buffer = DmaBuf>>(
    dev: &mut D,
    reqs: Vec<(u16, BlockRequest<DmaBuf>)>,
    deadline_ns: u64,
) -> Result<Vec<BlockCompletion<DmaBuf>>, String> {
    let nq = dev.queue_count().max(1) as usize;
    let total = reqs.len();
    let mut pending: Vec<VecDeque<BlockRequest<DmaBuf>>> = (0..nq).map(|_| VecDeque::new()).collect();
    for (q, r) in reqs {
        pending[q as usize % nq].push_back(r);
    }
    let mut in_flight = 0usize;
    let mut done = Vec::with_capacity(total);
    let mut max_in_flight = 0usize;
    while done.len() < total {
        for (q, p) in pending.iter_mut().enumerate() {
            while let Some(r) = p.pop_front() {
                match dev.submit(q as u16, r) {
                    Ok(_) => in_flight += 1,
                    Err((Error::QueueFull, r)) => {
                        p.push_front(r);
                        break;
                    }
                    Err((e, _)) => return Err(format!("submit on queue {q}: {e:?}")),
                }
            }
        }
        max_in_flight = max_in_flight.max(in_flight);
        let now = runtime::time::now();
        for q in 0..nq {
            while let Some(c) = dev.poll(q as u16, now) {
                in_flight -= 1;
                done.push(c);
            }
        }
        if now > deadline_ns {
            return Err(format!("timed out with {in_flight} requests in flight, {} of {total} done", done.len()));
        }
    }
    info!("  batch of {total} requests: up to {max_in_flight} in flight");
    Ok(done)
}

/// What the test wrote, for the host-side check.
pub struct Report {
    pub bytes_written: u64,
}

/// The whole self-test. `chunk` bytes per request, `count` requests.
pub fn run<D: BlockDevice<Buffer = DmaBuf>>(dev: &mut D, chunk: usize, count: usize) -> Result<Report, String> {
    let bs = dev.block_size() as u64;
    let cap = dev.capacity();
    let total = (chunk * count) as u64;
    if total / bs * 2 + 4096 > cap {
        return Err(format!("disk too small: {cap} blocks of {bs}"));
    }
    let deadline = runtime::time::now() + 120_000_000_000;
    let nq = dev.queue_count();
    info!("disk test: {count} writes of {chunk} bytes over {nq} queue(s), block size {bs}, {cap} blocks");

    // Write the pattern.
    let mut reqs = Vec::with_capacity(count);
    for i in 0..count {
        let off = (i * chunk) as u64;
        let mut buf = DmaBuf::zeroed(chunk).ok_or("out of memory for buffers")?;
        fill(buf.as_mut(), off);
        reqs.push(((i % nq as usize) as u16, BlockRequest::Write { lba: off / bs, buffer: buf, fua: i == count - 1 }));
    }
    for c in run_batch(dev, reqs, deadline)? {
        c.result.map_err(|e| format!("write failed: {e:?}"))?;
    }
    // Flush every queue.
    let flushes = (0..nq).map(|q| (q, BlockRequest::Flush)).collect();
    for c in run_batch(dev, flushes, deadline)? {
        c.result.map_err(|e| format!("flush failed: {e:?}"))?;
    }
    info!("  wrote {} KiB and flushed", total / 1024);

    // Read it back, on different queues than it was written from.
    let mut reqs = Vec::with_capacity(count);
    for i in 0..count {
        let off = (i * chunk) as u64;
        let buf = DmaBuf::zeroed(chunk).ok_or("out of memory for buffers")?;
        reqs.push((((i + 1) % nq as usize) as u16, BlockRequest::Read { lba: off / bs, buffer: buf }));
    }
    for c in run_batch(dev, reqs, deadline)? {
        c.result.map_err(|e| format!("read failed: {e:?}"))?;
        if let BlockRequest::Read { lba, buffer } = &c.request {
            if let Some(bad) = first_mismatch(buffer.as_ref(), lba * bs) {
                return Err(format!("read-back mismatch at disk byte {bad}"));
            }
        }
    }
    info!("  read back {} KiB: pattern matches", total / 1024);

    // Discard and write-zeroes, past the pattern area.
    let feats = dev.features();
    let scratch = total / bs + 64;
    if feats.write_zeroes {
        let mut buf = DmaBuf::zeroed(4096).ok_or("oom")?;
        fill(buf.as_mut(), 0);
        for c in
            run_batch(dev, alloc::vec![(0, BlockRequest::Write { lba: scratch, buffer: buf, fua: false })], deadline)?
        {
            c.result.map_err(|e| format!("write before write-zeroes: {e:?}"))?;
        }
        for c in
            run_batch(dev, alloc::vec![(0, BlockRequest::WriteZeroes { lba: scratch, blocks: 4096 / bs })], deadline)?
        {
            c.result.map_err(|e| format!("write-zeroes failed: {e:?}"))?;
        }
        let buf = DmaBuf::zeroed(4096).ok_or("oom")?;
        for c in run_batch(dev, alloc::vec![(0, BlockRequest::Read { lba: scratch, buffer: buf })], deadline)? {
            c.result.map_err(|e| format!("read after write-zeroes: {e:?}"))?;
            if let BlockRequest::Read { buffer, .. } = &c.request {
                if buffer.as_ref().iter().any(|&b| b != 0) {
                    return Err(String::from("write-zeroes left non-zero data"));
                }
            }
        }
        info!("  write-zeroes: ok");
    } else {
        info!("  write-zeroes: not supported by the device, skipped");
    }
    if feats.discard {
        for c in run_batch(dev, alloc::vec![(0, BlockRequest::Discard { lba: scratch + 64, blocks: 256 })], deadline)? {
            c.result.map_err(|e| format!("discard failed: {e:?}"))?;
        }
        info!("  discard of 256 blocks: ok");
    } else {
        info!("  discard: not supported by the device, skipped");
    }
    // Out-of-range requests are refused, not sent.
    let buf = DmaBuf::zeroed(4096).ok_or("oom")?;
    match dev.submit(0, BlockRequest::Read { lba: cap, buffer: buf }) {
        Err((Error::OutOfRange, _)) => info!("  read past the end: refused (OutOfRange)"),
        Err((e, _)) => return Err(format!("read past the end gave {e:?}")),
        Ok(_) => return Err(String::from("read past the end was accepted")),
    }
    Ok(Report { bytes_written: total })
}
