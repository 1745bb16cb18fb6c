//! NVMe queue entries, commands and identify data (NVMe Base 1.4 §4.2
//! Submission Queue Entry, §4.6 Completion Queue Entry, §5 Admin commands;
//! NVM command set in §6). Each ABI struct is `repr(C)` with a compile-time
//! size check and a golden-bytes test; encoding is explicit little-endian,
//! so no unsafe is needed.

use crate::error::Status;

/// Admin command opcodes (§5, Figure 139).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
}

/// NVM command set opcodes (§6, Figure 346).
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify CNS values (§5.15.1, Figure 244).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
}

/// Feature identifiers (§5.21.1).
pub mod feature {
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
}

/// CDW12 bits of Read/Write/Write Zeroes (§6.9.1, §6.15.1, §6.16.1).
pub mod rw {
    /// Force Unit Access.
    pub const FUA: u32 = 1 << 30;
    /// Limited Retry.
    pub const LR: u32 = 1 << 31;
    /// Write Zeroes: deallocate.
    pub const DEAC: u32 = 1 << 25;
}

/// Dataset Management CDW11 attribute bits (§6.7, Figure 360).
pub mod dsm {
    pub const INTEGRAL_READ: u32 = 1 << 0;
    pub const INTEGRAL_WRITE: u32 = 1 << 1;
    pub const DEALLOCATE: u32 = 1 << 2;
    /// At most 256 ranges (NR is 0-based, 8 bits).
    pub const MAX_RANGES: usize = 256;
}

/// Submission Queue Entry (§4.2, Figure 105: Common Command Format).
///
/// | bytes | field                                                    |
/// |-------|----------------------------------------------------------|
/// | 0..4  | CDW0: OPC 7:0, FUSE 9:8, PSDT 15:14, CID 31:16           |
/// | 4..8  | NSID                                                     |
/// | 8..16 | CDW2, CDW3 (reserved / command specific)                 |
/// | 16..24| MPTR                                                     |
/// | 24..40| DPTR: PRP1, PRP2 (or one SGL descriptor)                 |
/// | 40..64| CDW10..CDW15                                             |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    pub cdw0: u32,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<Sqe>() == 64);
const _: () = assert!(core::mem::offset_of!(Sqe, mptr) == 16);
const _: () = assert!(core::mem::offset_of!(Sqe, prp1) == 24);
const _: () = assert!(core::mem::offset_of!(Sqe, prp2) == 32);
const _: () = assert!(core::mem::offset_of!(Sqe, cdw10) == 40);
const _: () = assert!(core::mem::offset_of!(Sqe, cdw15) == 60);

/// An SGL descriptor (NVMe base spec, "Scatter Gather List (SGL)"):
///
/// | bytes | field                                        |
/// |-------|----------------------------------------------|
/// | 0..8  | address                                      |
/// | 8..12 | length in bytes                              |
/// | 12..15| reserved                                     |
/// | 15    | identifier: type in bits 7:4, subtype 3:0    |
///
/// Types used: 0h Data Block, 2h Segment, 3h Last Segment (subtype 0h:
/// the address is a memory address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub kind: u8,
}

impl SglDescriptor {
    pub const SIZE: usize = 16;
    pub const DATA_BLOCK: u8 = 0x0;
    pub const SEGMENT: u8 = 0x2;
    pub const LAST_SEGMENT: u8 = 0x3;

    pub fn data_block(address: u64, length: u32) -> Self {
        SglDescriptor { address, length, kind: Self::DATA_BLOCK }
    }
    pub fn last_segment(address: u64, descriptors: usize) -> Self {
        SglDescriptor { address, length: (descriptors * Self::SIZE) as u32, kind: Self::LAST_SEGMENT }
    }
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.length.to_le_bytes());
        b[15] = self.kind << 4;
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        SglDescriptor {
            address: u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8])),
            length: u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4])),
            kind: b[15] >> 4,
        }
    }
}

impl Sqe {
    pub const SIZE: usize = 64;

