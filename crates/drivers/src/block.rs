//! The block device contract the blkback serves (split-phase, STYLE.md §6)
//! and [`RamDisk`], an in-memory implementation for tests.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::Error;
use crate::hal::{BusAddr, Nanos};

/// Identifies a submitted request; unique per device for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// One block request. Read/write transfer `buffer.len()` bytes, which must
/// be a non-zero multiple of the block size.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockRequest<B> {
    Read {
        lba: u64,
        buffer: B,
    },
    /// `fua`: the data is on stable media when the completion arrives.
    Write {
        lba: u64,
        buffer: B,
        fua: bool,
    },
    /// Zero-copy read: the device writes straight into memory the caller
    /// owns and keeps device-accessible until the completion (a guest's
    /// granted pages), named by bus address. Only for a device whose
    /// [`BlockDevice::scatter_gather`] is true; others refuse it with
    /// [`Error::NotSupported`] (and the caller copies instead).
    ReadSg {
        lba: u64,
        sg: Vec<SgEntry>,
    },
    /// Zero-copy write from such memory (see [`BlockRequest::ReadSg`]).
    WriteSg {
        lba: u64,
        sg: Vec<SgEntry>,
        fua: bool,
    },
    /// Makes every completed write stable.
    Flush,
    /// The blocks' contents become undefined (NVMe: DSM deallocate).
    Discard {
        lba: u64,
        blocks: u64,
    },
    /// The blocks read back as zeroes.
    WriteZeroes {
        lba: u64,
        blocks: u64,
    },
}

/// One piece of a zero-copy transfer: `len` bytes at bus address `bus`
/// (within one page; the caller keeps it mapped for the device until the
/// request's completion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    pub bus: BusAddr,
    pub len: u32,
}

/// Bytes a scatter list names (saturating: a bogus list cannot wrap).
pub fn sg_len(sg: &[SgEntry]) -> usize {
    sg.iter().fold(0usize, |a, e| a.saturating_add(e.len as usize))
}

impl<B> BlockRequest<B> {
    /// The data buffer, if the request has one.
    pub fn buffer(&self) -> Option<&B> {
        match self {
            BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => Some(buffer),
            _ => None,
        }
    }
    pub fn buffer_mut(&mut self) -> Option<&mut B> {
        match self {
            BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => Some(buffer),
            _ => None,
        }
    }
    pub fn into_buffer(self) -> Option<B> {
        match self {
            BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => Some(buffer),
            _ => None,
        }
    }
}

/// A finished request: its token, its outcome, and the request itself (so
/// the buffer comes back whatever happened).
#[derive(Debug, PartialEq, Eq)]
pub struct BlockCompletion<B> {
    pub token: Token,
    pub queue: u16,
    pub result: Result<(), Error>,
    pub request: BlockRequest<B>,
}

/// Optional operations a device supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features {
    /// The device has a volatile cache: flush and FUA matter.
    pub volatile_cache: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// A block device with `queue_count()` independent queues.
///
/// `submit` returning `Ok` promises exactly one completion from `poll` on
/// the same queue; `Err` hands the request (and its buffer) straight back.
/// Nothing is ever dropped: after a controller reset, in-flight requests
/// complete with [`Error::Reset`].
pub trait BlockDevice {
    type Buffer;
    /// Bytes per block.
    fn block_size(&self) -> u32;
    /// Number of blocks.
    fn capacity(&self) -> u64;
    fn queue_count(&self) -> u16;
    /// Largest read/write in bytes.
    fn max_transfer(&self) -> usize;
    fn features(&self) -> Features;
    fn submit(
        &mut self,
        queue: u16,
        request: BlockRequest<Self::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<Self::Buffer>)>;
    /// Next completion on `queue`, if any. `now` drives timeouts.
    fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<Self::Buffer>>;
    /// Whether [`BlockRequest::ReadSg`]/[`BlockRequest::WriteSg`] are
    /// served (the device reaches memory by the bus addresses given). The
    /// default: no; such requests are refused with [`Error::NotSupported`]
    /// and the caller keeps its copy path.
    fn scatter_gather(&self) -> bool {
        false
    }
    /// Whether a scatter list of this shape can be described to the
    /// device (alignment, count); the caller copies instead if not.
    fn accepts_sg(&self, _sg: &[SgEntry]) -> bool {
        false
    }
}

