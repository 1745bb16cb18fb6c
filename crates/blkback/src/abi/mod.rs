//! blkif wire layouts for the x86_64 and x86_32 ABIs.
//!
//! Sources: Xen `xen/include/public/io/blkif.h` (field order, constants) and
//! Linux `drivers/block/xen-blkback/common.h` (the two x86 ABIs spelled out
//! as packed structs). The difference between the ABIs is alignment of
//! `uint64_t`: 8 on x86_64, 4 on i386. So on x86_64 a 4-byte hole follows
//! `handle` and `id` sits at offset 8; on x86_32 `id` sits at offset 4 and
//! everything after it moves up by 4.
//!
//! | struct (bytes)            | x86_64 | x86_32 |
//! |---------------------------|--------|--------|
//! | `blkif_request_segment`   | 8      | 8      |
//! | `blkif_request`           | 112    | 108    |
//! | `blkif_request_discard`   | 32     | 28     |
//! | `blkif_request_indirect`  | 64     | 64     |
//! | `blkif_response`          | 16     | 12     |
//! | ring entry (union)        | 112    | 108    |
//!
//! Every struct below is checked three ways: a `const` size assertion,
//! `const` offset assertions against the header, and golden-bytes tests.
//! The structs are never overlaid on shared memory: requests are copied out
//! of the ring into a [`RawRequest`] and decoded field by field.

use core::mem::{offset_of, size_of};

/// `BLKIF_OP_READ`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`.
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1` (SLES device-specific packets; never supported).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`.
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`: failed for an unspecified reason (-EIO).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`: operation not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `BLKIF_DISCARD_SECURE`, bit 0 of `blkif_request_discard.flag`.
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `VDISK_CDROM` bit of the `info` node.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE` bit of the `info` node.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY` bit of the `info` node.
pub const VDISK_READONLY: u32 = 0x4;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: grant slots in an indirect request.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Xen page size; rings, segments and indirect pages are all 4 KiB.
pub const PAGE_SIZE: usize = 4096;
/// blkif's sector unit: every sector field is in 512-byte units.
pub const SECTOR_SIZE: usize = 512;
/// Sectors in one page: `first_sect`/`last_sect` range over `0..=7`.
pub const SECTORS_PER_PAGE: usize = PAGE_SIZE / SECTOR_SIZE;
/// Segment descriptors in one indirect page (4096 / 8 = 512).
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / size_of::<Segment>();
/// The largest request of either ABI; [`RawRequest`] buffers are this big.
pub const MAX_REQUEST_SIZE: usize = size_of::<RequestX64>();

/// Which ABI the frontend speaks (xenstore `protocol` node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    /// `"x86_32-abi"`: 4-byte aligned `uint64_t`.
    X86_32,
    /// `"x86_64-abi"`: natural alignment.
    X86_64,
}

impl Abi {
    /// `XEN_IO_PROTO_ABI_X86_32`.
    pub const PROTO_X86_32: &'static str = "x86_32-abi";
    /// `XEN_IO_PROTO_ABI_X86_64`.
    pub const PROTO_X86_64: &'static str = "x86_64-abi";

    /// Parses the xenstore `protocol` value.
    pub fn from_protocol(s: &str) -> Option<Abi> {
        match s {
            Self::PROTO_X86_32 => Some(Abi::X86_32),
            Self::PROTO_X86_64 => Some(Abi::X86_64),
            _ => None,
        }
    }

    /// The xenstore `protocol` string for this ABI.
    pub const fn protocol(self) -> &'static str {
        match self {
            Abi::X86_32 => Self::PROTO_X86_32,
            Abi::X86_64 => Self::PROTO_X86_64,
        }
    }

    /// `sizeof(blkif_request)` in this ABI.
    pub const fn request_size(self) -> usize {
        match self {
            Abi::X86_32 => size_of::<RequestX32>(),
            Abi::X86_64 => size_of::<RequestX64>(),
        }
    }

    /// `sizeof(blkif_response)` in this ABI.
    pub const fn response_size(self) -> usize {
        match self {
            Abi::X86_32 => size_of::<ResponseX32>(),
            Abi::X86_64 => size_of::<ResponseX64>(),
        }
    }

    /// Stride of the ring's request/response union in this ABI.
    pub const fn entry_size(self) -> usize {
        let (a, b) = (self.request_size(), self.response_size());
        if a > b {
            a
        } else {
            b
        }
    }

    /// Offset of `id`, which every request variant keeps at the same place
    /// (`u.other.id` in Linux's per-ABI unions).
    pub const fn id_offset(self) -> usize {
        match self {
            Abi::X86_32 => offset_of!(RequestX32, id),
            Abi::X86_64 => offset_of!(RequestX64, id),
        }
    }
}

