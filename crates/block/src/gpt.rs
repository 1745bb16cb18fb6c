//! GPT partition tables (UEFI spec 2.10, §5.3), read-only and hostile-safe.
//!
//! A disk's bytes are not trusted: every field is checked (signatures,
//! CRC32s, sizes, LBA ranges inside the usable area, no overlaps) and a table
//! that fails any check yields an error, never a panic; the namespace is then
//! served whole and none of its partitions is offered.
//!
//! Layouts (little endian), byte offsets:
//! - LBA 0, protective MBR: `0x55 0xAA` at 510; one of the four partition
//!   records at 446 + 16·i has type `0xEE` at +4.
//! - LBA 1, header (92 bytes used): 0 signature `EFI PART`, 8 revision,
//!   12 header size, 16 header CRC32 (computed with this field zero),
//!   24 my LBA, 32 alternate LBA, 40 first usable LBA, 48 last usable LBA,
//!   56 disk GUID, 72 entry array LBA, 80 number of entries, 84 entry size,
//!   88 entry array CRC32.
//! - Entry: 0 type GUID (all zero: unused), 16 unique GUID, 32 first LBA,
//!   40 last LBA (inclusive), 48 attributes, 56 name (36 UTF-16LE units).
//!
//! Partitions are numbered like Linux does: entry `i` is partition `i + 1`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// UTF-16 units in a partition name.
pub const NAME_UNITS: usize = 36;
/// The most entries a table may declare that we read.
pub const MAX_ENTRIES: u32 = 1024;
/// The largest entry size we accept (the spec allows 128·2ⁿ).
pub const MAX_ENTRY_SIZE: u32 = 1024;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE_MIN: u32 = 92;

/// A GUID as stored on disk (the first three fields little endian).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// True for the all-zero GUID (an unused entry's type).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case).
    pub fn parse(s: &str) -> Option<Guid> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let mut hex = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if b[i] == b'-' {
                i += 1;
                continue;
            }
            let hi = (b[i] as char).to_digit(16)?;
            let lo = (b[i + 1] as char).to_digit(16)?;
            hex[n] = (hi << 4 | lo) as u8;
            n += 1;
            i += 2;
        }
        let mut g = hex;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Some(Guid(g))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a table was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptError {
    /// A block shorter than 512 bytes, or an LBA size that is not a power of two ≥ 512.
    BadBlock,
    /// LBA 1 has no `EFI PART` signature or LBA 0 no protective MBR.
    NotGpt,
    BadHeaderSize,
    HeaderCrc,
    /// My-LBA, usable range or entry array outside the disk or overlapping the header.
    BadGeometry,
    /// Entry count or size out of bounds.
    BadEntryArray,
    EntriesCrc,
    /// A partition outside the usable range, empty, or overlapping another.
    BadPartition {
        number: u32,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::BadBlock => f.write_str("unreadable label blocks"),
            GptError::NotGpt => f.write_str("no GPT"),
            GptError::BadHeaderSize => f.write_str("GPT header size out of range"),
            GptError::HeaderCrc => f.write_str("GPT header CRC mismatch"),
            GptError::BadGeometry => f.write_str("GPT header geometry outside the disk"),
            GptError::BadEntryArray => f.write_str("GPT entry array size out of bounds"),
            GptError::EntriesCrc => f.write_str("GPT entry array CRC mismatch"),
            GptError::BadPartition { number } => {
                write!(f, "GPT partition {number} is outside the usable area or overlaps")
            }
        }
    }
}

/// The fields of a checked header that locate the entry array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub first_usable: u64,
    pub last_usable: u64,
    pub entries_lba: u64,
    pub entries: u32,
    pub entry_size: u32,
    entries_crc: u32,
}

impl Header {
    /// Bytes of the entry array.
    pub fn entries_bytes(&self) -> usize {
        self.entries as usize * self.entry_size as usize
    }

    /// Blocks to read from [`Header::entries_lba`] to hold the array.
    pub fn entries_blocks(&self, lba_size: u32) -> u64 {
        (self.entries_bytes() as u64).div_ceil(u64::from(lba_size))
    }
}

/// One used partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (`nvme0n1p<number>`).
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub type_guid: Guid,
    pub guid: Guid,
    /// The name, invalid UTF-16 replaced.
    pub name: String,
}

