//! [`Hardware`] for a real VT-d remapping unit, over a register-access trait.
//!
//! The raw volatile accesses live in the runtime's HAL, which implements
//! [`RegisterAccess`] for the unit's 4 KiB register page; everything here is
//! safe: register offsets and bits (§10.4), the GCMD/GSTS handshakes with
//! deadlines, the queued-invalidation registers and the fault recording
//! registers. Time comes from the caller's clock (`now` in nanoseconds).
//!
//! Errors the [`Hardware`] methods cannot return (they return nothing) are
//! latched in [`MmioVtd::error`]; the owner checks it after setup and after
//! every queue tail write.

use crate::hw::{Hardware, DESC_SIZE};
use crate::mem::PhysMem;
use crate::types::{Mfn, Sid};
use crate::vtd::{AddrWidth, FaultRecord};

/// Register offsets, §10.4.
pub mod reg {
    /// VER_REG: architecture version (major 7:4, minor 3:0).
    pub const VER: usize = 0x00;
    /// CAP_REG.
    pub const CAP: usize = 0x08;
    /// ECAP_REG.
    pub const ECAP: usize = 0x10;
    /// GCMD_REG (32-bit, write-only).
    pub const GCMD: usize = 0x18;
    /// GSTS_REG (32-bit, read-only).
    pub const GSTS: usize = 0x1c;
    /// RTADDR_REG (64-bit).
    pub const RTADDR: usize = 0x20;
    /// FSTS_REG (32-bit).
    pub const FSTS: usize = 0x34;
    /// FECTL_REG (32-bit).
    pub const FECTL: usize = 0x38;
    /// IQH_REG (64-bit).
    pub const IQH: usize = 0x80;
    /// IQT_REG (64-bit).
    pub const IQT: usize = 0x88;
    /// IQA_REG (64-bit).
    pub const IQA: usize = 0x90;
}

/// GCMD/GSTS bits, §10.4.4/§10.4.5 (same positions in both).
pub mod gcmd {
    /// TE / TES: translation enable.
    pub const TE: u32 = 1 << 31;
    /// SRTP / RTPS: set (latch) root table pointer.
    pub const SRTP: u32 = 1 << 30;
    /// QIE / QIES: queued invalidation enable.
    pub const QIE: u32 = 1 << 26;
    /// One-shot command bits that must never be echoed back into GCMD
    /// (SRTP, SFL, WBF, SIRTP); the rest are persistent enables.
    pub const ONE_SHOT: u32 = (1 << 30) | (1 << 29) | (1 << 27) | (1 << 24);
}

/// FSTS bits, §10.4.9.
pub mod fsts {
    /// PFO: primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// PPF: primary pending fault (RO; some FRCD has F set).
    pub const PPF: u32 = 1 << 1;
    /// IQE: invalidation queue error (RW1C).
    pub const IQE: u32 = 1 << 4;
    /// ICE: invalidation completion error (RW1C).
    pub const ICE: u32 = 1 << 5;
    /// ITE: invalidation time-out error (RW1C).
    pub const ITE: u32 = 1 << 6;
}

/// The unit's registers as the HAL exposes them (`&self`: registers are
/// interior-mutable by nature): naturally aligned volatile accesses at byte offsets inside the 4 KiB register page. A write is
/// ordered after all earlier stores to memory (the invalidation descriptors
/// and tables the unit will read).
pub trait RegisterAccess {
    /// 32-bit read.
    fn read32(&self, off: usize) -> u32;
    /// 32-bit write.
    fn write32(&self, off: usize, v: u32);
    /// 64-bit read (may be two 32-bit reads, low half first).
    fn read64(&self, off: usize) -> u64 {
        let lo = self.read32(off) as u64;
        lo | (self.read32(off + 4) as u64) << 32
    }
    /// 64-bit write (may be two 32-bit writes, low half first).
    fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

/// Capability register fields (§10.4.2), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Raw CAP_REG.
    pub cap: u64,
    /// Raw ECAP_REG.
    pub ecap: u64,
}