    /// A command with `opcode`, no fusing, PRPs (PSDT 00b), CID 0.
    pub fn new(opcode: u8, nsid: u32) -> Sqe {
        Sqe { cdw0: u32::from(opcode), nsid, ..Sqe::default() }
    }
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }
    pub fn fuse(&self) -> u8 {
        ((self.cdw0 >> 8) & 0x3) as u8
    }
    pub fn psdt(&self) -> u8 {
        ((self.cdw0 >> 14) & 0x3) as u8
    }
    /// PSDT 01b: the data pointer holds SGL descriptor 1 (NVMe base spec,
    /// "Common Command Format": PRP or SGL for Data Transfer).
    pub fn set_sgl(&mut self, sgl1: SglDescriptor) {
        self.cdw0 = (self.cdw0 & !(0x3 << 14)) | (0b01 << 14);
        let b = sgl1.to_bytes();
        self.prp1 = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        self.prp2 = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    }
    /// SGL descriptor 1 of a command with PSDT 01b.
    pub fn sgl1(&self) -> SglDescriptor {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.prp1.to_le_bytes());
        b[8..16].copy_from_slice(&self.prp2.to_le_bytes());
        SglDescriptor::from_bytes(&b)
    }
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xFFFF) | (u32::from(cid) << 16);
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        // Fixed offsets (the layout asserted above): straight-line stores.
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.cdw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[8..12].copy_from_slice(&self.cdw2.to_le_bytes());
        b[12..16].copy_from_slice(&self.cdw3.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        b[40..44].copy_from_slice(&self.cdw10.to_le_bytes());
        b[44..48].copy_from_slice(&self.cdw11.to_le_bytes());
        b[48..52].copy_from_slice(&self.cdw12.to_le_bytes());
        b[52..56].copy_from_slice(&self.cdw13.to_le_bytes());
        b[56..60].copy_from_slice(&self.cdw14.to_le_bytes());
        b[60..64].copy_from_slice(&self.cdw15.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 64]) -> Sqe {
        let d = |i: usize| u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let q = |i: usize| u64::from(d(i)) | (u64::from(d(i + 1)) << 32);
        Sqe {
            cdw0: d(0),
            nsid: d(1),
            cdw2: d(2),
            cdw3: d(3),
            mptr: q(4),
            prp1: q(6),
            prp2: q(8),
            cdw10: d(10),
            cdw11: d(11),
            cdw12: d(12),
            cdw13: d(13),
            cdw14: d(14),
            cdw15: d(15),
        }
    }

    // ---- Admin commands ----

    /// Identify (§5.15): CDW10 CNS 7:0, CNTID 31:16. Data: one 4 KiB page.
    pub fn identify(cns: u8, nsid: u32, prp1: u64) -> Sqe {
        Sqe { prp1, cdw10: u32::from(cns), ..Sqe::new(admin::IDENTIFY, nsid) }
    }

    /// Create I/O Completion Queue (§5.3): CDW10 QSIZE 31:16 (0-based),
    /// QID 15:0; CDW11 IV 31:16, IEN bit 1, PC bit 0. We poll: IEN = 0.
    pub fn create_io_cq(qid: u16, entries: u16, prp1: u64) -> Sqe {
        Sqe {
            prp1,
            cdw10: (u32::from(entries - 1) << 16) | u32::from(qid),
            cdw11: 1, // PC
            ..Sqe::new(admin::CREATE_IO_CQ, 0)
        }
    }

    /// Create I/O Submission Queue (§5.4): CDW10 as for CQs; CDW11
    /// CQID 31:16, QPRIO 2:1, PC bit 0.
    pub fn create_io_sq(qid: u16, entries: u16, cqid: u16, prp1: u64) -> Sqe {
        Sqe {
            prp1,
            cdw10: (u32::from(entries - 1) << 16) | u32::from(qid),
            cdw11: (u32::from(cqid) << 16) | 1,
            ..Sqe::new(admin::CREATE_IO_SQ, 0)
        }
    }

    /// Delete I/O SQ (§5.7) / CQ (§5.6): CDW10 QID 15:0.
    pub fn delete_io_sq(qid: u16) -> Sqe {
        Sqe { cdw10: u32::from(qid), ..Sqe::new(admin::DELETE_IO_SQ, 0) }
    }
    pub fn delete_io_cq(qid: u16) -> Sqe {
        Sqe { cdw10: u32::from(qid), ..Sqe::new(admin::DELETE_IO_CQ, 0) }
    }

    /// Set Features, Number of Queues (§5.21.1.7): CDW11 NCQR 31:16,
    /// NSQR 15:0, both 0-based; `count` ≥ 1.
    pub fn set_number_of_queues(count: u16) -> Sqe {
        let n = u32::from(count - 1);
        Sqe { cdw10: u32::from(feature::NUMBER_OF_QUEUES), cdw11: (n << 16) | n, ..Sqe::new(admin::SET_FEATURES, 0) }
    }

    /// Abort (§5.1): CDW10 CID 31:16, SQID 15:0.
    pub fn abort(sqid: u16, cid: u16) -> Sqe {
        Sqe { cdw10: (u32::from(cid) << 16) | u32::from(sqid), ..Sqe::new(admin::ABORT, 0) }
    }

    // ---- NVM commands ----

    /// Read (§6.9) / Write (§6.15): CDW10/11 SLBA, CDW12 NLB 15:0 (0-based),
    /// FUA bit 30. `blocks` in 1..=65536.
    pub fn read(nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Self::rw(nvm::READ, nsid, slba, blocks, false)
    }
    pub fn write(nsid: u32, slba: u64, blocks: u32, fua: bool) -> Sqe {
        Self::rw(nvm::WRITE, nsid, slba, blocks, fua)
    }
    fn rw(op: u8, nsid: u32, slba: u64, blocks: u32, fua: bool) -> Sqe {
        let mut cdw12 = (blocks - 1) & 0xFFFF;
        if fua {
            cdw12 |= rw::FUA;
        }
        Sqe { cdw10: slba as u32, cdw11: (slba >> 32) as u32, cdw12, ..Sqe::new(op, nsid) }
    }

    /// Write Zeroes (§6.16): like Write, no data.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Sqe {
        Sqe {
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: (blocks - 1) & 0xFFFF,
            ..Sqe::new(nvm::WRITE_ZEROES, nsid)
        }
    }

    /// Flush (§6.8).
    pub fn flush(nsid: u32) -> Sqe {
        Sqe::new(nvm::FLUSH, nsid)
    }

    /// Dataset Management (§6.7): CDW10 NR 7:0 (0-based range count),
    /// CDW11 attributes (AD = deallocate). Ranges in the PRP1 page.
    pub fn dsm_deallocate(nsid: u32, ranges: u16, prp1: u64) -> Sqe {
        Sqe {
            prp1,
            cdw10: u32::from(ranges - 1) & 0xFF,
            cdw11: dsm::DEALLOCATE,
            ..Sqe::new(nvm::DATASET_MANAGEMENT, nsid)
        }
    }
}

