//! Finding the VT-d units: the ACPI RSDP, RSDT/XSDT and the DMAR table
//! (Intel VT-d spec §8: DMA Remapping Reporting Structure).
//!
//! Pure parsing over a caller-supplied physical-memory reader; every length
//! read from firmware is bounded and checked, and checksums are verified.

use alloc::vec;
use alloc::vec::Vec;

/// Why firmware tables could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No "RSD PTR " in the scanned ranges.
    NoRsdp,
    /// A table's checksum does not add up to zero.
    Checksum,
    /// A length field is out of bounds.
    BadLength,
    /// The reader failed (address not readable).
    Unreadable,
    /// The signature is not in the RSDT/XSDT.
    NotFound,
}

/// Reads physical memory: `false` if `[addr, addr + buf.len())` is not readable.
pub type Reader<'a> = &'a mut dyn FnMut(u64, &mut [u8]) -> bool;

/// Largest table accepted (a DMAR is a few hundred bytes).
const MAX_TABLE: u32 = 64 * 1024;
/// Most RSDT/XSDT entries followed.
const MAX_ENTRIES: usize = 64;

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Scans `[start, start + len)` on 16-byte boundaries for a valid RSDP and
/// returns its address.
pub fn find_rsdp(read: Reader<'_>, start: u64, len: u64) -> Option<u64> {
    let mut b = [0u8; 20];
    let mut at = start & !15;
    while at + 20 <= start + len {
        if read(at, &mut b) && &b[..8] == b"RSD PTR " && sum(&b) == 0 {
            return Some(at);
        }
        at += 16;
    }
    None
}

/// Reads a whole system description table at `addr`, checking its length
/// and checksum.
pub fn read_table(read: Reader<'_>, addr: u64) -> Result<Vec<u8>, AcpiError> {
    let mut h = [0u8; 36];
    if !read(addr, &mut h) {
        return Err(AcpiError::Unreadable);
    }
    let len = u32_at(&h, 4).ok_or(AcpiError::BadLength)?;
    if !(36..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::BadLength);
    }
    let mut t = vec![0u8; len as usize];
    if !read(addr, &mut t) {
        return Err(AcpiError::Unreadable);
    }
    if sum(&t) != 0 {
        return Err(AcpiError::Checksum);
    }
    Ok(t)
}

/// Finds the table with signature `sig` through the RSDP at `rsdp`
/// (XSDT when revision ≥ 2 and present, else RSDT).
pub fn find_table(read: Reader<'_>, rsdp: u64, sig: &[u8; 4]) -> Result<Vec<u8>, AcpiError> {
    let mut r = [0u8; 36];
    if !read(rsdp, &mut r[..20]) {
        return Err(AcpiError::Unreadable);
    }
    let rev = r[15];
    let (root, wide) = if rev >= 2 && read(rsdp, &mut r) && sum(&r) == 0 && u64_at(&r, 24) != Some(0) {
        (u64_at(&r, 24).ok_or(AcpiError::BadLength)?, true)
    } else {
        (u64::from(u32_at(&r, 16).ok_or(AcpiError::BadLength)?), false)
    };
    let t = read_table(read, root)?;
    let step = if wide { 8 } else { 4 };
    for e in t[36..].chunks_exact(step).take(MAX_ENTRIES) {
        let addr = if wide { u64_at(e, 0) } else { u32_at(e, 0).map(u64::from) }.ok_or(AcpiError::BadLength)?;
        let mut h = [0u8; 4];
        if read(addr, &mut h) && &h == sig {
            return read_table(read, addr);
        }
    }
    Err(AcpiError::NotFound)
}

/// A PCI endpoint named by a device scope (bus, device, function), or a
/// bridge's whole subtree (`subtree` true).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Scope type (1 endpoint, 2 bridge, 3 IOAPIC, 4 HPET, 5 ACPI namespace).
    pub kind: u8,
    /// Bus after following the path.
    pub bus: u8,
    /// Device/function of the last path element.
    pub devfn: u8,
}

