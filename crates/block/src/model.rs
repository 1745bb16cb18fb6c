//! A disk with a volatile write cache, for power-cut tests.
//!
//! Requests queue at `submit` and the disk executes them in an order of its
//! choosing (a seeded shuffle, as an NVMe controller may): one per `poll`,
//! completed at once. A write lands in the cache (reads see it) unless it
//! carries FUA, which puts it on the media. A flush moves everything
//! executed before it to the media. [`CacheDisk::power_cut`] returns the
//! media after a cut in which each cached block independently did or did not
//! make it: exactly what a guest may find after a crash, no more.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, Token, Volumes};
use drivers::hal::Nanos;
use drivers::Error;

/// The disk model.
pub struct CacheDisk<B> {
    block_size: usize,
    media: Vec<u8>,
    /// Executed, not yet durable: block → contents.
    cache: BTreeMap<u64, Vec<u8>>,
    queued: VecDeque<(Token, u16, BlockRequest<B>)>,
    done: Vec<VecDeque<BlockCompletion<B>>>,
    next_token: u64,
    rng: u64,
    reorder: bool,
    /// Executed operations, in execution order (for tests' bookkeeping).
    pub executed: Vec<Token>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> CacheDisk<B> {
    /// A zeroed disk; `seed` drives the execution order when `reorder`.
    pub fn new(block_size: u32, blocks: u64, queues: u16, seed: u64, reorder: bool) -> Self {
        CacheDisk {
            block_size: block_size as usize,
            media: vec![0; block_size as usize * blocks as usize],
            cache: BTreeMap::new(),
            queued: VecDeque::new(),
            done: (0..queues.max(1)).map(|_| VecDeque::new()).collect(),
            next_token: 0,
            rng: seed | 1,
            reorder,
            executed: Vec::new(),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: deterministic per seed
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// What reads see now (media overlaid with the cache).
    pub fn contents(&self) -> Vec<u8> {
        let mut v = self.media.clone();
        for (lba, data) in &self.cache {
            let at = *lba as usize * self.block_size;
            v[at..at + self.block_size].copy_from_slice(data);
        }
        v
    }

    /// The media only: what survives if no cached block makes it.
    pub fn media(&self) -> &[u8] {
        &self.media
    }

    /// The media after a power cut in which cached block `lba` survives iff
    /// `keep(lba)`. Queued requests never executed are lost.
    pub fn power_cut(&self, mut keep: impl FnMut(u64) -> bool) -> Vec<u8> {
        let mut v = self.media.clone();
        for (lba, data) in &self.cache {
            if keep(*lba) {
                let at = *lba as usize * self.block_size;
                v[at..at + self.block_size].copy_from_slice(data);
            }
        }
        v
    }

    /// Requests queued and not executed yet.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    fn blocks(&self) -> u64 {
        (self.media.len() / self.block_size) as u64
    }

    fn check(&self, lba: u64, n: u64) -> Result<(), Error> {
        match lba.checked_add(n) {
            Some(end) if n > 0 && end <= self.blocks() => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }

    fn put(&mut self, lba: u64, data: &[u8], durable: bool) {
        for (i, chunk) in data.chunks(self.block_size).enumerate() {
            let b = lba + i as u64;
            if durable {
                self.cache.remove(&b);
                let at = b as usize * self.block_size;
                self.media[at..at + self.block_size].copy_from_slice(chunk);
            } else {
                self.cache.insert(b, chunk.to_vec());
            }
        }
    }

    fn execute(&mut self, r: &mut BlockRequest<B>) -> Result<(), Error> {
        let bs = self.block_size;
        match r {
            BlockRequest::Read { lba, buffer } => {
                let n = (buffer.as_ref().len() / bs) as u64;
                self.check(*lba, n)?;
                let all = self.contents();
                let at = *lba as usize * bs;
                let len = buffer.as_ref().len();
                buffer.as_mut().copy_from_slice(&all[at..at + len]);
            }
            BlockRequest::Write { lba, buffer, fua } => {
                let n = (buffer.as_ref().len() / bs) as u64;
                self.check(*lba, n)?;
                let data = buffer.as_ref().to_vec();
                self.put(*lba, &data, *fua);
            }
            BlockRequest::Flush => {
                let cache = core::mem::take(&mut self.cache);
                for (lba, data) in cache {
                    let at = lba as usize * bs;
                    self.media[at..at + bs].copy_from_slice(&data);
                }
            }
            BlockRequest::Discard { lba, blocks } | BlockRequest::WriteZeroes { lba, blocks } => {
                self.check(*lba, *blocks)?;
                let zeros = vec![0u8; *blocks as usize * bs];
                self.put(*lba, &zeros, false);
            }
            BlockRequest::ReadSg { .. } | BlockRequest::WriteSg { .. } => return Err(Error::NotSupported),
        }
        Ok(())
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> BlockDevice for CacheDisk<B> {
    type Buffer = B;

    fn block_size(&self) -> u32 {
        self.block_size as u32
    }

    fn capacity(&self) -> u64 {
        self.blocks()
    }

    fn queue_count(&self) -> u16 {
        self.done.len() as u16
    }

    fn max_transfer(&self) -> usize {
        128 * 1024
    }

    fn features(&self) -> Features {
        Features { volatile_cache: true, discard: true, write_zeroes: true }
    }

    fn submit(&mut self, queue: u16, r: BlockRequest<B>) -> Result<Token, (Error, BlockRequest<B>)> {
        if usize::from(queue) >= self.done.len() {
            return Err((Error::NoSuchQueue, r));
        }
        if let Some(b) = r.buffer() {
            let len = b.as_ref().len();
            if len == 0 || !len.is_multiple_of(self.block_size) || len > self.max_transfer() {
                return Err((Error::BadBuffer, r));
            }
        }
        let t = Token(self.next_token);
        self.next_token += 1;
        self.queued.push_back((t, queue, r));
        Ok(t)
    }

    fn poll(&mut self, queue: u16, _now: Nanos) -> Option<BlockCompletion<B>> {
        // Execute one queued request (any queue), in the disk's own order.
        if !self.queued.is_empty() {
            let i = if self.reorder { (self.next_random() % self.queued.len() as u64) as usize } else { 0 };
            if let Some((token, q, mut request)) = self.queued.remove(i) {
                let result = self.execute(&mut request);
                self.executed.push(token);
                self.done[usize::from(q)].push_back(BlockCompletion { token, queue: q, result, request });
            }
        }
        self.done.get_mut(usize::from(queue))?.pop_front()
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Volumes for CacheDisk<B> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut CacheDisk<Vec<u8>>) -> Vec<BlockCompletion<Vec<u8>>> {
        let mut out = Vec::new();
        for _ in 0..100 {
            if let Some(c) = d.poll(0, 0) {
                out.push(c);
            } else if d.queued() == 0 {
                break;
            }
        }
        out
    }

    #[test]
    fn unflushed_writes_may_vanish_flushed_and_fua_ones_stay() {
        let mut d = CacheDisk::new(512, 8, 1, 1, false);
        d.submit(0, BlockRequest::Write { lba: 0, buffer: vec![1; 512], fua: false }).unwrap();
        d.submit(0, BlockRequest::Flush).unwrap();
        d.submit(0, BlockRequest::Write { lba: 1, buffer: vec![2; 512], fua: false }).unwrap();
        d.submit(0, BlockRequest::Write { lba: 2, buffer: vec![3; 512], fua: true }).unwrap();
        assert_eq!(drain(&mut d).len(), 4);
        assert_eq!(d.contents()[512], 2, "reads see the cache");
        let lost = d.power_cut(|_| false);
        assert_eq!((lost[0], lost[512], lost[1024]), (1, 0, 3));
        let kept = d.power_cut(|_| true);
        assert_eq!(kept[512], 2);
    }

    #[test]
    fn fua_supersedes_an_older_cached_copy() {
        let mut d = CacheDisk::new(512, 8, 1, 1, false);
        d.submit(0, BlockRequest::Write { lba: 3, buffer: vec![1; 512], fua: false }).unwrap();
        d.submit(0, BlockRequest::Write { lba: 3, buffer: vec![9; 512], fua: true }).unwrap();
        drain(&mut d);
        assert_eq!(d.power_cut(|_| true)[3 * 512], 9);
    }

    #[test]
    fn reordering_executes_everything_once() {
        let mut d = CacheDisk::new(512, 64, 1, 7, true);
        let tokens: Vec<Token> = (0..20)
            .map(|i| d.submit(0, BlockRequest::Write { lba: i, buffer: vec![i as u8; 512], fua: false }).unwrap())
            .collect();
        let done = drain(&mut d);
        assert_eq!(done.len(), 20);
        let mut order: Vec<Token> = d.executed.clone();
        assert_ne!(order, tokens, "seed 7 reorders");
        order.sort();
        assert_eq!(order, tokens);
        assert!((0..20).all(|i| d.contents()[i * 512] == i as u8));
    }
}