impl Caps {
    /// SAGAW bits 12:8.
    pub fn sagaw(self) -> u8 {
        ((self.cap >> 8) & 0x1f) as u8
    }
    /// CM bit 7.
    pub fn caching_mode(self) -> bool {
        self.cap & (1 << 7) != 0
    }
    /// ND bits 2:0 → 2^(4 + 2·ND) domain ids.
    pub fn domain_ids(self) -> u32 {
        1u32 << (4 + 2 * (self.cap & 7) as u32).min(16)
    }
    /// FRO bits 33:24: fault recording registers at FRO·16.
    pub fn fault_offset(self) -> usize {
        (((self.cap >> 24) & 0x3ff) as usize) * 16
    }
    /// NFR bits 47:40: number of fault recording registers − 1.
    pub fn fault_records(self) -> usize {
        ((self.cap >> 40) & 0xff) as usize + 1
    }
    /// MGAW bits 21:16: maximum guest address width − 1.
    pub fn mgaw(self) -> u32 {
        ((self.cap >> 16) & 0x3f) as u32 + 1
    }
    /// ECAP.QI bit 1: queued invalidation supported.
    pub fn queued_invalidation(self) -> bool {
        self.ecap & (1 << 1) != 0
    }
    /// ECAP.DT bit 2: device-TLB (ATS) supported.
    pub fn device_tlb(self) -> bool {
        self.ecap & (1 << 2) != 0
    }
    /// ECAP.C bit 0: page-walk coherency (no cache flushes needed).
    pub fn coherent(self) -> bool {
        self.ecap & 1 != 0
    }
    /// The width the core uses: 48-bit if supported, else 39-bit.
    pub fn addr_width(self) -> Option<AddrWidth> {
        if self.sagaw() & 0b100 != 0 {
            Some(AddrWidth::Aw48)
        } else if self.sagaw() & 0b010 != 0 {
            Some(AddrWidth::Aw39)
        } else {
            None
        }
    }
}

/// What went wrong with the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwError {
    /// VER_REG read as all-ones or zero: no unit at this address.
    NoUnit,
    /// Neither 39- nor 48-bit second-level tables (SAGAW).
    NoUsableWidth,
    /// ECAP.QI clear: the core needs queued invalidation.
    NoQueuedInvalidation,
    /// A GSTS bit did not follow GCMD before the deadline.
    Handshake {
        /// The GSTS bit waited for.
        bit: u32,
        /// Whether it was to become set.
        set: bool,
    },
    /// FSTS.IQE: the unit refused a descriptor (queue stopped).
    QueueError,
}

/// How long a GCMD/GSTS handshake may take before it is declared failed.
pub const HANDSHAKE_TIMEOUT_NS: u64 = 1_000_000_000;

/// A VT-d unit behind [`RegisterAccess`].
pub struct MmioVtd<R: RegisterAccess> {
    regs: R,
    now: fn() -> u64,
    caps: Caps,
    aw: AddrWidth,
    /// Latched persistent enables (TE, QIE) we have set; GCMD writes carry them.
    enables: u32,
    error: Option<HwError>,
    entries: u32,
}

impl<R: RegisterAccess> MmioVtd<R> {
    /// Probes the unit: VER sane, a usable width, QI supported. If firmware
    /// left translation or queued invalidation on, they are turned off
    /// first, so caches start empty under our tables.
    pub fn probe(regs: R, now: fn() -> u64) -> Result<Self, HwError> {
        let ver = regs.read32(reg::VER);
        if ver == 0 || ver == u32::MAX {
            return Err(HwError::NoUnit);
        }
        let caps = Caps { cap: regs.read64(reg::CAP), ecap: regs.read64(reg::ECAP) };
        if caps.cap == u64::MAX {
            return Err(HwError::NoUnit);
        }
        let aw = caps.addr_width().ok_or(HwError::NoUsableWidth)?;
        if !caps.queued_invalidation() {
            return Err(HwError::NoQueuedInvalidation);
        }
        let mut u = MmioVtd { regs, now, caps, aw, enables: 0, error: None, entries: 0 };
        let st = u.regs.read32(reg::GSTS);
        if st & gcmd::TE != 0 {
            u.enables = st & !gcmd::ONE_SHOT & !gcmd::TE;
            u.command(0, gcmd::TE, false)?;
        }
        let st = u.regs.read32(reg::GSTS);
        if st & gcmd::QIE != 0 {
            u.enables = st & !gcmd::ONE_SHOT & !gcmd::QIE;
            u.command(0, gcmd::QIE, false)?;
        }
        u.enables = 0;
        Ok(u)
    }