/// A device whose queues serve several independent address spaces (NVMe
/// namespaces). Volume 0..`volumes()`; each has its own block size and
/// capacity. A plain [`BlockDevice`] is one volume (the defaults).
pub trait Volumes: BlockDevice {
    /// How many volumes the device has.
    fn volumes(&self) -> usize {
        1
    }
    /// `(block size, blocks)` of volume `v`.
    fn volume_geometry(&self, v: usize) -> Option<(u32, u64)> {
        (v == 0).then(|| (self.block_size(), self.capacity()))
    }
    /// Submits `request` (LBAs in volume `v`'s blocks) on `queue`; its
    /// completion comes from [`BlockDevice::poll`] like any other.
    fn submit_to(
        &mut self,
        v: usize,
        queue: u16,
        request: BlockRequest<Self::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<Self::Buffer>)> {
        if v == 0 {
            self.submit(queue, request)
        } else {
            Err((Error::OutOfRange, request))
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Volumes for RamDisk<B> {}

/// Checks a read/write/discard range against a device: `Ok(blocks)`.
pub(crate) fn check_range(lba: u64, blocks: u64, capacity: u64) -> Result<u64, Error> {
    match lba.checked_add(blocks) {
        Some(end) if end <= capacity => Ok(blocks),
        _ => Err(Error::OutOfRange),
    }
}

/// A block device in memory. Requests take effect at `submit`; their
/// completions come out of `poll` in order, so callers exercise the
/// split-phase path. Each queue holds at most `depth` uncollected
/// completions.
pub struct RamDisk<B> {
    block_size: u32,
    data: Vec<u8>,
    depth: usize,
    queues: Vec<VecDeque<BlockCompletion<B>>>,
    next_token: u64,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> RamDisk<B> {
    pub fn new(block_size: u32, blocks: u64, queues: u16, depth: usize) -> Self {
        assert!(block_size.is_power_of_two() && block_size >= 512);
        let bytes =
            usize::try_from(blocks).ok().and_then(|b| b.checked_mul(block_size as usize)).expect("ramdisk size");
        RamDisk {
            block_size,
            data: vec![0; bytes],
            depth,
            queues: (0..queues.max(1)).map(|_| VecDeque::new()).collect(),
            next_token: 0,
        }
    }

    /// The disk's bytes (for tests).
    pub fn contents(&self) -> &[u8] {
        &self.data
    }

    fn span(&self, lba: u64, blocks: u64) -> Result<core::ops::Range<usize>, Error> {
        check_range(lba, blocks, self.capacity())?;
        let bs = self.block_size as usize;
        let start = lba as usize * bs;
        Ok(start..start + blocks as usize * bs)
    }

    fn buffer_blocks(&self, len: usize) -> Result<u64, Error> {
        if len == 0 || !len.is_multiple_of(self.block_size as usize) {
            return Err(Error::BadBuffer);
        }
        Ok((len / self.block_size as usize) as u64)
    }

    fn execute(&mut self, req: &mut BlockRequest<B>) -> Result<(), Error> {
        match req {
            BlockRequest::Read { lba, buffer } => {
                let n = self.buffer_blocks(buffer.as_ref().len())?;
                let r = self.span(*lba, n)?;
                buffer.as_mut().copy_from_slice(&self.data[r]);
            }
            BlockRequest::Write { lba, buffer, .. } => {
                let n = self.buffer_blocks(buffer.as_ref().len())?;
                let r = self.span(*lba, n)?;
                self.data[r].copy_from_slice(buffer.as_ref());
            }
            BlockRequest::Flush => {}
            BlockRequest::ReadSg { .. } | BlockRequest::WriteSg { .. } => return Err(Error::NotSupported),
            BlockRequest::Discard { lba, blocks } | BlockRequest::WriteZeroes { lba, blocks } => {
                if *blocks == 0 {
                    return Err(Error::BadBuffer);
                }
                let r = self.span(*lba, *blocks)?;
                self.data[r].fill(0);
            }
        }
        Ok(())
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> BlockDevice for RamDisk<B> {
    type Buffer = B;
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capacity(&self) -> u64 {
        (self.data.len() / self.block_size as usize) as u64
    }
    fn queue_count(&self) -> u16 {
        self.queues.len() as u16
    }
    fn max_transfer(&self) -> usize {
        self.data.len()
    }
    fn features(&self) -> Features {
        Features { volatile_cache: false, discard: true, write_zeroes: true }
    }
    fn submit(&mut self, queue: u16, mut request: BlockRequest<B>) -> Result<Token, (Error, BlockRequest<B>)> {
        let depth = self.depth;
        let Some(q) = self.queues.get(usize::from(queue)) else {
            return Err((Error::NoSuchQueue, request));
        };
        if q.len() >= depth {
            return Err((Error::QueueFull, request));
        }
        if let Err(e) = self.execute(&mut request) {
            return Err((e, request));
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        self.queues[usize::from(queue)].push_back(BlockCompletion { token, queue, result: Ok(()), request });
        Ok(token)
    }
    fn poll(&mut self, queue: u16, _now: Nanos) -> Option<BlockCompletion<B>> {
        self.queues.get_mut(usize::from(queue))?.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> RamDisk<Vec<u8>> {
        RamDisk::new(512, 64, 2, 4)
    }

    fn run(d: &mut RamDisk<Vec<u8>>, q: u16, req: BlockRequest<Vec<u8>>) -> BlockCompletion<Vec<u8>> {
        let t = d.submit(q, req).map_err(|(e, _)| e).unwrap();
        let c = d.poll(q, 0).unwrap();
        assert_eq!(c.token, t);
        c
    }

    #[test]
    fn write_then_read() {
        let mut d = disk();
        let data: Vec<u8> = (0..1024).map(|i| i as u8).collect();
        let c = run(&mut d, 0, BlockRequest::Write { lba: 3, buffer: data.clone(), fua: true });
        assert_eq!(c.result, Ok(()));
        let c = run(&mut d, 1, BlockRequest::Read { lba: 3, buffer: vec![0; 1024] });
        assert_eq!(c.request.into_buffer().unwrap(), data);
        assert!(d.poll(0, 0).is_none());
    }

    #[test]
    fn rejects_and_hands_back() {
        let mut d = disk();
        let (e, r) = d.submit(0, BlockRequest::Read { lba: 63, buffer: vec![0; 1024] }).unwrap_err();
        assert_eq!(e, Error::OutOfRange);
        assert_eq!(r.into_buffer().unwrap().len(), 1024);
        let (e, _) = d.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 100] }).unwrap_err();
        assert_eq!(e, Error::BadBuffer);
        let (e, _) = d.submit(5, BlockRequest::Flush).unwrap_err();
        assert_eq!(e, Error::NoSuchQueue);
        let (e, _) = d.submit(0, BlockRequest::Discard { lba: u64::MAX, blocks: 2 }).unwrap_err();
        assert_eq!(e, Error::OutOfRange);
    }

    #[test]
    fn queue_full_until_polled() {
        let mut d = disk();
        for _ in 0..4 {
            d.submit(0, BlockRequest::Flush).unwrap();
        }
        assert_eq!(d.submit(0, BlockRequest::Flush).unwrap_err().0, Error::QueueFull);
        assert!(d.submit(1, BlockRequest::Flush).is_ok(), "queues are independent");
        d.poll(0, 0).unwrap();
        assert!(d.submit(0, BlockRequest::Flush).is_ok());
    }

    #[test]
    fn discard_and_write_zeroes_clear() {
        let mut d = disk();
        run(&mut d, 0, BlockRequest::Write { lba: 0, buffer: vec![0xAA; 4096], fua: false });
        run(&mut d, 0, BlockRequest::Discard { lba: 1, blocks: 2 });
        run(&mut d, 0, BlockRequest::WriteZeroes { lba: 5, blocks: 1 });
        let c = run(&mut d, 0, BlockRequest::Read { lba: 0, buffer: vec![1; 4096] });
        let b = c.request.into_buffer().unwrap();
        assert!(b[..512].iter().all(|&x| x == 0xAA));
        assert!(b[512..1536].iter().all(|&x| x == 0));
        assert!(b[1536..2560].iter().all(|&x| x == 0xAA));
        assert!(b[2560..3072].iter().all(|&x| x == 0));
        assert!(b[3072..].iter().all(|&x| x == 0xAA));
    }
}
