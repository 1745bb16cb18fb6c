//! The PCI function contract. Implemented later over Xen pcifront and over
//! port I/O (0xCF8/0xCFC) for PVH under QEMU; a fake lives in
//! `fake::FakePci`. Offsets: PCI Local Bus 3.0 §6.1 (type 0 header).

/// Config-space offsets used here (PCI 3.0 §6.1, Figure 6-1).
pub mod cfg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const DEVICE_ID: u16 = 0x02;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION: u16 = 0x08;
    pub const PROG_IF: u16 = 0x09;
    pub const SUBCLASS: u16 = 0x0A;
    pub const CLASS: u16 = 0x0B;
    pub const HEADER_TYPE: u16 = 0x0E;
    pub const BAR0: u16 = 0x10;
    /// Command register bits (PCI 3.0 §6.2.2).
    pub const CMD_IO: u16 = 1 << 0;
    pub const CMD_MEMORY: u16 = 1 << 1;
    pub const CMD_BUS_MASTER: u16 = 1 << 2;
    pub const CMD_INTX_DISABLE: u16 = 1 << 10;
}

/// Class code of an NVMe controller: mass storage (01h), NVM (08h),
/// NVM Express programming interface (02h).
pub const NVME_CLASS: (u8, u8, u8) = (0x01, 0x08, 0x02);

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub base: u64,
    pub size: u64,
    pub prefetchable: bool,
}

/// A PCI function's configuration space.
pub trait PciDevice {
    fn config_read8(&mut self, offset: u16) -> u8;
    fn config_read16(&mut self, offset: u16) -> u16;
    fn config_read32(&mut self, offset: u16) -> u32;
    fn config_write8(&mut self, offset: u16, value: u8);
    fn config_write16(&mut self, offset: u16, value: u16);
    fn config_write32(&mut self, offset: u16, value: u32);

    /// (class, subclass, prog-if).
    fn class_code(&mut self) -> (u8, u8, u8) {
        (self.config_read8(cfg::CLASS), self.config_read8(cfg::SUBCLASS), self.config_read8(cfg::PROG_IF))
    }

    /// Decodes BAR `index` (0..=5) by the standard sizing probe: write all
    /// ones, read back the size mask, restore. Memory and I/O decoding are
    /// turned off during the probe. Transports that learn BARs another way
    /// (pcifront) may override this.
    fn bar(&mut self, index: u8) -> Option<Bar> {
        if index > 5 {
            return None;
        }
        let off = cfg::BAR0 + 4 * u16::from(index);
        let cmd = self.config_read16(cfg::COMMAND);
        self.config_write16(cfg::COMMAND, cmd & !(cfg::CMD_MEMORY | cfg::CMD_IO));
        let lo = self.config_read32(off);
        self.config_write32(off, 0xFFFF_FFFF);
        let lo_mask = self.config_read32(off);
        self.config_write32(off, lo);
        let result = if lo & 1 == 1 {
            let mask = lo_mask & !0x3;
            (mask != 0).then(|| Bar {
                kind: BarKind::Io,
                base: u64::from(lo & !0x3),
                size: u64::from((!mask).wrapping_add(1) & 0xFFFF),
                prefetchable: false,
            })
        } else {
            let prefetchable = lo & 0x8 != 0;
            match (lo >> 1) & 0x3 {
                0 => {
                    let mask = lo_mask & !0xF;
                    (mask != 0).then(|| Bar {
                        kind: BarKind::Mem32,
                        base: u64::from(lo & !0xF),
                        size: u64::from((!mask).wrapping_add(1)),
                        prefetchable,
                    })
                }
                2 if index < 5 => {
                    let hi = self.config_read32(off + 4);
                    self.config_write32(off + 4, 0xFFFF_FFFF);
                    let hi_mask = self.config_read32(off + 4);
                    self.config_write32(off + 4, hi);
                    let mask = (u64::from(hi_mask) << 32) | u64::from(lo_mask & !0xF);
                    (mask != 0).then(|| Bar {
                        kind: BarKind::Mem64,
                        base: (u64::from(hi) << 32) | u64::from(lo & !0xF),
                        size: (!mask).wrapping_add(1),
                        prefetchable,
                    })
                }
                _ => None,
            }
        };
        self.config_write16(cfg::COMMAND, cmd);
        result
    }

    /// Turns on memory decoding and bus mastering, and masks INTx (the
    /// drivers poll).
    fn enable_memory_and_bus_master(&mut self) {
        let cmd = self.config_read16(cfg::COMMAND);
        self.config_write16(cfg::COMMAND, cmd | cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER | cfg::CMD_INTX_DISABLE);
    }
}