impl Partition {
    /// Length in blocks.
    pub fn blocks(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

/// CRC-32 (IEEE 802.3, reflected, as UEFI uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Checks LBA 0 (protective MBR) and LBA 1 (header) of a disk of
/// `disk_blocks` blocks of `block.len()` bytes. `Ok(None)`: the disk has no
/// GPT (no protective MBR and no signature): it is simply unpartitioned.
pub fn parse_header(lba0: &[u8], lba1: &[u8], disk_blocks: u64) -> Result<Option<Header>, GptError> {
    let lba_size = lba1.len();
    if lba0.len() != lba_size || lba_size < 512 || !lba_size.is_power_of_two() {
        return Err(GptError::BadBlock);
    }
    let protective = lba0[510] == 0x55 && lba0[511] == 0xAA && (0..4).any(|i| lba0[446 + 16 * i + 4] == 0xEE);
    let signed = &lba1[..8] == SIGNATURE;
    match (protective, signed) {
        (false, false) => return Ok(None),
        (true, true) => {}
        _ => return Err(GptError::NotGpt),
    }
    let size = u32_at(lba1, 12);
    if size < HEADER_SIZE_MIN || size as usize > lba_size {
        return Err(GptError::BadHeaderSize);
    }
    let mut copy: Vec<u8> = lba1[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != u32_at(lba1, 16) {
        return Err(GptError::HeaderCrc);
    }
    let h = Header {
        first_usable: u64_at(lba1, 40),
        last_usable: u64_at(lba1, 48),
        entries_lba: u64_at(lba1, 72),
        entries: u32_at(lba1, 80),
        entry_size: u32_at(lba1, 84),
        entries_crc: u32_at(lba1, 88),
    };
    if h.entries > MAX_ENTRIES || h.entry_size < 128 || h.entry_size > MAX_ENTRY_SIZE || !h.entry_size.is_power_of_two()
    {
        return Err(GptError::BadEntryArray);
    }
    let array_end = h.entries_lba.checked_add(h.entries_blocks(lba_size as u32));
    let geometry_ok = u64_at(lba1, 24) == 1
        && h.first_usable >= 2
        && h.first_usable <= h.last_usable
        && h.last_usable < disk_blocks
        && h.entries_lba >= 2
        && array_end.is_some_and(|end| end <= disk_blocks)
        // the array lies before or after the usable area, never inside it
        && array_end.is_some_and(|end| end <= h.first_usable || h.entries_lba > h.last_usable);
    if !geometry_ok {
        return Err(GptError::BadGeometry);
    }
    Ok(Some(h))
}

/// Checks the entry array (`bytes` as read from [`Header::entries_lba`], at
/// least [`Header::entries_bytes`] long) and returns the used partitions in
/// entry order.
pub fn parse_entries(h: &Header, bytes: &[u8]) -> Result<Vec<Partition>, GptError> {
    let len = h.entries_bytes();
    let Some(array) = bytes.get(..len) else { return Err(GptError::BadEntryArray) };
    if crc32(array) != h.entries_crc {
        return Err(GptError::EntriesCrc);
    }
    let mut parts: Vec<Partition> = Vec::new();
    for (i, e) in array.chunks_exact(h.entry_size as usize).enumerate() {
        let mut type_guid = Guid::default();
        type_guid.0.copy_from_slice(&e[0..16]);
        if type_guid.is_zero() {
            continue;
        }
        let number = i as u32 + 1;
        let mut guid = Guid::default();
        guid.0.copy_from_slice(&e[16..32]);
        let (first_lba, last_lba) = (u64_at(e, 32), u64_at(e, 40));
        if first_lba > last_lba || first_lba < h.first_usable || last_lba > h.last_usable {
            return Err(GptError::BadPartition { number });
        }
        if parts.iter().any(|p| first_lba <= p.last_lba && p.first_lba <= last_lba) {
            return Err(GptError::BadPartition { number });
        }
        let units = (0..NAME_UNITS).map(|k| u16::from_le_bytes([e[56 + 2 * k], e[57 + 2 * k]])).take_while(|&u| u != 0);
        let name = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        parts.push(Partition { number, first_lba, last_lba, type_guid, guid, name });
    }
    Ok(parts)
}

/// Writes a GPT (protective MBR, primary header, entry array of 128
/// entries) for `parts` = (name, unique GUID, first LBA, last LBA) onto a
/// disk image of `disk_blocks` blocks of `lba_size` bytes. For tests and
/// tools; the backup table is not written.
pub fn build(lba_size: u32, disk_blocks: u64, parts: &[(&str, Guid, u64, u64)]) -> Vec<u8> {
    let bs = lba_size as usize;
    let entries = 128u32;
    let entry_size = 128u32;
    let array_blocks = (entries * entry_size).div_ceil(lba_size) as u64;
    let first_usable = 2 + array_blocks;
    let mut img = alloc::vec![0u8; bs * (2 + array_blocks as usize)];
    // protective MBR: one record of type 0xEE covering the disk
    img[446 + 4] = 0xEE;
    img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    img[446 + 12..446 + 16]
        .copy_from_slice(&(disk_blocks.min(u64::from(u32::MAX)) as u32).saturating_sub(1).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    let mut array = alloc::vec![0u8; (entries * entry_size) as usize];
    // "Linux filesystem data" type GUID
    let linux = Guid::parse("0fc63daf-8483-4772-8e79-3d69d8477de4").unwrap_or_default();
    for (i, (name, guid, first, last)) in parts.iter().enumerate() {
        let e = &mut array[i * entry_size as usize..(i + 1) * entry_size as usize];
        e[0..16].copy_from_slice(&linux.0);
        e[16..32].copy_from_slice(&guid.0);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (k, u) in name.encode_utf16().take(NAME_UNITS).enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
        }
    }
    let h = &mut img[bs..bs + 92];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(disk_blocks - 1).to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&(disk_blocks - 1 - array_blocks - 1).to_le_bytes());
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&entries.to_le_bytes());
    h[84..88].copy_from_slice(&entry_size.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
    let crc = crc32(h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    img[2 * bs..].copy_from_slice(&array);
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guid(n: u8) -> Guid {
        Guid([n; 16])
    }

    fn read_all(img: &[u8], bs: usize, disk_blocks: u64) -> Result<Option<Vec<Partition>>, GptError> {
        let Some(h) = parse_header(&img[..bs], &img[bs..2 * bs], disk_blocks)? else { return Ok(None) };
        let start = h.entries_lba as usize * bs;
        let end = start + h.entries_blocks(bs as u32) as usize * bs;
        parse_entries(&h, img.get(start..end).ok_or(GptError::BadEntryArray)?).map(Some)
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guid_text_is_mixed_endian() {
        let g = Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4").unwrap();
        assert_eq!(
            g.0,
            [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4]
        );
        assert_eq!(alloc::format!("{g}"), "0fc63daf-8483-4772-8e79-3d69d8477de4");
        assert!(Guid::parse("0fc63daf-8483-4772-8e79-3d69d8477de").is_none());
        assert!(Guid::parse("0fc63daf+8483-4772-8e79-3d69d8477de4").is_none());
        assert!(Guid::parse("0fc63daf-8483-4772-8e79-3d69d8477dg4").is_none());
    }

    #[test]
    fn round_trip_512_and_4096() {
        for bs in [512u32, 4096] {
            let blocks = (8 << 20) / u64::from(bs);
            let a = (34u64 * 512).div_ceil(u64::from(bs)).max(6);
            let img = build(bs, blocks, &[("guest-a", guid(1), a, a + 99), ("guest-b", guid(2), a + 100, a + 149)]);
            let parts = read_all(&img, bs as usize, blocks).unwrap().unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(
                (parts[0].number, parts[0].first_lba, parts[0].blocks(), parts[0].name.as_str()),
                (1, a, 100, "guest-a")
            );
            assert_eq!((parts[1].number, parts[1].guid, parts[1].name.as_str()), (2, guid(2), "guest-b"));
        }
    }

    #[test]
    fn unpartitioned_disk_is_not_an_error() {
        let img = alloc::vec![0u8; 1024];
        assert_eq!(read_all(&img, 512, 100), Ok(None));
    }

    #[test]
    fn corruption_is_refused() {
        let img = build(512, 1000, &[("a", guid(1), 40, 99)]);
        let mut bad = img.clone();
        bad[512 + 40] ^= 1; // first usable LBA, header CRC no longer matches
        assert_eq!(read_all(&bad, 512, 1000), Err(GptError::HeaderCrc));
        let mut bad = img.clone();
        bad[1024 + 32] ^= 1; // partition start, entry CRC no longer matches
        assert_eq!(read_all(&bad, 512, 1000), Err(GptError::EntriesCrc));
        let mut bad = img.clone();
        bad[510] = 0; // signature without protective MBR
        assert_eq!(read_all(&bad, 512, 1000), Err(GptError::NotGpt));
        // the header claims a larger disk than there is
        assert_eq!(read_all(&img, 512, 500), Err(GptError::BadGeometry));
    }

    #[test]
    fn overlap_and_out_of_range_partitions_are_refused() {
        let img = build(512, 1000, &[("a", guid(1), 40, 99), ("b", guid(2), 99, 120)]);
        assert_eq!(read_all(&img, 512, 1000), Err(GptError::BadPartition { number: 2 }));
        let img = build(512, 1000, &[("a", guid(1), 40, 999)]);
        assert_eq!(read_all(&img, 512, 1000), Err(GptError::BadPartition { number: 1 }));
        let img = build(512, 1000, &[("a", guid(1), 60, 50)]);
        assert_eq!(read_all(&img, 512, 1000), Err(GptError::BadPartition { number: 1 }));
    }

    proptest! {
        /// Any bytes in the label blocks: an answer, never a panic, and any
        /// accepted partition lies inside the disk.
        #[test]
        fn hostile_labels(flips in proptest::collection::vec((0usize..3 * 512 + 16 * 1024, any::<u8>()), 0..40), blocks in 1u64..4000) {
            let mut img = build(512, 2000, &[("a", guid(1), 40, 99), ("b", guid(2), 100, 1900)]);
            img.resize(img.len().max(512 * 40), 0);
            for (at, v) in flips {
                if let Some(b) = img.get_mut(at) { *b = v; }
            }
            if let Ok(Some(parts)) = read_all(&img, 512, blocks) {
                for p in parts {
                    prop_assert!(p.first_lba <= p.last_lba && p.last_lba < blocks);
                }
            }
        }
    }
}