// ---------------------------------------------------------------------------
// Little-endian field access on fixed layouts.

/// A plain field of a wire struct.
///
/// Offsets passed in are compile-time layout constants and buffers are at
/// least the struct's size, so slicing cannot fail on guest input.
trait Field: Sized + Copy {
    fn get(b: &[u8], off: usize) -> Self;
    fn put(self, b: &mut [u8], off: usize);
}

fn bytes<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn get(b: &[u8], off: usize) -> Self {
                <$t>::from_le_bytes(bytes(b, off))
            }
            fn put(self, b: &mut [u8], off: usize) {
                b[off..off + size_of::<$t>()].copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, i16);

impl<T: Field + Default, const N: usize> Field for [T; N] {
    fn get(b: &[u8], off: usize) -> Self {
        let mut a = [T::default(); N];
        for (i, x) in a.iter_mut().enumerate() {
            *x = T::get(b, off + i * size_of::<T>());
        }
        a
    }
    fn put(self, b: &mut [u8], off: usize) {
        for (i, x) in self.iter().enumerate() {
            x.put(b, off + i * size_of::<T>());
        }
    }
}

/// Declares `SIZE`, `decode` and `encode` for a wire struct from its field
/// list; offsets come from `offset_of!`, so they follow the `repr`.
macro_rules! wire {
    ($ty:ident, $size:expr, [$($f:ident),* $(,)?]) => {
        const _: () = assert!(size_of::<$ty>() == $size);
        impl $ty {
            /// Size in bytes on the wire.
            pub const SIZE: usize = $size;
            /// Decodes from the first `SIZE` bytes of `b`.
            ///
            /// # Panics
            /// If `b` is shorter than `SIZE` (a caller bug: ring copies and
            /// indirect pages are always large enough).
            pub fn decode(b: &[u8]) -> Self {
                Self { $($f: Field::get(b, offset_of!($ty, $f)),)* }
            }
            /// Encodes into the first `SIZE` bytes of `b`, zeroing padding.
            ///
            /// # Panics
            /// If `b` is shorter than `SIZE` (a caller bug).
            pub fn encode(&self, b: &mut [u8]) {
                b[..$size].fill(0);
                // Braces copy each field out first: no references into
                // packed structs.
                $( Field::put({ self.$f }, b, offset_of!($ty, $f)); )*
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Layouts.

/// `struct blkif_request_segment` (identical in both ABIs).
///
/// | off | field        |
/// |-----|--------------|
/// | 0   | `gref` u32   |
/// | 4   | `first_sect` |
/// | 5   | `last_sect`  |
/// | 6   | 2 bytes pad  |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First 512-byte sector in the page (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector in the page (inclusive).
    pub last_sect: u8,
}
wire!(Segment, 8, [gref, first_sect, last_sect]);
impl Field for Segment {
    fn get(b: &[u8], off: usize) -> Self {
        Segment::decode(&b[off..])
    }
    fn put(self, b: &mut [u8], off: usize) {
        self.encode(&mut b[off..])
    }
}
const _: () = {
    assert!(offset_of!(Segment, first_sect) == 4);
    assert!(offset_of!(Segment, last_sect) == 5);
};

/// `struct blkif_request` (read, write, barrier, flush), x86_64 ABI.
///
/// | off | field              |
/// |-----|--------------------|
/// | 0   | `operation` u8     |
/// | 1   | `nr_segments` u8   |
/// | 2   | `handle` u16       |
/// | 4   | 4 bytes pad        |
/// | 8   | `id` u64           |
/// | 16  | `sector_number` u64|
/// | 24  | `seg[11]` (8 each) |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestX64 {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector (512-byte units).
    pub sector_number: u64,
    /// Data segments.
    pub seg: [Segment; MAX_SEGMENTS_PER_REQUEST],
}
wire!(RequestX64, 112, [operation, nr_segments, handle, id, sector_number, seg]);
const _: () = {
    assert!(offset_of!(RequestX64, handle) == 2);
    assert!(offset_of!(RequestX64, id) == 8);
    assert!(offset_of!(RequestX64, sector_number) == 16);
    assert!(offset_of!(RequestX64, seg) == 24);
};

/// `struct blkif_request`, x86_32 ABI: `id` at 4, no hole.
///
/// | off | field              |
/// |-----|--------------------|
/// | 0   | `operation` u8     |
/// | 1   | `nr_segments` u8   |
/// | 2   | `handle` u16       |
/// | 4   | `id` u64           |
/// | 12  | `sector_number` u64|
/// | 20  | `seg[11]` (8 each) |
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestX32 {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`.
    pub nr_segments: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector (512-byte units).
    pub sector_number: u64,
    /// Data segments.
    pub seg: [Segment; MAX_SEGMENTS_PER_REQUEST],
}
wire!(RequestX32, 108, [operation, nr_segments, handle, id, sector_number, seg]);
const _: () = {
    assert!(offset_of!(RequestX32, id) == 4);
    assert!(offset_of!(RequestX32, sector_number) == 12);
    assert!(offset_of!(RequestX32, seg) == 20);
};

impl From<RequestX32> for RequestX64 {
    fn from(r: RequestX32) -> Self {
        RequestX64 {
            operation: r.operation,
            nr_segments: r.nr_segments,
            handle: r.handle,
            id: r.id,
            sector_number: r.sector_number,
            seg: r.seg,
        }
    }
}

impl From<RequestX64> for RequestX32 {
    fn from(r: RequestX64) -> Self {
        RequestX32 {
            operation: r.operation,
            nr_segments: r.nr_segments,
            handle: r.handle,
            id: r.id,
            sector_number: r.sector_number,
            seg: r.seg,
        }
    }
}

/// `struct blkif_request_discard`, x86_64 ABI.
///
/// | off | field              |
/// |-----|--------------------|
/// | 0   | `operation` u8     |
/// | 1   | `flag` u8          |
/// | 2   | `handle` u16       |
/// | 4   | 4 bytes pad        |
/// | 8   | `id` u64           |
/// | 16  | `sector_number` u64|
/// | 24  | `nr_sectors` u64   |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardX64 {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or zero.
    pub flag: u8,
    /// Virtual device handle (unused).
    pub handle: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Sectors to discard.
    pub nr_sectors: u64,
}
wire!(DiscardX64, 32, [operation, flag, handle, id, sector_number, nr_sectors]);
const _: () = {
    assert!(offset_of!(DiscardX64, flag) == 1);
    assert!(offset_of!(DiscardX64, id) == 8);
    assert!(offset_of!(DiscardX64, sector_number) == 16);
    assert!(offset_of!(DiscardX64, nr_sectors) == 24);
};

/// `struct blkif_request_discard`, x86_32 ABI.
///
/// | off | field              |
/// |-----|--------------------|
/// | 0   | `operation` u8     |
/// | 1   | `flag` u8          |
/// | 2   | `handle` u16       |
/// | 4   | `id` u64           |
/// | 12  | `sector_number` u64|
/// | 20  | `nr_sectors` u64   |
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardX32 {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or zero.
    pub flag: u8,
    /// Virtual device handle (unused).
    pub handle: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Sectors to discard.
    pub nr_sectors: u64,
}
wire!(DiscardX32, 28, [operation, flag, handle, id, sector_number, nr_sectors]);
const _: () = {
    assert!(offset_of!(DiscardX32, id) == 4);
    assert!(offset_of!(DiscardX32, sector_number) == 12);
    assert!(offset_of!(DiscardX32, nr_sectors) == 20);
};

impl From<DiscardX32> for DiscardX64 {
    fn from(r: DiscardX32) -> Self {
        DiscardX64 {
            operation: r.operation,
            flag: r.flag,
            handle: r.handle,
            id: r.id,
            sector_number: r.sector_number,
            nr_sectors: r.nr_sectors,
        }
    }
}

impl From<DiscardX64> for DiscardX32 {
    fn from(r: DiscardX64) -> Self {
        DiscardX32 {
            operation: r.operation,
            flag: r.flag,
            handle: r.handle,
            id: r.id,
            sector_number: r.sector_number,
            nr_sectors: r.nr_sectors,
        }
    }
}

/// `struct blkif_request_indirect`, x86_64 ABI.
///
/// | off | field                   |
/// |-----|-------------------------|
/// | 0   | `operation` u8          |
/// | 1   | `indirect_op` u8        |
/// | 2   | `nr_segments` u16       |
/// | 4   | 4 bytes pad             |
/// | 8   | `id` u64                |
/// | 16  | `sector_number` u64     |
/// | 24  | `handle` u16            |
/// | 26  | 2 bytes pad             |
/// | 28  | `indirect_grefs[8]` u32 |
/// | 60  | 4 bytes pad (to 64)     |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndirectX64 {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Total segments described by the indirect pages.
    pub nr_segments: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Virtual device handle.
    pub handle: u16,
    /// Grant references of the pages holding the segment arrays.
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
}
wire!(IndirectX64, 64, [operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs]);
const _: () = {
    assert!(offset_of!(IndirectX64, nr_segments) == 2);
    assert!(offset_of!(IndirectX64, id) == 8);
    assert!(offset_of!(IndirectX64, sector_number) == 16);
    assert!(offset_of!(IndirectX64, handle) == 24);
    assert!(offset_of!(IndirectX64, indirect_grefs) == 28);
};

/// `struct blkif_request_indirect`, x86_32 ABI (padded to 64 bytes).
///
/// | off | field                   |
/// |-----|-------------------------|
/// | 0   | `operation` u8          |
/// | 1   | `indirect_op` u8        |
/// | 2   | `nr_segments` u16       |
/// | 4   | `id` u64                |
/// | 12  | `sector_number` u64     |
/// | 20  | `handle` u16            |
/// | 22  | 2 bytes pad             |
/// | 24  | `indirect_grefs[8]` u32 |
/// | 56  | 8 bytes pad (`pad`)     |
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndirectX32 {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Total segments described by the indirect pages.
    pub nr_segments: u16,
    /// Guest cookie echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Virtual device handle.
    pub handle: u16,
    /// Grant references of the pages holding the segment arrays.
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Explicit tail padding of the i386 header (`uint64_t pad`).
    pub pad: u64,
}
wire!(IndirectX32, 64, [operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs, pad]);
const _: () = {
    assert!(offset_of!(IndirectX32, id) == 4);
    assert!(offset_of!(IndirectX32, sector_number) == 12);
    assert!(offset_of!(IndirectX32, handle) == 20);
    assert!(offset_of!(IndirectX32, indirect_grefs) == 24);
    assert!(offset_of!(IndirectX32, pad) == 56);
};

impl From<IndirectX32> for IndirectX64 {
    fn from(r: IndirectX32) -> Self {
        IndirectX64 {
            operation: r.operation,
            indirect_op: r.indirect_op,
            nr_segments: r.nr_segments,
            id: r.id,
            sector_number: r.sector_number,
            handle: r.handle,
            indirect_grefs: r.indirect_grefs,
        }
    }
}

impl From<IndirectX64> for IndirectX32 {
    fn from(r: IndirectX64) -> Self {
        IndirectX32 {
            operation: r.operation,
            indirect_op: r.indirect_op,
            nr_segments: r.nr_segments,
            id: r.id,
            sector_number: r.sector_number,
            handle: r.handle,
            indirect_grefs: r.indirect_grefs,
            pad: 0,
        }
    }
}

/// `struct blkif_response`, x86_64 ABI.
///
/// | off | field          |
/// |-----|----------------|
/// | 0   | `id` u64       |
/// | 8   | `operation` u8 |
/// | 9   | 1 byte pad     |
/// | 10  | `status` i16   |
/// | 12  | 4 bytes pad    |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseX64 {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request (`indirect_op` for indirect requests).
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}
wire!(ResponseX64, 16, [id, operation, status]);
const _: () = {
    assert!(offset_of!(ResponseX64, operation) == 8);
    assert!(offset_of!(ResponseX64, status) == 10);
};

/// `struct blkif_response`, x86_32 ABI: same field offsets, 12 bytes.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseX32 {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request (`indirect_op` for indirect requests).
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}
wire!(ResponseX32, 12, [id, operation, status]);
const _: () = {
    assert!(offset_of!(ResponseX32, operation) == 8);
    assert!(offset_of!(ResponseX32, status) == 10);
};

// ---------------------------------------------------------------------------
// ABI-neutral views.

/// One request slot copied out of the shared ring.
///
/// This copy is the only thing validated and acted on; the shared slot is
/// never read again (XSA-155). Bytes past the ABI's request size are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// ABI the bytes are laid out in.
    pub abi: Abi,
    /// The slot contents.
    pub bytes: [u8; MAX_REQUEST_SIZE],
}

impl RawRequest {
    /// The `operation` byte (offset 0 in every variant and ABI).
    pub fn operation(&self) -> u8 {
        self.bytes[0]
    }

    /// The `id` cookie (same offset in every variant of one ABI).
    pub fn id(&self) -> u64 {
        u64::get(&self.bytes, self.abi.id_offset())
    }

    /// Decodes as a read/write/barrier/flush request, in x86_64 form.
    pub fn as_rw(&self) -> RequestX64 {
        match self.abi {
            Abi::X86_64 => RequestX64::decode(&self.bytes),
            Abi::X86_32 => RequestX32::decode(&self.bytes).into(),
        }
    }

    /// The header of a read/write/barrier/flush request, in x86_64 form,
    /// without its segments (all zero: read the `nr_segments` used with
    /// [`rw_segment`](Self::rw_segment), not the whole array).
    pub fn rw_header(&self) -> RequestX64 {
        let (id, sector) = match self.abi {
            Abi::X86_64 => (offset_of!(RequestX64, id), offset_of!(RequestX64, sector_number)),
            Abi::X86_32 => (offset_of!(RequestX32, id), offset_of!(RequestX32, sector_number)),
        };
        RequestX64 {
            operation: self.bytes[0],
            nr_segments: self.bytes[1],
            handle: u16::get(&self.bytes, offset_of!(RequestX64, handle)),
            id: u64::get(&self.bytes, id),
            sector_number: u64::get(&self.bytes, sector),
            seg: Default::default(),
        }
    }

    /// Segment slot `k` (below [`MAX_SEGMENTS_PER_REQUEST`]) of a
    /// read/write/barrier/flush request.
    ///
    /// # Panics
    /// If `k` is out of range (a caller bug: checked against
    /// `nr_segments` first).
    pub fn rw_segment(&self, k: usize) -> Segment {
        let seg = match self.abi {
            Abi::X86_64 => offset_of!(RequestX64, seg),
            Abi::X86_32 => offset_of!(RequestX32, seg),
        };
        assert!(k < MAX_SEGMENTS_PER_REQUEST);
        Segment::decode(&self.bytes[seg + k * Segment::SIZE..])
    }

    /// Decodes as a discard request, in x86_64 form.
    pub fn as_discard(&self) -> DiscardX64 {
        match self.abi {
            Abi::X86_64 => DiscardX64::decode(&self.bytes),
            Abi::X86_32 => DiscardX32::decode(&self.bytes).into(),
        }
    }

    /// Decodes as an indirect request, in x86_64 form.
    pub fn as_indirect(&self) -> IndirectX64 {
        match self.abi {
            Abi::X86_64 => IndirectX64::decode(&self.bytes),
            Abi::X86_32 => IndirectX32::decode(&self.bytes).into(),
        }
    }
}

/// `blkif_response` contents, ABI-neutral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation (`indirect_op` for indirect requests, as
    /// Linux blkback does and blkfront checks).
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

impl Response {
    /// Encodes for `abi`; the first `abi.response_size()` bytes are valid.
    pub fn encode(&self, abi: Abi) -> [u8; ResponseX64::SIZE] {
        let mut b = [0u8; ResponseX64::SIZE];
        match abi {
            Abi::X86_64 => ResponseX64 { id: self.id, operation: self.operation, status: self.status }.encode(&mut b),
            Abi::X86_32 => ResponseX32 { id: self.id, operation: self.operation, status: self.status }.encode(&mut b),
        }
        b
    }

    /// Decodes from the first `abi.response_size()` bytes of `b` (used by
    /// test frontends).
    ///
    /// # Panics
    /// If `b` is shorter than the response size.
    pub fn decode(abi: Abi, b: &[u8]) -> Self {
        let (id, operation, status) = match abi {
            Abi::X86_64 => {
                let r = ResponseX64::decode(b);
                (r.id, r.operation, r.status)
            }
            Abi::X86_32 => {
                let r = ResponseX32::decode(b);
                (r.id, r.operation, r.status)
            }
        };
        Response { id, operation, status }
    }
}

#[cfg(test)]
mod tests;
