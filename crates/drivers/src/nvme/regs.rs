//! NVMe controller registers (NVMe Base 1.4 §3.1, Figure 78 "Controller
//! Registers"). Typed wrappers over the raw values; no bare bit literals
//! outside this file.

/// Register offsets in BAR0 (Figure 78).
pub mod offset {
    /// Controller Capabilities, 64-bit.
    pub const CAP: usize = 0x00;
    /// Version, 32-bit.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set / Clear.
    pub const INTMS: usize = 0x0C;
    pub const INTMC: usize = 0x10;
    /// Controller Configuration, 32-bit.
    pub const CC: usize = 0x14;
    /// Controller Status, 32-bit.
    pub const CSTS: usize = 0x1C;
    /// Admin Queue Attributes, 32-bit.
    pub const AQA: usize = 0x24;
    /// Admin Submission / Completion Queue Base Address, 64-bit.
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    /// First doorbell (§3.1.24: SQ 0 Tail Doorbell).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Submission Queue `qid` Tail Doorbell offset (§3.1.24):
/// `0x1000 + (2*qid) * (4 << CAP.DSTRD)`.
pub fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELL_BASE + (2 * usize::from(qid)) * (4usize << dstrd)
}

/// Completion Queue `qid` Head Doorbell offset (§3.1.25):
/// `0x1000 + (2*qid + 1) * (4 << CAP.DSTRD)`.
pub fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELL_BASE + (2 * usize::from(qid) + 1) * (4usize << dstrd)
}

/// CAP — Controller Capabilities (§3.1.1, Figure 79).
///
/// | bits  | field  | meaning                                        |
/// |-------|--------|------------------------------------------------|
/// | 15:0  | MQES   | max queue entries, 0-based                     |
/// | 16    | CQR    | contiguous queues required                     |
/// | 18:17 | AMS    | arbitration mechanisms supported               |
/// | 31:24 | TO     | worst-case RDY transition time, 500 ms units   |
/// | 35:32 | DSTRD  | doorbell stride, 4 << DSTRD bytes              |
/// | 36    | NSSRS  | NVM subsystem reset supported                  |
/// | 44:37 | CSS    | command sets supported (bit 37: NVM)           |
/// | 51:48 | MPSMIN | min memory page size, 2^(12+MPSMIN)            |
/// | 55:52 | MPSMAX | max memory page size, 2^(12+MPSMAX)            |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    pub fn mqes(self) -> u16 {
        self.0 as u16
    }
    /// Maximum entries per queue (MQES + 1).
    pub fn max_queue_entries(self) -> u32 {
        u32::from(self.mqes()) + 1
    }
    pub fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    pub fn to(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// CAP.TO in nanoseconds (at least one 500 ms unit).
    pub fn timeout_ns(self) -> u64 {
        u64::from(self.to().max(1)) * 500_000_000
    }
    pub fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xF) as u8
    }
    pub fn nssrs(self) -> bool {
        self.0 & (1 << 36) != 0
    }
    /// CSS bit 0 (CAP bit 37): NVM command set.
    pub fn css_nvm(self) -> bool {
        self.0 & (1 << 37) != 0
    }
    pub fn mpsmin(self) -> u8 {
        ((self.0 >> 48) & 0xF) as u8
    }
    pub fn mpsmax(self) -> u8 {
        ((self.0 >> 52) & 0xF) as u8
    }
    /// Smallest memory page size in bytes (MDTS is in these units).
    pub fn min_page_size(self) -> u64 {
        1u64 << (12 + u32::from(self.mpsmin()))
    }

    /// Builds a CAP value (for fakes and tests).
    pub fn build(mqes: u16, cqr: bool, to: u8, dstrd: u8, mpsmin: u8, mpsmax: u8) -> Cap {
        Cap(u64::from(mqes)
            | (u64::from(cqr) << 16)
            | (u64::from(to) << 24)
            | (u64::from(dstrd & 0xF) << 32)
            | (1 << 37)
            | (u64::from(mpsmin & 0xF) << 48)
            | (u64::from(mpsmax & 0xF) << 52))
    }
}

/// VS — Version (§3.1.2): MJR 31:16, MNR 15:8, TER 7:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);

impl Version {
    pub fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

/// CC — Controller Configuration (§3.1.5, Figure 84).
///
/// | bits  | field  | value we use                           |
/// |-------|--------|----------------------------------------|
/// | 0     | EN     | enable                                 |
/// | 6:4   | CSS    | 000b NVM command set                   |
/// | 10:7  | MPS    | 0: 4 KiB pages                         |
/// | 13:11 | AMS    | 000b round robin                       |
/// | 15:14 | SHN    | 00b none, 01b normal, 10b abrupt       |
/// | 19:16 | IOSQES | 6: 64-byte SQ entries                  |
/// | 23:20 | IOCQES | 4: 16-byte CQ entries                  |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    const EN: u32 = 1 << 0;
    const MPS_SHIFT: u32 = 7;
    const SHN_SHIFT: u32 = 14;
    const SHN_MASK: u32 = 0x3 << 14;
    const IOSQES_SHIFT: u32 = 16;
    const IOCQES_SHIFT: u32 = 20;
    /// log2 of the SQ/CQ entry sizes we use.
    pub const SQES_LOG2: u32 = 6;
    pub const CQES_LOG2: u32 = 4;