/// DMA-remapping hardware unit definition (DRHD, §8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// INCLUDE_PCI_ALL: every device of the segment not claimed by another unit.
    pub include_all: bool,
    /// PCI segment.
    pub segment: u16,
    /// Register base address (4 KiB aligned).
    pub base: u64,
    /// Devices listed explicitly.
    pub scopes: Vec<Scope>,
}

/// Reserved memory region reporting (RMRR, §8.4): must stay mapped 1:1 for
/// the listed devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// PCI segment.
    pub segment: u16,
    /// First byte.
    pub base: u64,
    /// Last byte (inclusive).
    pub limit: u64,
    /// Devices using it.
    pub scopes: Vec<Scope>,
}

/// The DMAR table, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Host address width − 1 (HAW field).
    pub haw: u8,
    /// Flags (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN).
    pub flags: u8,
    /// Remapping units.
    pub units: Vec<Drhd>,
    /// Reserved regions.
    pub rmrrs: Vec<Rmrr>,
}

fn scopes(b: &[u8]) -> Vec<Scope> {
    let mut v = Vec::new();
    let mut o = 0;
    while o + 6 <= b.len() && v.len() < 256 {
        let kind = b[o];
        let len = b[o + 1] as usize;
        if len < 6 || o + len > b.len() {
            break;
        }
        let bus = b[o + 5];
        // The path's last (device, function) pair names the function; a
        // multi-element path crosses bridges whose secondary bus we cannot
        // read here, so only single-element paths are kept.
        if len == 8 {
            v.push(Scope { kind, bus, devfn: (b[o + 6] & 0x1f) << 3 | (b[o + 7] & 7) });
        }
        o += len;
    }
    v
}

impl Dmar {
    /// Parses a DMAR table (with its 36-byte header); checks the signature.
    pub fn parse(t: &[u8]) -> Result<Dmar, AcpiError> {
        if t.len() < 48 || &t[..4] != b"DMAR" {
            return Err(AcpiError::BadLength);
        }
        let mut d = Dmar { haw: t[36], flags: t[37], units: Vec::new(), rmrrs: Vec::new() };
        let mut o = 48;
        while o + 4 <= t.len() {
            let kind = u16_at(t, o).ok_or(AcpiError::BadLength)?;
            let len = u16_at(t, o + 2).ok_or(AcpiError::BadLength)? as usize;
            if len < 4 || o + len > t.len() {
                return Err(AcpiError::BadLength);
            }
            let s = &t[o..o + len];
            match kind {
                0 if len >= 16 => d.units.push(Drhd {
                    include_all: s[4] & 1 != 0,
                    segment: u16_at(s, 6).unwrap_or(0),
                    base: u64_at(s, 8).unwrap_or(0),
                    scopes: scopes(&s[16..]),
                }),
                1 if len >= 24 => d.rmrrs.push(Rmrr {
                    segment: u16_at(s, 6).unwrap_or(0),
                    base: u64_at(s, 8).unwrap_or(0),
                    limit: u64_at(s, 16).unwrap_or(0),
                    scopes: scopes(&s[24..]),
                }),
                _ => {}
            }
            o += len;
        }
        Ok(d)
    }

    /// The unit translating segment-0 device `bus:devfn`: one listing it,
    /// else the segment's INCLUDE_PCI_ALL unit.
    pub fn unit_for(&self, bus: u8, devfn: u8) -> Option<&Drhd> {
        let listed = self
            .units
            .iter()
            .find(|u| u.segment == 0 && u.scopes.iter().any(|s| s.kind == 1 && s.bus == bus && s.devfn == devfn));
        listed.or_else(|| self.units.iter().find(|u| u.segment == 0 && u.include_all))
    }