/// Completion Queue Entry (§4.6, Figure 124).
///
/// | bytes  | field                                                  |
/// |--------|--------------------------------------------------------|
/// | 0..4   | DW0 command specific                                   |
/// | 4..8   | DW1 reserved                                           |
/// | 8..10  | SQHD: SQ head pointer                                  |
/// | 10..12 | SQID                                                   |
/// | 12..14 | CID                                                    |
/// | 14..16 | P (bit 0), Status Field (bits 15:1): SC 8:1, SCT 11:9,  |
/// |        | CRD 13:12, M 14, DNR 15                                |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    pub status: u16,
}

const _: () = assert!(core::mem::size_of::<Cqe>() == 16);
const _: () = assert!(core::mem::offset_of!(Cqe, sq_head) == 8);
const _: () = assert!(core::mem::offset_of!(Cqe, cid) == 12);
const _: () = assert!(core::mem::offset_of!(Cqe, status) == 14);

impl Cqe {
    pub const SIZE: usize = 16;
    /// Byte offset of the 16-bit word holding the phase tag.
    pub const STATUS_OFFSET: usize = 14;

    pub fn phase(&self) -> bool {
        self.status & 1 != 0
    }
    /// Status Code Type.
    pub fn sct(&self) -> u8 {
        ((self.status >> 9) & 0x7) as u8
    }
    /// Status Code.
    pub fn sc(&self) -> u8 {
        (self.status >> 1) as u8
    }
    /// Do Not Retry.
    pub fn dnr(&self) -> bool {
        self.status & (1 << 15) != 0
    }
    /// More information in the error log.
    pub fn more(&self) -> bool {
        self.status & (1 << 14) != 0
    }
    /// `Ok` on success, the typed status otherwise.
    pub fn result(&self) -> Result<(), Status> {
        match Status::from_codes(self.sct(), self.sc()) {
            None => Ok(()),
            Some(s) => Err(s),
        }
    }
    /// Builds the status word (for the fake controller).
    pub fn status_word(phase: bool, sct: u8, sc: u8, dnr: bool) -> u16 {
        u16::from(phase) | (u16::from(sc) << 1) | (u16::from(sct & 7) << 9) | (u16::from(dnr) << 15)
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> Cqe {
        Cqe {
            dw0: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            dw1: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            sq_head: u16::from_le_bytes([b[8], b[9]]),
            sq_id: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Dataset Management range (§6.7, Figure 361): context attributes,
/// length in logical blocks (1-based), starting LBA.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmRange {
    pub attributes: u32,
    pub blocks: u32,
    pub slba: u64,
}

const _: () = assert!(core::mem::size_of::<DsmRange>() == 16);

impl DsmRange {
    pub const SIZE: usize = 16;
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.attributes.to_le_bytes());
        b[4..8].copy_from_slice(&self.blocks.to_le_bytes());
        b[8..16].copy_from_slice(&self.slba.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; 16]) -> DsmRange {
        DsmRange {
            attributes: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            blocks: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            slba: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// Optional NVM Command Support (Identify Controller ONCS, §5.15.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Oncs(pub u16);

impl Oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DATASET_MANAGEMENT: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub fn dsm(self) -> bool {
        self.0 & Self::DATASET_MANAGEMENT != 0
    }
    pub fn write_zeroes(self) -> bool {
        self.0 & Self::WRITE_ZEROES != 0
    }
}

/// The Identify Controller fields we use (§5.15.2.2, Figure 247).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor id (bytes 1:0).
    pub vid: u16,
    /// Serial number, model, firmware (ASCII, space padded).
    pub serial: [u8; 20],
    pub model: [u8; 40],
    pub firmware: [u8; 8],
    /// Maximum Data Transfer Size (byte 77): 2^MDTS min pages, 0 = none.
    pub mdts: u8,
    /// Controller ID (79:78).
    pub cntlid: u16,
    /// SQES (512) / CQES (513): required 3:0 and maximum 7:4, log2 bytes.
    pub sqes: u8,
    pub cqes: u8,
    /// Number of Namespaces (519:516).
    pub nn: u32,
    /// Optional NVM Command Support (521:520).
    pub oncs: Oncs,
    /// Volatile Write Cache (525), bit 0: present.
    pub vwc: u8,
    /// SGL Support (539:536); bits 1:0 non-zero: SGLs supported.
    pub sgls: u32,
}

impl IdentifyController {
    pub const LEN: usize = 4096;

    /// Parses the 4 KiB identify page. Fixed offsets inside a fixed-size
    /// array: cannot fail or panic; values are validated by the user.
    pub fn parse(b: &[u8; 4096]) -> IdentifyController {
        let mut serial = [0u8; 20];
        serial.copy_from_slice(&b[4..24]);
        let mut model = [0u8; 40];
        model.copy_from_slice(&b[24..64]);
        let mut firmware = [0u8; 8];
        firmware.copy_from_slice(&b[64..72]);
        IdentifyController {
            vid: le16(b, 0),
            serial,
            model,
            firmware,
            mdts: b[77],
            cntlid: le16(b, 78),
            sqes: b[512],
            cqes: b[513],
            nn: le32(b, 516),
            oncs: Oncs(le16(b, 520)),
            vwc: b[525],
            sgls: le32(b, 536),
        }
    }

    pub fn volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
    pub fn sgl_supported(&self) -> bool {
        self.sgls & 0x3 != 0
    }
    /// Maximum transfer in bytes given the controller's minimum page size,
    /// or `None` for no limit.
    pub fn max_transfer(&self, min_page_size: u64) -> Option<u64> {
        if self.mdts == 0 {
            None
        } else {
            Some(min_page_size.saturating_mul(1u64.checked_shl(u32::from(self.mdts)).unwrap_or(u64::MAX)))
        }
    }
}

/// One LBA Format (§5.15.2.1, Figure 249): MS 15:0 metadata bytes,
/// LBADS 23:16 log2 data size, RP 25:24 relative performance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaFormat(pub u32);

impl LbaFormat {
    pub fn metadata_size(self) -> u16 {
        self.0 as u16
    }
    pub fn lbads(self) -> u8 {
        (self.0 >> 16) as u8
    }
}

/// The Identify Namespace fields we use (§5.15.2.1, Figure 245).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks (7:0).
    pub nsze: u64,
    /// Namespace Capacity (15:8), Utilization (23:16).
    pub ncap: u64,
    pub nuse: u64,
    /// Number of LBA formats, 0-based (25).
    pub nlbaf: u8,
    /// Formatted LBA Size (26): format index 3:0 (+ 6:5 as high bits since
    /// NVMe 2.0), bit 4 metadata at end of LBA.
    pub flbas: u8,
    /// The LBA format in use.
    pub lbaf: LbaFormat,
}

impl IdentifyNamespace {
    /// LBA Format 0 sits at byte 128; 64 formats of 4 bytes (2.0 layout,
    /// compatible with 1.4's 16).
    const LBAF0: usize = 128;