    /// Version register: (major, minor).
    pub fn version(&self) -> (u8, u8) {
        let v = self.regs.read32(reg::VER);
        (((v >> 4) & 0xf) as u8, (v & 0xf) as u8)
    }

    /// The registers (for diagnostics: reading RTADDR, IQA, ...).
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// Decoded capabilities.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The first error latched by a method that cannot return one.
    pub fn error(&self) -> Option<HwError> {
        self.error
    }

    /// GSTS, raw.
    pub fn status(&self) -> u32 {
        self.regs.read32(reg::GSTS)
    }

    /// FSTS, raw.
    pub fn fault_status(&self) -> u32 {
        self.regs.read32(reg::FSTS)
    }

    fn latch(&mut self, e: HwError) {
        self.error.get_or_insert(e);
    }

    /// Writes GCMD with the persistent enables plus `extra`, then waits for
    /// GSTS `bit` to become `set` (bounded by [`HANDSHAKE_TIMEOUT_NS`]).
    fn command(&mut self, extra: u32, bit: u32, set: bool) -> Result<(), HwError> {
        self.regs.write32(reg::GCMD, self.enables | extra);
        let deadline = (self.now)().saturating_add(HANDSHAKE_TIMEOUT_NS);
        loop {
            let st = self.regs.read32(reg::GSTS);
            if (st & bit != 0) == set {
                return Ok(());
            }
            if (self.now)() > deadline {
                return Err(HwError::Handshake { bit, set });
            }
            core::hint::spin_loop();
        }
    }

    fn set_enable(&mut self, bit: u32) -> Result<(), HwError> {
        self.command(bit, bit, true)?;
        self.enables |= bit;
        Ok(())
    }
}

impl<R: RegisterAccess> Hardware for MmioVtd<R> {
    fn addr_width(&self) -> AddrWidth {
        self.aw
    }

    fn caching_mode(&self) -> bool {
        self.caps.caching_mode()
    }

    fn domain_ids(&self) -> u32 {
        self.caps.domain_ids()
    }

    /// RTADDR ← root (TTM=00b legacy mode), SRTP → RTPS, then TE → TES.
    /// Translation was off since [`MmioVtd::probe`], so no context or IOTLB
    /// entry can be cached from earlier tables.
    fn set_root_table(&mut self, _mem: &mut dyn PhysMem, root: Mfn) {
        self.regs.write64(reg::RTADDR, root.addr());
        let r = self.command(gcmd::SRTP, gcmd::SRTP, true).and_then(|()| self.set_enable(gcmd::TE));
        if let Err(e) = r {
            self.latch(e);
        }
    }

    /// IQT ← 0, IQA ← base | QS (DW=0: 128-bit descriptors), QIE → QIES.
    fn enable_queue(&mut self, _mem: &mut dyn PhysMem, base: Mfn, order: u8) {
        self.regs.write64(reg::IQT, 0);
        self.regs.write64(reg::IQA, base.addr() | (order as u64 & 7));
        self.entries = crate::hw::DESCS_PER_PAGE << order;
        if let Err(e) = self.set_enable(gcmd::QIE) {
            self.latch(e);
        }
    }

    fn set_queue_tail(&mut self, _mem: &mut dyn PhysMem, tail: u32) {
        if tail >= self.entries {
            self.latch(HwError::QueueError);
            return;
        }
        // RegisterAccess orders this write after the descriptor stores.
        self.regs.write64(reg::IQT, tail as u64 * DESC_SIZE);
        if self.regs.read32(reg::FSTS) & fsts::IQE != 0 {
            self.latch(HwError::QueueError);
        }
    }

    fn queue_head(&self) -> u32 {
        // IQH bits 18:4 hold the index of the next descriptor to fetch.
        ((self.regs.read64(reg::IQH) >> 4) & 0x7fff) as u32
    }

    fn abort_device_tlb(&mut self, _mem: &mut dyn PhysMem, _sid: Sid) {
        // Clear ITE (RW1C) so the queue resumes. Disabling the device's ATS
        // in its config space is the caller's job (the core has no config
        // access); devices here have no ATS.
        self.regs.write32(reg::FSTS, fsts::ITE);
    }