    /// The configuration we run with (NVM set, 4 KiB pages, round robin,
    /// 64/16-byte entries), enable bit clear.
    pub fn ours() -> Cc {
        Cc((Self::SQES_LOG2 << Self::IOSQES_SHIFT) | (Self::CQES_LOG2 << Self::IOCQES_SHIFT))
    }
    pub fn enabled(self) -> bool {
        self.0 & Self::EN != 0
    }
    pub fn with_enable(self, on: bool) -> Cc {
        if on {
            Cc(self.0 | Self::EN)
        } else {
            Cc(self.0 & !Self::EN)
        }
    }
    pub fn mps(self) -> u8 {
        ((self.0 >> Self::MPS_SHIFT) & 0xF) as u8
    }
    pub fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    pub fn shn(self) -> u8 {
        ((self.0 & Self::SHN_MASK) >> Self::SHN_SHIFT) as u8
    }
    /// Requests a normal shutdown (SHN = 01b).
    pub fn with_normal_shutdown(self) -> Cc {
        Cc((self.0 & !Self::SHN_MASK) | (1 << Self::SHN_SHIFT))
    }
    pub fn iosqes(self) -> u8 {
        ((self.0 >> Self::IOSQES_SHIFT) & 0xF) as u8
    }
    pub fn iocqes(self) -> u8 {
        ((self.0 >> Self::IOCQES_SHIFT) & 0xF) as u8
    }
}

/// CSTS — Controller Status (§3.1.6, Figure 85): RDY 0, CFS 1,
/// SHST 3:2 (00b normal, 01b shutdown processing, 10b shutdown complete),
/// NSSRO 4, PP 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_COMPLETE: u32 = 0b10 << 2;
    pub fn ready(self) -> bool {
        self.0 & Self::RDY != 0
    }
    pub fn fatal(self) -> bool {
        self.0 & Self::CFS != 0
    }
    pub fn shst(self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }
    pub fn shutdown_complete(self) -> bool {
        self.shst() == 0b10
    }
    /// All ones: the read went nowhere (device removed or BAR unmapped).
    pub fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

/// AQA — Admin Queue Attributes (§3.1.8): ASQS 11:0, ACQS 27:16, both
/// 0-based entry counts (max 4096 entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aqa(pub u32);

impl Aqa {
    pub const MAX_ENTRIES: u16 = 4096;
    /// `sq_entries`/`cq_entries` are 1-based counts in 2..=4096.
    pub fn new(sq_entries: u16, cq_entries: u16) -> Aqa {
        Aqa((u32::from(sq_entries - 1) & 0xFFF) | ((u32::from(cq_entries - 1) & 0xFFF) << 16))
    }
    /// 1-based.
    pub fn sq_entries(self) -> u16 {
        (self.0 & 0xFFF) as u16 + 1
    }
    /// 1-based.
    pub fn cq_entries(self) -> u16 {
        ((self.0 >> 16) & 0xFFF) as u16 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_stride() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(1, 0), 0x1008);
        assert_eq!(cq_head_doorbell(1, 0), 0x100C);
        // DSTRD = 2: 16-byte stride.
        assert_eq!(sq_tail_doorbell(1, 2), 0x1020);
        assert_eq!(cq_head_doorbell(3, 2), 0x1000 + 7 * 16);
    }

    #[test]
    fn cap_fields() {
        // QEMU-like: MQES 0x7FF, CQR, TO 0x0F, DSTRD 0, NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x0040_0020_0F01_07FF);
        assert_eq!(cap.mqes(), 0x7FF);
        assert_eq!(cap.max_queue_entries(), 0x800);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 0x0F);
        assert_eq!(cap.timeout_ns(), 15 * 500_000_000);
        assert_eq!(cap.dstrd(), 0);
        assert!(cap.css_nvm());
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(Cap::build(0x7FF, true, 0x0F, 0, 0, 4), cap);
        // MQES of 0xFFFF means 65536 entries, not 0.
        assert_eq!(Cap(0xFFFF).max_queue_entries(), 65536);
        // TO of 0 still waits one unit.
        assert_eq!(Cap(0).timeout_ns(), 500_000_000);
    }

    #[test]
    fn cc_encoding() {
        let cc = Cc::ours().with_enable(true);
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(cc.mps(), 0);
        assert_eq!(cc.css(), 0);
        assert_eq!(cc.with_normal_shutdown().shn(), 1);
        assert!(!cc.with_enable(false).enabled());
    }

    #[test]
    fn csts_and_aqa() {
        assert!(Csts(1).ready());
        assert!(Csts(2).fatal());
        assert!(Csts(0b1000).shutdown_complete());
        assert!(Csts(u32::MAX).is_all_ones());
        let aqa = Aqa::new(32, 32);
        assert_eq!(aqa.0, 0x001F_001F);
        assert_eq!((aqa.sq_entries(), aqa.cq_entries()), (32, 32));
        assert_eq!(Aqa::new(4096, 2).0, 0x0001_0FFF);
    }
}
