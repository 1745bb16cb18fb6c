use alloc::vec;
use alloc::vec::Vec;

use crate::pci::{cfg, PciDevice};

/// A type-0 config space with BAR sizing behaviour: writing all ones to a
/// BAR reads back its size mask.
#[derive(Clone, Debug)]
pub struct FakePci {
    space: Vec<u8>,
    /// Size of each BAR (0 = unimplemented); 64-bit BARs use two slots.
    bar_sizes: [u64; 6],
}

impl FakePci {
    /// An NVMe controller (class 01/08/02) with a 64-bit, 16 KiB BAR0 at
    /// `bar0`.
    pub fn nvme(vendor: u16, device: u16, bar0: u64) -> Self {
        let mut f = FakePci { space: vec![0; 256], bar_sizes: [0; 6] };
        f.space[0..2].copy_from_slice(&vendor.to_le_bytes());
        f.space[2..4].copy_from_slice(&device.to_le_bytes());
        f.space[cfg::PROG_IF as usize] = 0x02;
        f.space[cfg::SUBCLASS as usize] = 0x08;
        f.space[cfg::CLASS as usize] = 0x01;
        let lo = (bar0 as u32 & !0xF) | 0b100; // memory, 64-bit
        f.space[0x10..0x14].copy_from_slice(&lo.to_le_bytes());
        f.space[0x14..0x18].copy_from_slice(&((bar0 >> 32) as u32).to_le_bytes());
        f.bar_sizes[0] = 0x4000;
        f
    }
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.space[4], self.space[5]])
    }
    fn bar_write(&mut self, off: usize, v: u32) {
        let idx = (off - 0x10) / 4;
        let old = u32::from_le_bytes(self.space[off..off + 4].try_into().unwrap_or([0; 4]));
        // Upper half of a 64-bit BAR belongs to the BAR below it.
        let (size, upper) = if idx > 0 && self.bar_sizes[idx] == 0 && self.bar_sizes[idx - 1] != 0 {
            (self.bar_sizes[idx - 1], true)
        } else {
            (self.bar_sizes[idx], false)
        };
        let mask = !(size.wrapping_sub(1));
        let new = if size == 0 {
            0
        } else if upper {
            (u64::from(v) << 32 & mask) >> 32
        } else {
            (u64::from(v) & mask & !0xF) | u64::from(old & 0xF)
        } as u32;
        self.space[off..off + 4].copy_from_slice(&new.to_le_bytes());
    }
}

impl PciDevice for FakePci {
    fn config_read8(&mut self, offset: u16) -> u8 {
        self.space.get(offset as usize).copied().unwrap_or(0xFF)
    }
    fn config_read16(&mut self, offset: u16) -> u16 {
        u16::from(self.config_read8(offset)) | (u16::from(self.config_read8(offset + 1)) << 8)
    }
    fn config_read32(&mut self, offset: u16) -> u32 {
        u32::from(self.config_read16(offset)) | (u32::from(self.config_read16(offset + 2)) << 16)
    }
    fn config_write8(&mut self, offset: u16, value: u8) {
        if let Some(b) = self.space.get_mut(offset as usize) {
            *b = value;
        }
    }
    fn config_write16(&mut self, offset: u16, value: u16) {
        self.config_write8(offset, value as u8);
        self.config_write8(offset + 1, (value >> 8) as u8);
    }
    fn config_write32(&mut self, offset: u16, value: u32) {
        let o = offset as usize;
        if (0x10..0x28).contains(&o) && o.is_multiple_of(4) {
            self.bar_write(o, value);
        } else {
            self.config_write16(offset, value as u16);
            self.config_write16(offset + 2, (value >> 16) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{Bar, BarKind, NVME_CLASS};

    #[test]
    fn bar_probe_and_enable() {
        let mut p = FakePci::nvme(0x1B36, 0x0010, 0x1_FEB0_0000);
        assert_eq!(p.class_code(), NVME_CLASS);
        let bar = p.bar(0).unwrap();
        assert_eq!(bar, Bar { kind: BarKind::Mem64, base: 0x1_FEB0_0000, size: 0x4000, prefetchable: false });
        assert_eq!(p.bar(2), None);
        // Probe restored the original value.
        assert_eq!(p.config_read32(0x10), 0xFEB0_0004);
        p.enable_memory_and_bus_master();
        assert_eq!(p.command() & (cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER), cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER);
    }
}