    /// RMRRs naming segment-0 device `bus:devfn`, as (first frame, pages).
    pub fn rmrrs_for(&self, bus: u8, devfn: u8) -> Vec<(u64, u64)> {
        self.rmrrs
            .iter()
            .filter(|r| {
                r.segment == 0 && r.limit >= r.base && r.scopes.iter().any(|s| s.bus == bus && s.devfn == devfn)
            })
            .map(|r| (r.base >> 12, ((r.limit >> 12) - (r.base >> 12)) + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fix(mut t: Vec<u8>) -> Vec<u8> {
        let n = t.len() as u32;
        t[4..8].copy_from_slice(&n.to_le_bytes());
        t[9] = 0;
        t[9] = 0u8.wrapping_sub(sum(&t));
        t
    }

    fn header(sig: &[u8; 4]) -> Vec<u8> {
        let mut h = vec![0u8; 36];
        h[..4].copy_from_slice(sig);
        h
    }

    /// QEMU q35's DMAR: HAW 38, one INCLUDE_PCI_ALL unit at 0xfed90000.
    fn qemu_dmar() -> Vec<u8> {
        let mut t = header(b"DMAR");
        t.extend_from_slice(&[38, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // DRHD: type 0, len 16, flags INCLUDE_PCI_ALL, seg 0, base.
        t.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 0]);
        t.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
        // RMRR for 00:1f.2 over 0xe0000..0xeffff.
        t.extend_from_slice(&[1, 0, 32, 0, 0, 0, 0, 0]);
        t.extend_from_slice(&0xe0000u64.to_le_bytes());
        t.extend_from_slice(&0xeffffu64.to_le_bytes());
        t.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0x1f, 2]);
        fix(t)
    }

    fn memory() -> BTreeMap<u64, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.push(0); // checksum
        rsdp.extend_from_slice(b"BOCHS ");
        rsdp.push(0); // revision 0: RSDT
        rsdp.extend_from_slice(&0x7000u32.to_le_bytes());
        rsdp[8] = 0u8.wrapping_sub(sum(&rsdp));
        m.insert(0xf5a40, rsdp);
        let mut rsdt = header(b"RSDT");
        rsdt.extend_from_slice(&0x8000u32.to_le_bytes());
        rsdt.extend_from_slice(&0x9000u32.to_le_bytes());
        m.insert(0x7000, fix(rsdt));
        m.insert(0x8000, fix(header(b"FACP")));
        m.insert(0x9000, qemu_dmar());
        m
    }

    fn reader(m: &BTreeMap<u64, Vec<u8>>) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        move |a, b| {
            for (base, v) in m {
                if a >= *base && a + b.len() as u64 <= base + v.len() as u64 {
                    let o = (a - base) as usize;
                    b.copy_from_slice(&v[o..o + b.len()]);
                    return true;
                }
            }
            b.fill(0);
            true
        }
    }

    #[test]
    fn finds_dmar_through_rsdt() {
        let m = memory();
        let mut r = reader(&m);
        let rsdp = find_rsdp(&mut r, 0xe0000, 0x20000).unwrap();
        assert_eq!(rsdp, 0xf5a40);
        let t = find_table(&mut r, rsdp, b"DMAR").unwrap();
        let d = Dmar::parse(&t).unwrap();
        assert_eq!((d.haw, d.flags), (38, 1));
        assert_eq!(d.units.len(), 1);
        let u = d.unit_for(0, 3 << 3).unwrap();
        assert_eq!((u.base, u.include_all), (0xfed9_0000, true));
        assert_eq!(d.rmrrs_for(0, 0x1f << 3 | 2), [(0xe0, 0x10)]);
        assert!(d.rmrrs_for(0, 3 << 3).is_empty());
        assert_eq!(find_table(&mut r, rsdp, b"APIC"), Err(AcpiError::NotFound));
    }

    #[test]
    fn hostile_tables_are_refused() {
        let mut t = qemu_dmar();
        t[50] = 0xff; // DRHD length beyond the table
        let n = t.len();
        t[9] = t[9].wrapping_sub(sum(&t[..n]));
        assert_eq!(Dmar::parse(&t), Err(AcpiError::BadLength));
        let mut m = memory();
        m.get_mut(&0x9000).unwrap()[40] ^= 1; // checksum broken
        let mut r = reader(&m);
        assert_eq!(find_table(&mut r, 0xf5a40, b"DMAR"), Err(AcpiError::Checksum));
    }
}
