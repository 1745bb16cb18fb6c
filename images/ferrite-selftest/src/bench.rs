//! Random-read benchmark on a `BlockDevice`: 4 KiB reads at random aligned
//! offsets, a fixed number of requests kept in flight on queue 0.

use alloc::vec::Vec;
use drivers::block::{BlockDevice, BlockRequest};
use drivers::Error;
use runtime::dev::DmaBuf;
use runtime::time::now;

/// One measured run.
pub struct Result {
    pub ios: u64,
    pub secs: f64,
    pub mean_lat_us: f64,
}

impl Result {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.secs
    }
}

/// Runs for `ns` nanoseconds after `warmup_ns` of warm-up (not counted).
pub fn randread<D: BlockDevice<Buffer = DmaBuf>>(
    dev: &mut D,
    qd: usize,
    warmup_ns: u64,
    ns: u64,
    seed: u64,
) -> core::result::Result<Result, Error> {
    let bs = dev.block_size() as u64;
    let per = (4096 / bs).max(1);
    let slots = dev.capacity() / per;
    let mut x = seed | 1;
    let mut next_lba = move || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % slots) * per
    };
    let mut free: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::zeroed(4096).expect("bench buffers")).collect();
    let mut started: alloc::collections::BTreeMap<u64, u64> = alloc::collections::BTreeMap::new();
    let t_start = now();
    let t_measure = t_start + warmup_ns;
    let t_end = t_measure + ns;
    let (mut ios, mut lat_sum) = (0u64, 0u64);
    loop {
        let t = now();
        if t >= t_end && started.is_empty() {
            break;
        }
        // Until the run ends, keep every free buffer in flight (up to the
        // device's queue limit). `t` is this iteration's time: the condition
        // is decided once, the inner loop ends when the buffers or the queue
        // run out.
        if t < t_end {
            while let Some(buf) = free.pop() {
                match dev.submit(0, BlockRequest::Read { lba: next_lba(), buffer: buf }) {
                    Ok(tok) => {
                        started.insert(tok.0, now());
                    }
                    Err((e, r)) => {
                        if let BlockRequest::Read { buffer, .. } = r {
                            free.push(buffer);
                        }
                        if e == Error::QueueFull {
                            break;
                        }
                        return Err(e);
                    }
                }
            }
        }
        while let Some(c) = dev.poll(0, now()) {
            c.result?;
            let done = now();
            if let Some(s) = started.remove(&c.token.0) {
                if s >= t_measure && done <= t_end {
                    ios += 1;
                    lat_sum += done - s;
                }
            }
            if let BlockRequest::Read { buffer, .. } = c.request {
                free.push(buffer);
            }
        }
    }
    Ok(Result {
        ios,
        secs: ns as f64 / 1e9,
        mean_lat_us: if ios > 0 { lat_sum as f64 / ios as f64 / 1000.0 } else { 0.0 },
    })
}