    fn take_fault(&mut self) -> Option<FaultRecord> {
        let st = self.regs.read32(reg::FSTS);
        if st & fsts::PFO != 0 {
            self.regs.write32(reg::FSTS, fsts::PFO);
        }
        if st & fsts::PPF == 0 {
            return None;
        }
        let n = self.caps.fault_records();
        let first = ((st >> 8) & 0xff) as usize % n;
        for k in 0..n {
            let at = self.caps.fault_offset() + ((first + k) % n) * 16;
            let hi = self.regs.read64(at + 8);
            if hi & (1 << 63) == 0 {
                continue;
            }
            let lo = self.regs.read64(at);
            // F is RW1C in the top dword.
            self.regs.write32(at + 12, 1 << 31);
            return Some(FaultRecord { lo, hi });
        }
        None
    }

    fn coherent(&self) -> bool {
        self.caps.coherent()
    }

    /// CLFLUSH through the memory owner ([`PhysMem::write_back`]), only on a
    /// unit that does not snoop (ECAP.C = 0); a coherent unit needs nothing.
    fn flush_cache(&mut self, mem: &mut dyn PhysMem, pa: u64, len: u64) {
        if !self.caps.coherent() {
            mem.write_back(pa, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::VecMemory;
    use crate::vtd::FaultReason;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    static CLOCK: AtomicU64 = AtomicU64::new(0);
    /// Each reading advances 1 ms, so a stuck handshake times out quickly.
    fn tick() -> u64 {
        CLOCK.fetch_add(1_000_000, Ordering::Relaxed)
    }

    /// A register file that behaves like the unit: GCMD drives GSTS (unless
    /// `stuck`), SRTP sets RTPS, FSTS and F bits are write-1-to-clear.
    #[derive(Default)]
    struct Fake {
        r: RefCell<BTreeMap<usize, u32>>,
        gcmd_writes: RefCell<Vec<u32>>,
        stuck: bool,
    }

    impl Fake {
        fn unit(cap: u64, ecap: u64) -> Fake {
            let f = Fake::default();
            f.write64_raw(reg::VER, 0x10);
            f.write64_raw(reg::CAP, cap);
            f.write64_raw(reg::ECAP, ecap);
            f
        }
        fn write64_raw(&self, off: usize, v: u64) {
            let mut r = self.r.borrow_mut();
            r.insert(off, v as u32);
            r.insert(off + 4, (v >> 32) as u32);
        }
    }

    impl RegisterAccess for Fake {
        fn read32(&self, off: usize) -> u32 {
            self.r.borrow().get(&off).copied().unwrap_or(0)
        }
        fn write32(&self, off: usize, v: u32) {
            let mut r = self.r.borrow_mut();
            match off {
                reg::GCMD => {
                    self.gcmd_writes.borrow_mut().push(v);
                    if !self.stuck {
                        let st = (v & !gcmd::ONE_SHOT) | if v & gcmd::SRTP != 0 { gcmd::SRTP } else { 0 };
                        r.insert(reg::GSTS, st);
                    }
                }
                reg::FSTS => {
                    let old = r.get(&off).copied().unwrap_or(0);
                    r.insert(off, old & !(v & 0x7d));
                }
                o if o >= 0x220 && o % 16 == 12 => {
                    let old = r.get(&o).copied().unwrap_or(0);
                    r.insert(o, old & !(v & (1 << 31)));
                    // PPF follows the F bits.
                    let fs = r.get(&reg::FSTS).copied().unwrap_or(0);
                    r.insert(reg::FSTS, fs & !fsts::PPF);
                }
                _ => {
                    r.insert(off, v);
                }
            }
        }
    }

    // QEMU's values: SAGAW 39-bit, CM, ND=6, FRO 0x22, NFR 0; ECAP QI|DT.
    const CAP: u64 = 0x00d2_008c_2226_0286;
    const ECAP: u64 = 0xf46;

    #[test]
    fn probe_decodes_and_refuses() {
        let u = MmioVtd::probe(Fake::unit(CAP, ECAP), tick).unwrap();
        let c = u.caps();
        assert_eq!(u.addr_width(), AddrWidth::Aw39);
        assert!(u.caching_mode() && c.queued_invalidation() && c.device_tlb());
        assert_eq!((c.fault_offset(), c.fault_records(), c.mgaw()), (0x220, 1, 39));
        assert_eq!(u.domain_ids(), 1 << 16);
        assert_eq!(u.version(), (1, 0));
        assert!(matches!(MmioVtd::probe(Fake::default(), tick), Err(HwError::NoUnit)));
        assert!(matches!(MmioVtd::probe(Fake::unit(CAP, 0), tick), Err(HwError::NoQueuedInvalidation)));
        assert!(matches!(MmioVtd::probe(Fake::unit(CAP & !(0x1f << 8), ECAP), tick), Err(HwError::NoUsableWidth)));
    }

    #[test]
    fn enable_sequence_keeps_enables_and_never_echoes_one_shots() {
        let mut mem = VecMemory::new(Mfn(0x100), 4);
        let mut u = MmioVtd::probe(Fake::unit(CAP, ECAP), tick).unwrap();
        u.enable_queue(&mut mem, Mfn(0x123), 0);
        u.set_root_table(&mut mem, Mfn(0x456));
        assert_eq!(u.error(), None);
        assert_eq!(u.regs().read64(reg::IQA), 0x123_000);
        assert_eq!(u.regs().read64(reg::RTADDR), 0x456_000);
        let st = u.status();
        assert_eq!(st & (gcmd::TE | gcmd::QIE), gcmd::TE | gcmd::QIE);
        let w = u.regs().gcmd_writes.borrow().clone();
        assert_eq!(w, [gcmd::QIE, gcmd::QIE | gcmd::SRTP, gcmd::QIE | gcmd::TE]);
        u.set_queue_tail(&mut mem, 5);
        assert_eq!(u.regs().read64(reg::IQT), 5 << 4);
        u.regs().write64_raw(reg::IQH, 3 << 4);
        assert_eq!(u.queue_head(), 3);
        u.set_queue_tail(&mut mem, 256);
        assert_eq!(u.error(), Some(HwError::QueueError), "tail beyond the ring is refused");
    }

    #[test]
    fn stuck_handshake_is_latched_not_spun_forever() {
        let mut mem = VecMemory::new(Mfn(0x100), 4);
        let mut f = Fake::unit(CAP, ECAP);
        f.stuck = true;
        let mut u = MmioVtd::probe(f, tick).unwrap();
        u.set_root_table(&mut mem, Mfn(1));
        assert_eq!(u.error(), Some(HwError::Handshake { bit: gcmd::SRTP, set: true }));
    }

    /// Memory that records write-back requests.
    #[derive(Default)]
    struct Flushes(Vec<(u64, u64)>);

    impl PhysMem for Flushes {
        fn read_u64(&self, _pa: u64) -> Option<u64> {
            Some(0)
        }
        fn write_u64(&mut self, _pa: u64, _v: u64) {}
        fn write_back(&mut self, pa: u64, len: u64) {
            self.0.push((pa, len));
        }
    }

    #[test]
    fn cache_flush_follows_ecap_c() {
        // QEMU's ECAP has C = 0: flushes go to the memory owner (CLFLUSH).
        let mut u = MmioVtd::probe(Fake::unit(CAP, ECAP), tick).unwrap();
        assert!(!u.coherent() && !u.caps().coherent());
        let mut m = Flushes::default();
        u.flush_cache(&mut m, 0x1234_5008, 8);
        assert_eq!(m.0, [(0x1234_5008, 8)]);
        // C = 1: the unit snoops; nothing to write back.
        let mut u = MmioVtd::probe(Fake::unit(CAP, ECAP | 1), tick).unwrap();
        assert!(u.coherent());
        let mut m = Flushes::default();
        u.flush_cache(&mut m, 0x1234_5008, 8);
        assert!(m.0.is_empty());
    }

    #[test]
    fn fault_records_are_read_and_cleared() {
        let mut u = MmioVtd::probe(Fake::unit(CAP, ECAP), tick).unwrap();
        assert_eq!(u.take_fault(), None);
        let rec = FaultRecord::new(0x0008, 0xfec0_c000, true, FaultReason::Write);
        u.regs().write64_raw(0x220, rec.lo);
        u.regs().write64_raw(0x228, rec.hi);
        u.regs().write64_raw(reg::FSTS, (fsts::PPF | fsts::PFO) as u64);
        let f = u.take_fault().unwrap();
        assert_eq!((f.sid(), f.addr(), f.reason(), f.is_write()), (8, 0xfec0_c000, 5, true));
        assert_eq!(u.regs().read32(0x22c) >> 31, 0, "F cleared");
        assert_eq!(u.fault_status() & fsts::PFO, 0, "overflow cleared");
        assert_eq!(u.take_fault(), None);
    }
}