    pub fn parse(b: &[u8; 4096]) -> IdentifyNamespace {
        let flbas = b[26];
        let index = usize::from(flbas & 0xF) | (usize::from((flbas >> 5) & 0x3) << 4);
        IdentifyNamespace {
            nsze: le64(b, 0),
            ncap: le64(b, 8),
            nuse: le64(b, 16),
            nlbaf: b[25],
            flbas,
            lbaf: LbaFormat(le32(b, Self::LBAF0 + 4 * index)),
        }
    }

    pub fn format_index(&self) -> u8 {
        (self.flbas & 0xF) | (((self.flbas >> 5) & 0x3) << 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_golden_bytes() {
        let mut sqe = Sqe::write(1, 0x1_2345_6789, 8, true);
        sqe.set_cid(0xBEEF);
        sqe.prp1 = 0x0000_0001_0000_0200;
        sqe.prp2 = 0x0000_0001_0000_3000;
        let mut golden = [0u8; 64];
        golden[0..4].copy_from_slice(&[0x01, 0x00, 0xEF, 0xBE]); // opc 01, cid beef
        golden[4..8].copy_from_slice(&[0x01, 0, 0, 0]); // nsid 1
        golden[24..32].copy_from_slice(&[0x00, 0x02, 0, 0, 0x01, 0, 0, 0]);
        golden[32..40].copy_from_slice(&[0x00, 0x30, 0, 0, 0x01, 0, 0, 0]);
        golden[40..44].copy_from_slice(&[0x89, 0x67, 0x45, 0x23]); // SLBA low
        golden[44..48].copy_from_slice(&[0x01, 0, 0, 0]); // SLBA high
        golden[48..52].copy_from_slice(&[0x07, 0x00, 0x00, 0x40]); // NLB 7, FUA
        assert_eq!(sqe.to_bytes(), golden);
        assert_eq!(Sqe::from_bytes(&golden), sqe);
        assert_eq!(sqe.opcode(), nvm::WRITE);
        assert_eq!(sqe.cid(), 0xBEEF);
        assert_eq!((sqe.fuse(), sqe.psdt()), (0, 0));
    }

    #[test]
    fn admin_command_fields() {
        let cq = Sqe::create_io_cq(3, 64, 0x5000);
        assert_eq!((cq.opcode(), cq.cdw10, cq.cdw11, cq.prp1), (0x05, 0x003F_0003, 1, 0x5000));
        let sq = Sqe::create_io_sq(3, 64, 3, 0x6000);
        assert_eq!((sq.opcode(), sq.cdw10, sq.cdw11), (0x01, 0x003F_0003, 0x0003_0001));
        let nq = Sqe::set_number_of_queues(4);
        assert_eq!((nq.opcode(), nq.cdw10, nq.cdw11), (0x09, 0x07, 0x0003_0003));
        let ab = Sqe::abort(2, 0x11);
        assert_eq!((ab.opcode(), ab.cdw10), (0x08, 0x0011_0002));
        let id = Sqe::identify(cns::CONTROLLER, 0, 0x7000);
        assert_eq!((id.opcode(), id.cdw10, id.prp1), (0x06, 1, 0x7000));
        let d = Sqe::dsm_deallocate(1, 1, 0x8000);
        assert_eq!((d.opcode(), d.cdw10, d.cdw11), (0x09, 0, 4));
        let wz = Sqe::write_zeroes(1, 10, 65536);
        assert_eq!((wz.opcode(), wz.cdw10, wz.cdw12), (0x08, 10, 0xFFFF));
        assert_eq!(Sqe::read(1, 0, 1).cdw12 & rw::FUA, 0);
        assert_eq!(Sqe::flush(1).opcode(), 0);
        assert_eq!(Sqe::delete_io_sq(5).cdw10, 5);
        assert_eq!(Sqe::delete_io_cq(5).opcode(), 0x04);
    }

    #[test]
    fn cqe_golden_bytes() {
        // DW0 0x00030003, SQHD 5, SQID 1, CID 0x22, phase 1, SCT 2 SC 0x81, DNR.
        let golden = [3, 0, 3, 0, 0, 0, 0, 0, 5, 0, 1, 0, 0x22, 0, 0x03, 0x85];
        let cqe = Cqe::from_bytes(&golden);
        assert_eq!(cqe.dw0, 0x0003_0003);
        assert_eq!((cqe.sq_head, cqe.sq_id, cqe.cid), (5, 1, 0x22));
        assert!(cqe.phase());
        assert_eq!((cqe.sct(), cqe.sc()), (2, 0x81));
        assert!(cqe.dnr());
        assert!(!cqe.more());
        assert_eq!(cqe.result(), Err(Status::UnrecoveredReadError));
        assert_eq!(cqe.to_bytes(), golden);
        assert_eq!(Cqe::status_word(true, 2, 0x81, true), cqe.status);
        let ok = Cqe { status: Cqe::status_word(false, 0, 0, false), ..cqe };
        assert_eq!(ok.result(), Ok(()));
    }

    #[test]
    fn dsm_range_golden_bytes() {
        let r = DsmRange { attributes: 0, blocks: 0x10, slba: 0x0102_0304_0506_0708 };
        let golden = [0, 0, 0, 0, 0x10, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1];
        assert_eq!(r.to_bytes(), golden);
        assert_eq!(DsmRange::from_bytes(&golden), r);
    }

    #[test]
    fn status_mapping() {
        use crate::Error;
        assert_eq!(Status::from_codes(0, 0), None);
        assert_eq!(Status::from_codes(0, 0x80), Some(Status::LbaOutOfRange));
        assert_eq!(Status::from_codes(2, 0x80), Some(Status::WriteFault));
        assert_eq!(Status::from_codes(1, 0x01), Some(Status::InvalidQueueIdentifier));
        assert_eq!(Status::from_codes(3, 0x70), Some(Status::PathRelated(0x70)));
        assert_eq!(Status::from_codes(7, 0x01), Some(Status::VendorSpecific(1)));
        assert_eq!(Status::from_codes(5, 0x01), Some(Status::Other { sct: 5, sc: 1 }));
        assert_eq!(Status::AbortRequested.into_error(), Error::Aborted);
        assert_eq!(Status::WriteFault.into_error(), Error::Status(Status::WriteFault));
    }

    #[test]
    fn identify_parsing() {
        let mut c = [0u8; 4096];
        c[0..2].copy_from_slice(&0x1B36u16.to_le_bytes());
        c[4..10].copy_from_slice(b"SERIAL");
        c[77] = 5;
        c[512] = 0x66;
        c[513] = 0x44;
        c[516..520].copy_from_slice(&1u32.to_le_bytes());
        c[520..522].copy_from_slice(&0x000Cu16.to_le_bytes());
        c[525] = 1;
        let ic = IdentifyController::parse(&c);
        assert_eq!(ic.vid, 0x1B36);
        assert_eq!(&ic.serial[..6], b"SERIAL");
        assert_eq!(ic.max_transfer(4096), Some(128 * 1024));
        assert!(ic.oncs.dsm() && ic.oncs.write_zeroes());
        assert!(ic.volatile_write_cache());
        assert!(!ic.sgl_supported());
        // SGL descriptor golden bytes: Data Block and Last Segment.
        let d = SglDescriptor::data_block(0x1122_3344_5566_7000, 0x2000);
        assert_eq!(d.to_bytes(), [0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0x20, 0, 0, 0, 0, 0, 0x00]);
        let l = SglDescriptor::last_segment(0x9000, 3);
        assert_eq!(l.to_bytes(), [0x00, 0x90, 0, 0, 0, 0, 0, 0, 48, 0, 0, 0, 0, 0, 0, 0x30]);
        assert_eq!(SglDescriptor::from_bytes(&l.to_bytes()), l);
        let mut sqe = Sqe::read(1, 0, 8);
        sqe.set_sgl(d);
        assert_eq!((sqe.psdt(), sqe.sgl1()), (1, d));
        assert_eq!(ic.nn, 1);

        let mut n = [0u8; 4096];
        n[0..8].copy_from_slice(&1000u64.to_le_bytes());
        n[25] = 1;
        n[26] = 1; // format 1
        n[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        n[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = IdentifyNamespace::parse(&n);
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.format_index(), 1);
        assert_eq!(ns.lbaf.lbads(), 12);
        assert_eq!(ns.lbaf.metadata_size(), 0);
    }
}
