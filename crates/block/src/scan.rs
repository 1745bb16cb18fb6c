//! Reading a namespace's GPT at boot: read-only, bounded, synchronous.
//!
//! The product's only boot-time disk access: LBA 0, LBA 1 and the entry
//! array, through the device's own queues. Nothing is written.

use alloc::vec;
use alloc::vec::Vec;

use drivers::block::{BlockRequest, Volumes};
use drivers::hal::Nanos;

use crate::gpt::{self, GptError, Partition};

/// Why the partitions of a namespace could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// The device refused or failed a read.
    Io(drivers::Error),
    /// No completion within the deadline.
    Timeout,
    /// The label is not a GPT we accept (see [`GptError`]).
    Gpt(GptError),
    /// The volume does not exist.
    NoVolume,
}

impl core::fmt::Display for ScanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "read failed: {e}"),
            ScanError::Timeout => f.write_str("read timed out"),
            ScanError::Gpt(e) => write!(f, "{e}"),
            ScanError::NoVolume => f.write_str("no such namespace"),
        }
    }
}

/// Reads `blocks` blocks at `lba` of volume `v` on queue 0, polling until
/// `deadline` by `now()`. `make` builds a zeroed buffer of a byte length.
pub fn read_blocks<D: Volumes>(
    dev: &mut D,
    v: usize,
    lba: u64,
    blocks: u64,
    make: &mut impl FnMut(usize) -> Option<D::Buffer>,
    now: &impl Fn() -> Nanos,
    deadline: Nanos,
) -> Result<Vec<u8>, ScanError>
where
    D::Buffer: AsRef<[u8]>,
{
    let (bs, _) = dev.volume_geometry(v).ok_or(ScanError::NoVolume)?;
    let len = usize::try_from(blocks).ok().and_then(|b| b.checked_mul(bs as usize)).ok_or(ScanError::NoVolume)?;
    let buffer = make(len).ok_or(ScanError::Io(drivers::Error::Dma(drivers::DmaError::NoMemory)))?;
    let token = dev.submit_to(v, 0, BlockRequest::Read { lba, buffer }).map_err(|(e, _)| ScanError::Io(e))?;
    // Bounded: by the deadline and by a poll count (a clock that stands still).
    for _ in 0..50_000_000u64 {
        let t = now();
        if let Some(c) = dev.poll(0, t) {
            if c.token != token {
                continue; // not ours (nothing else runs at boot)
            }
            c.result.map_err(ScanError::Io)?;
            return Ok(c.request.buffer().map(|b| b.as_ref().to_vec()).unwrap_or_default());
        }
        if t > deadline {
            break;
        }
    }
    Err(ScanError::Timeout)
}

/// The GPT partitions of volume `v`: `Ok(vec![])` for an unpartitioned
/// namespace; an error for an unreadable or corrupt label (then serve the
/// namespace whole and offer no partition).
pub fn partitions<D: Volumes>(
    dev: &mut D,
    v: usize,
    mut make: impl FnMut(usize) -> Option<D::Buffer>,
    now: impl Fn() -> Nanos,
    timeout: Nanos,
) -> Result<Vec<Partition>, ScanError>
where
    D::Buffer: AsRef<[u8]>,
{
    let (bs, blocks) = dev.volume_geometry(v).ok_or(ScanError::NoVolume)?;
    if blocks < 3 {
        return Ok(vec![]);
    }
    let deadline = now().saturating_add(timeout);
    let head = read_blocks(dev, v, 0, 2, &mut make, &now, deadline)?;
    let (lba0, lba1) = head.split_at(bs as usize);
    let Some(h) = gpt::parse_header(lba0, lba1, blocks).map_err(ScanError::Gpt)? else {
        return Ok(vec![]);
    };
    let array = read_blocks(dev, v, h.entries_lba, h.entries_blocks(bs), &mut make, &now, deadline)?;
    gpt::parse_entries(&h, &array).map_err(ScanError::Gpt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::Guid;
    use drivers::block::{BlockDevice, RamDisk};

    fn disk_with(img: &[u8], bs: u32, blocks: u64) -> RamDisk<Vec<u8>> {
        let mut d = RamDisk::new(bs, blocks, 1, 4);
        let mut buf = img.to_vec();
        buf.resize(img.len().div_ceil(bs as usize) * bs as usize, 0);
        d.submit(0, BlockRequest::Write { lba: 0, buffer: buf, fua: true }).map_err(|(e, _)| e).unwrap();
        d.poll(0, 0).unwrap();
        d
    }

    #[test]
    fn reads_partitions_of_512_and_4096_disks_without_writing() {
        for bs in [512u32, 4096] {
            let blocks = (4 << 20) / u64::from(bs);
            let first = if bs == 512 { 34 } else { 6 };
            let img = gpt::build(bs, blocks, &[("x", Guid([7; 16]), first, first + 9)]);
            let mut d = disk_with(&img, bs, blocks);
            let before = d.contents().to_vec();
            let p = partitions(&mut d, 0, |n| Some(vec![0; n]), || 0, 1_000).unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!((p[0].first_lba, p[0].blocks(), p[0].name.as_str()), (first, 10, "x"));
            assert_eq!(d.contents(), &before[..], "nothing written");
        }
    }

    #[test]
    fn blank_disk_has_no_partitions_and_corrupt_label_is_an_error() {
        let mut d = RamDisk::<Vec<u8>>::new(512, 1000, 1, 4);
        assert_eq!(partitions(&mut d, 0, |n| Some(vec![0; n]), || 0, 1_000), Ok(vec![]));
        let mut img = gpt::build(512, 1000, &[("x", Guid([7; 16]), 40, 49)]);
        img[512 + 40] ^= 0xFF;
        let mut d = disk_with(&img, 512, 1000);
        assert_eq!(partitions(&mut d, 0, |n| Some(vec![0; n]), || 0, 1_000), Err(ScanError::Gpt(GptError::HeaderCrc)));
        assert_eq!(partitions(&mut d, 3, |n| Some(vec![0; n]), || 0, 1_000), Err(ScanError::NoVolume));
    }
}
