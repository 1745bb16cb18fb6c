//! The Xen PCI frontend (`xen/include/public/io/pciif.h`): configuration
//! space of passed-through devices, through pciback in the backend domain.
//!
//! Handshake (xenstore, frontend dir `device/pci/0`): we grant the backend
//! one page holding `struct xen_pci_sharedinfo`, allocate an event channel,
//! write `pci-op-ref`, `event-channel`, `magic` = "7" and switch to
//! Initialised; once the backend is Connected we read its device list
//! (`num_devs`, `vdev-N` = "dddd:bb:ss.f", the addresses as we see them) and
//! switch to Connected.
//!
//! An operation: fill `op`, set `XEN_PCIF_active` in `flags`, notify, and
//! wait until the backend clears the bit; then read `err` and `value`.
//! The backend is trusted no further than necessary: every wait has a
//! deadline and every value it wrote is checked.
#![forbid(unsafe_code)]

use crate::evtchn::EventOps;
use crate::gnttab::{GrantError, GrantOps};
use crate::shmem::SharedMem;
use crate::types::{DomId, EvtchnPort, GrantRef, Pfn};
use crate::wait::{Nanos, Notifier};
use crate::xenstore::{XsClient, XsError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};

/// `struct xen_pci_op` (548 bytes; `msix_entries` left out of the view).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct XenPciOp {
    pub cmd: u32,
    pub err: i32,
    pub domain: u32,
    pub bus: u32,
    pub devfn: u32,
    pub offset: i32,
    pub size: i32,
    pub value: u32,
    pub info: u32,
}
const _: () = {
    assert!(size_of::<XenPciOp>() == 36);
    assert!(offset_of!(XenPciOp, devfn) == 16);
    assert!(offset_of!(XenPciOp, value) == 28);
};

/// Offsets in the shared page (`struct xen_pci_sharedinfo`).
pub mod layout {
    /// `flags` (u32).
    pub const FLAGS: usize = 0;
    /// `op` (struct xen_pci_op, 548 bytes with its MSI-X table).
    pub const OP: usize = 4;
    /// Size of `op` including `msix_entries[128]`.
    pub const OP_SIZE: usize = 36 + 128 * 4;
    /// `aer_op` follows `op`.
    pub const AER_OP: usize = OP + OP_SIZE;
    /// Whole structure.
    pub const SHAREDINFO_SIZE: usize = AER_OP + 20;
}
const _: () = assert!(layout::SHAREDINFO_SIZE == 572);

/// `flags` bit: an operation is pending for the backend.
pub const XEN_PCIF_ACTIVE: u32 = 1 << 0;
pub const OP_CONF_READ: u32 = 0;
pub const OP_CONF_WRITE: u32 = 1;
pub const OP_ENABLE_MSI: u32 = 2;
pub const OP_DISABLE_MSI: u32 = 3;
pub const OP_ENABLE_MSIX: u32 = 4;
pub const OP_DISABLE_MSIX: u32 = 5;
/// `SH_INFO_MAX_VEC`: MSI-X entries the shared page can carry.
pub const MAX_MSIX_ENTRIES: usize = 128;
/// `XEN_PCI_MAGIC`.
pub const MAGIC: &str = "7";

/// Xenbus states (`io/xenbus.h`).
pub mod state {
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// A PCI function address (segment, bus, device/function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub devfn: u8,
}

impl PciAddr {
    /// Parses "dddd:bb:ss.f" (hex), as pciback writes it.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (dom, rest) = s.trim().split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (slot, func) = rest.split_once('.')?;
        let domain = u32::from_str_radix(dom, 16).ok().filter(|_| dom.len() <= 8)?;
        let bus = u8::from_str_radix(bus, 16).ok()?;
        let slot = u8::from_str_radix(slot, 16).ok().filter(|s| *s < 32)?;
        let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
        Some(PciAddr { domain, bus, devfn: slot << 3 | func })
    }
}

impl core::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.domain, self.bus, self.devfn >> 3, self.devfn & 7)
    }
}

/// Why a PCI frontend operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciError {
    /// Xenstore failed.
    Xs(XsError),
    /// A key is missing or malformed.
    BadKey(String),
    /// Granting the page failed.
    Grant(GrantError),
    /// Event channel allocation failed.
    Evtchn(crate::error::XenError),
    /// The backend reported an error (XEN_PCI_ERR_*).
    Backend(i32),
    /// The backend did not answer before the deadline.
    Timeout,
    /// The backend is closing or closed.
    BackendGone(u32),
    /// A request the frontend refuses to send (bad size or offset).
    Invalid,
}

impl From<XsError> for PciError {
    fn from(e: XsError) -> Self {
        PciError::Xs(e)
    }
}

/// State after [`start`]: keys written, waiting for the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub frontend: String,
    pub backend: String,
    pub backend_id: DomId,
    pub gref: GrantRef,
    pub port: EvtchnPort,
}

/// A connected frontend: the devices the backend exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub pending: Pending,
    pub devices: Vec<PciAddr>,
    /// Each device's machine address (the backend's `dev-N`), as the
    /// hypervisor names it (PV-IOMMU's `reattach_device`); `None` when the
    /// backend did not give a readable one. Same order as `devices`.
    pub machine: Vec<Option<PciAddr>>,
}

fn read_num<M: SharedMem, N: Notifier>(xs: &mut XsClient<M, N>, path: &str) -> Result<u32, PciError> {
    let s = xs.read_string(path)?;
    s.trim().parse::<u32>().map_err(|_| PciError::BadKey(format!("{path} = {s:?}")))
}

/// Writes our side of the handshake for frontend directory `fe` (for
/// example `device/pci/0`). `page` must hold zeroes and stays ours.
pub fn start<M: SharedMem, N: Notifier>(
    xs: &mut XsClient<M, N>,
    ev: &mut impl EventOps,
    gt: &mut impl GrantOps,
    fe: &str,
    page: Pfn,
) -> Result<Pending, PciError> {
    let backend = xs.read_string(&format!("{fe}/backend"))?;
    let backend_id = read_num(xs, &format!("{fe}/backend-id"))?;
    let backend_id =
        DomId(u16::try_from(backend_id).map_err(|_| PciError::BadKey(format!("backend-id {backend_id}")))?);
    let gref = gt.grant_access(backend_id, page, false).map_err(PciError::Grant)?;
    let port = ev.alloc_unbound(backend_id).map_err(PciError::Evtchn)?;
    let (g, p) = (format!("{}", gref.0), format!("{}", port.0));
    xs.transaction(8, |tx| {
        tx.write(&format!("{fe}/pci-op-ref"), g.as_bytes())?;
        tx.write(&format!("{fe}/event-channel"), p.as_bytes())?;
        tx.write(&format!("{fe}/magic"), MAGIC.as_bytes())?;
        tx.write(&format!("{fe}/state"), b"3")
    })?;
    Ok(Pending { frontend: String::from(fe), backend, backend_id, gref, port })
}

/// Checks whether the backend has connected; if so reads its devices and
/// switches us to Connected. `Ok(None)`: not yet, call again later.
pub fn poll_connected<M: SharedMem, N: Notifier>(
    xs: &mut XsClient<M, N>,
    p: &Pending,
) -> Result<Option<Connected>, PciError> {
    let st = read_num(xs, &format!("{}/state", p.backend))?;
    match st {
        state::CONNECTED => {}
        state::CLOSING | state::CLOSED => return Err(PciError::BackendGone(st)),
        _ => return Ok(None),
    }
    let n = read_num(xs, &format!("{}/num_devs", p.backend))?;
    let mut devices = Vec::new();
    let mut machine = Vec::new();
    // Bounded by the backend's count, itself capped.
    for i in 0..n.min(256) {
        let key = format!("{}/vdev-{i}", p.backend);
        match xs.read_string(&key) {
            Ok(s) => devices.push(PciAddr::parse(&s).ok_or_else(|| PciError::BadKey(format!("{key} = {s:?}")))?),
            Err(XsError::Xs(_)) => continue, // a removed slot
            Err(e) => return Err(e.into()),
        }
        // Only informative: a missing or malformed one leaves the device
        // usable without a context of its own.
        machine.push(xs.read_string(&format!("{}/dev-{i}", p.backend)).ok().and_then(|s| PciAddr::parse(&s)));
    }
    xs.write(&format!("{}/state", p.frontend), "4")?;
    Ok(Some(Connected { pending: p.clone(), devices, machine }))
}

/// The operation channel on the shared page.
pub struct PciChannel<M: SharedMem, N: Notifier> {
    mem: M,
    notifier: N,
    timeout: Nanos,
}

impl<M: SharedMem, N: Notifier> PciChannel<M, N> {
    /// `mem`: the granted sharedinfo page; `notifier`: its event channel.
    pub fn new(mem: M, notifier: N, timeout: Nanos) -> Self {
        Self { mem, notifier, timeout }
    }

    fn op(&mut self, op: XenPciOp) -> Result<XenPciOp, PciError> {
        if self.mem.load_u32_acquire(layout::FLAGS) & XEN_PCIF_ACTIVE != 0 {
            // A previous operation never finished: the backend is stuck.
            return Err(PciError::Timeout);
        }
        self.mem.write(layout::OP, bytemuck::bytes_of(&op));
        // Release: the op is visible before the backend sees the flag.
        let flags = self.mem.load_u32_acquire(layout::FLAGS);
        self.mem.store_u32_release(layout::FLAGS, flags | XEN_PCIF_ACTIVE);
        self.notifier.notify();
        let deadline = self.notifier.now().saturating_add(self.timeout);
        // Bounded: every wait returns by the deadline.
        loop {
            // Acquire: the backend's results are read after the flag.
            if self.mem.load_u32_acquire(layout::FLAGS) & XEN_PCIF_ACTIVE == 0 {
                break;
            }
            if !self.notifier.wait(deadline) && self.notifier.now() >= deadline {
                return Err(PciError::Timeout);
            }
        }
        let mut raw = [0u8; size_of::<XenPciOp>()];
        self.mem.read(layout::OP, &mut raw);
        let out: XenPciOp = bytemuck::pod_read_unaligned(&raw);
        if out.err != 0 {
            return Err(PciError::Backend(out.err));
        }
        Ok(out)
    }

    fn check(offset: u16, size: u8) -> Result<(), PciError> {
        let ok = matches!(size, 1 | 2 | 4) && offset.is_multiple_of(size as u16) && offset < 4096;
        if ok {
            Ok(())
        } else {
            Err(PciError::Invalid)
        }
    }

    /// Reads `size` (1, 2 or 4) bytes of configuration space.
    pub fn conf_read(&mut self, a: PciAddr, offset: u16, size: u8) -> Result<u32, PciError> {
        Self::check(offset, size)?;
        let op = XenPciOp {
            cmd: OP_CONF_READ,
            domain: a.domain,
            bus: a.bus as u32,
            devfn: a.devfn as u32,
            offset: offset as i32,
            size: size as i32,
            ..Default::default()
        };
        let v = self.op(op)?.value;
        Ok(match size {
            1 => v & 0xFF,
            2 => v & 0xFFFF,
            _ => v,
        })
    }

    /// Writes `size` (1, 2 or 4) bytes of configuration space.
    pub fn conf_write(&mut self, a: PciAddr, offset: u16, size: u8, value: u32) -> Result<(), PciError> {
        Self::check(offset, size)?;
        let op = XenPciOp {
            cmd: OP_CONF_WRITE,
            domain: a.domain,
            bus: a.bus as u32,
            devfn: a.devfn as u32,
            offset: offset as i32,
            size: size as i32,
            value,
            ..Default::default()
        };
        self.op(op).map(|_| ())
    }

    fn addr_op(cmd: u32, a: PciAddr) -> XenPciOp {
        XenPciOp { cmd, domain: a.domain, bus: a.bus as u32, devfn: a.devfn as u32, ..Default::default() }
    }

    /// Enables MSI; returns the pirq the backend bound (`value`).
    pub fn enable_msi(&mut self, a: PciAddr) -> Result<u32, PciError> {
        self.op(Self::addr_op(OP_ENABLE_MSI, a)).map(|o| o.value)
    }

    /// Disables MSI.
    pub fn disable_msi(&mut self, a: PciAddr) -> Result<(), PciError> {
        self.op(Self::addr_op(OP_DISABLE_MSI, a)).map(|_| ())
    }

    /// Enables MSI-X for the table `entries`; returns the vector (pirq) the
    /// backend wrote for each, in order. At most [`MAX_MSIX_ENTRIES`].
    pub fn enable_msix(&mut self, a: PciAddr, entries: &[u16]) -> Result<alloc::vec::Vec<u16>, PciError> {
        if entries.is_empty() || entries.len() > MAX_MSIX_ENTRIES {
            return Err(PciError::Invalid);
        }
        // msix_entries[i] = { u16 vector (out), u16 entry (in) } after the op header.
        let mut table = alloc::vec![0u8; entries.len() * 4];
        for (i, e) in entries.iter().enumerate() {
            table[i * 4 + 2..i * 4 + 4].copy_from_slice(&e.to_le_bytes());
        }
        self.mem.write(layout::OP + size_of::<XenPciOp>(), &table);
        let op = XenPciOp { info: entries.len() as u32, ..Self::addr_op(OP_ENABLE_MSIX, a) };
        self.op(op)?;
        // Copy the table back once and read the vectors from the copy.
        self.mem.read(layout::OP + size_of::<XenPciOp>(), &mut table);
        Ok(table.chunks_exact(4).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }

    /// Disables MSI-X.
    pub fn disable_msix(&mut self, a: PciAddr) -> Result<(), PciError> {
        self.op(Self::addr_op(OP_DISABLE_MSIX, a)).map(|_| ())
    }

    /// The device at `a` as a [`drivers::pci::PciDevice`].
    pub fn device(&mut self, a: PciAddr) -> PcifrontDevice<'_, M, N> {
        PcifrontDevice { chan: self, addr: a, errors: 0 }
    }
}

/// One device behind pcifront. Failed reads return all ones (as a missing
/// device would), failed writes are dropped; both are counted and logged once.
pub struct PcifrontDevice<'a, M: SharedMem, N: Notifier> {
    chan: &'a mut PciChannel<M, N>,
    addr: PciAddr,
    errors: u32,
}

impl<M: SharedMem, N: Notifier> PcifrontDevice<'_, M, N> {
    /// Operations that failed so far.
    pub fn errors(&self) -> u32 {
        self.errors
    }
    fn note(&mut self, what: &str, off: u16, e: &PciError) {
        self.errors += 1;
        if self.errors == 1 {
            log::warn!("pcifront {}: {what} at {off:#x} failed: {e:?}", self.addr);
        }
    }
    fn read(&mut self, off: u16, size: u8) -> u32 {
        match self.chan.conf_read(self.addr, off, size) {
            Ok(v) => v,
            Err(e) => {
                self.note("config read", off, &e);
                u32::MAX >> (32 - 8 * size as u32)
            }
        }
    }
    fn write(&mut self, off: u16, size: u8, v: u32) {
        if let Err(e) = self.chan.conf_write(self.addr, off, size, v) {
            self.note("config write", off, &e);
        }
    }
}

impl<M: SharedMem, N: Notifier> drivers::pci::PciDevice for PcifrontDevice<'_, M, N> {
    fn config_read8(&mut self, off: u16) -> u8 {
        self.read(off, 1) as u8
    }
    fn config_read16(&mut self, off: u16) -> u16 {
        self.read(off, 2) as u16
    }
    fn config_read32(&mut self, off: u16) -> u32 {
        self.read(off, 4)
    }
    fn config_write8(&mut self, off: u16, v: u8) {
        self.write(off, 1, v as u32)
    }
    fn config_write16(&mut self, off: u16, v: u16) {
        self.write(off, 2, v as u32)
    }
    fn config_write32(&mut self, off: u16, v: u32) {
        self.write(off, 4, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evtchn::fake::FakeEvents;
    use crate::gnttab::fake::FakeGrants;
    use crate::shmem::VecShared;
    use crate::xenstore::fake::FakeXenstored;
    use crate::xenstore::{Perm, PermKind};
    use drivers::pci::PciDevice;
    use std::sync::Arc;

    /// Plays pciback on the shared page: a 256-byte config space per device.
    struct FakeBackend {
        page: Arc<VecShared>,
        dev: PciAddr,
        cfg: [u8; 256],
        now: Nanos,
        silent: bool,
        ops: u32,
        msi: bool,
        msix: usize,
    }

    impl Notifier for FakeBackend {
        fn notify(&mut self) {
            if self.silent || self.page.load_u32_acquire(layout::FLAGS) & XEN_PCIF_ACTIVE == 0 {
                return;
            }
            self.ops += 1;
            let mut raw = [0u8; 36];
            self.page.read(layout::OP, &mut raw);
            let mut op: XenPciOp = bytemuck::pod_read_unaligned(&raw);
            let here = PciAddr { domain: op.domain, bus: op.bus as u8, devfn: op.devfn as u8 };
            let (off, size) = (op.offset as usize, op.size as usize);
            if here != self.dev {
                op.err = -1; // XEN_PCI_ERR_dev_not_found
            } else if off + size > 256 {
                op.err = -2;
            } else if op.cmd == OP_ENABLE_MSI {
                self.msi = true;
                op.value = 55; // the pirq
            } else if op.cmd == OP_DISABLE_MSI {
                op.err = if self.msi { 0 } else { -5 }; // XEN_PCI_ERR_op_failed
                self.msi = false;
            } else if op.cmd == OP_ENABLE_MSIX {
                let n = op.info as usize;
                if n == 0 || n > MAX_MSIX_ENTRIES {
                    op.err = -2;
                } else {
                    let mut t = vec![0u8; n * 4];
                    self.page.read(layout::OP + 36, &mut t);
                    for c in t.chunks_exact_mut(4) {
                        let entry = u16::from_le_bytes([c[2], c[3]]);
                        c[0..2].copy_from_slice(&(100 + entry).to_le_bytes());
                    }
                    self.page.write(layout::OP + 36, &t);
                    self.msix = n;
                }
            } else if op.cmd == OP_DISABLE_MSIX {
                self.msix = 0;
            } else if op.cmd == OP_CONF_READ {
                let mut v = [0u8; 4];
                v[..size].copy_from_slice(&self.cfg[off..off + size]);
                op.value = u32::from_le_bytes(v);
            } else {
                self.cfg[off..off + size].copy_from_slice(&op.value.to_le_bytes()[..size]);
            }
            self.page.write(layout::OP, bytemuck::bytes_of(&op));
            self.page.store_u32_release(layout::FLAGS, 0);
        }
        fn wait(&mut self, deadline: Nanos) -> bool {
            self.now = self.now.max(deadline);
            false
        }
        fn now(&self) -> Nanos {
            self.now
        }
    }

    fn nvme_dev() -> PciAddr {
        PciAddr { domain: 0, bus: 0, devfn: 0 }
    }

    fn channel(silent: bool) -> (PciChannel<Arc<VecShared>, FakeBackend>, Arc<VecShared>) {
        let page = Arc::new(VecShared::new(4096));
        let mut cfg = [0u8; 256];
        cfg[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        cfg[8..12].copy_from_slice(&0x0108_0202u32.to_le_bytes());
        let be = FakeBackend { page: page.clone(), dev: nvme_dev(), cfg, now: 0, silent, ops: 0, msi: false, msix: 0 };
        (PciChannel::new(page.clone(), be, 1_000_000), page)
    }

    #[test]
    fn golden_op_layout() {
        let op = XenPciOp {
            cmd: 1,
            err: -3,
            domain: 2,
            bus: 3,
            devfn: 0x21,
            offset: 0x10,
            size: 4,
            value: 0xAABBCCDD,
            info: 0,
        };
        let b = bytemuck::bytes_of(&op);
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 0xFD, 0xFF, 0xFF, 0xFF]);
        assert_eq!(&b[16..20], &[0x21, 0, 0, 0]);
        assert_eq!(&b[28..32], &[0xDD, 0xCC, 0xBB, 0xAA]);
    }

    #[test]
    fn parse_addresses() {
        assert_eq!(PciAddr::parse("0000:00:04.0"), Some(PciAddr { domain: 0, bus: 0, devfn: 0x20 }));
        assert_eq!(PciAddr::parse("0001:1f:1f.7"), Some(PciAddr { domain: 1, bus: 0x1f, devfn: 0xff }));
        assert_eq!(format!("{}", PciAddr { domain: 0, bus: 0, devfn: 0x20 }), "0000:00:04.0");
        for bad in ["", "0000:00:04", "0000:00:20.0", "0000:00:04.8", "x:00:00.0", "000000000:00:00.0", "0000:100:00.0"]
        {
            assert_eq!(PciAddr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_reads_and_writes_through_the_channel() {
        let (mut ch, _) = channel(false);
        assert_eq!(ch.conf_read(nvme_dev(), 0, 4), Ok(0x0010_1b36));
        assert_eq!(ch.conf_read(nvme_dev(), 2, 2), Ok(0x0010));
        let mut dev = ch.device(nvme_dev());
        assert_eq!(dev.class_code(), (1, 8, 2));
        dev.config_write16(4, 0x0406);
        assert_eq!(dev.config_read16(4), 0x0406);
        assert_eq!(dev.errors(), 0);
    }

    #[test]
    fn backend_errors_and_silence_are_reported() {
        let (mut ch, _) = channel(false);
        let other = PciAddr { domain: 0, bus: 1, devfn: 0 };
        assert_eq!(ch.conf_read(other, 0, 4), Err(PciError::Backend(-1)));
        assert_eq!(ch.conf_read(nvme_dev(), 3, 2), Err(PciError::Invalid), "misaligned");
        assert_eq!(ch.conf_read(nvme_dev(), 0, 3), Err(PciError::Invalid), "odd size");
        let mut dev = ch.device(other);
        assert_eq!(dev.config_read32(0), u32::MAX, "failed read looks like no device");
        assert_eq!(dev.errors(), 1);

        let (mut silent, page) = channel(true);
        assert_eq!(silent.conf_read(nvme_dev(), 0, 4), Err(PciError::Timeout));
        assert_ne!(page.load_u32_acquire(layout::FLAGS) & XEN_PCIF_ACTIVE, 0);
        assert_eq!(silent.conf_read(nvme_dev(), 0, 4), Err(PciError::Timeout), "stuck backend: no new op");
    }

    #[test]
    fn msi_and_msix_enable_disable() {
        let (mut ch, page) = channel(false);
        assert_eq!(ch.enable_msi(nvme_dev()), Ok(55));
        assert_eq!(ch.disable_msi(nvme_dev()), Ok(()));
        assert_eq!(ch.disable_msi(nvme_dev()), Err(PciError::Backend(-5)), "backend errors come back typed");
        assert_eq!(ch.enable_msix(nvme_dev(), &[0, 3, 7]), Ok(vec![100, 103, 107]));
        // Golden bytes of the request as it sat in the shared page.
        let mut raw = [0u8; 12];
        page.read(layout::OP + 36, &mut raw);
        assert_eq!(raw, [100, 0, 0, 0, 103, 0, 3, 0, 107, 0, 7, 0]);
        assert_eq!(ch.disable_msix(nvme_dev()), Ok(()));
        assert_eq!(ch.enable_msix(nvme_dev(), &[]), Err(PciError::Invalid));
        assert_eq!(ch.enable_msix(nvme_dev(), &[0; MAX_MSIX_ENTRIES + 1]), Err(PciError::Invalid));
        let other = PciAddr { domain: 0, bus: 2, devfn: 0 };
        assert_eq!(ch.enable_msi(other), Err(PciError::Backend(-1)));
    }

    #[test]
    fn handshake_against_fake_xenstore() {
        let xsd = FakeXenstored::new(DomId(5));
        let mut xs = xsd.client(1_000_000_000);
        let home = xsd.home();
        xsd.external_write(&format!("{home}/device/pci/0/backend"), b"/local/domain/0/backend/pci/5/0");
        xsd.external_write(&format!("{home}/device/pci/0/backend-id"), b"0");
        // libxl lets the frontend domain read its backend directory; the
        // nodes created in it inherit that.
        xsd.external_write("/local/domain/0/backend/pci/5/0", b"");
        xsd.external_set_perms(
            "/local/domain/0/backend/pci/5/0",
            &[Perm::new(PermKind::None, 0), Perm::new(PermKind::Read, 5)],
        );
        xsd.external_write("/local/domain/0/backend/pci/5/0/state", b"2");
        let mut evs = FakeEvents::domains(&[DomId(5), DomId(0)]);
        let mut gts = FakeGrants::domains(&[DomId(5), DomId(0)], 16);
        let p = start(&mut xs, &mut evs[0], &mut gts[0], "device/pci/0", Pfn(9)).unwrap();
        assert_eq!(p.backend_id, DomId(0));
        assert_eq!(xsd.value(&format!("{home}/device/pci/0/magic")).unwrap(), b"7");
        assert_eq!(xsd.value(&format!("{home}/device/pci/0/state")).unwrap(), b"3");
        assert_eq!(xsd.value(&format!("{home}/device/pci/0/pci-op-ref")).unwrap(), format!("{}", p.gref.0).as_bytes());
        // The backend can bind the port we offered.
        evs[1].bind_interdomain(DomId(5), p.port).unwrap();
        assert_eq!(poll_connected(&mut xs, &p), Ok(None), "backend not connected yet");
        xsd.external_write("/local/domain/0/backend/pci/5/0/num_devs", b"2");
        xsd.external_write("/local/domain/0/backend/pci/5/0/vdev-0", b"0000:00:00.0");
        xsd.external_write("/local/domain/0/backend/pci/5/0/vdev-1", b"0000:00:01.0");
        xsd.external_write("/local/domain/0/backend/pci/5/0/dev-0", b"0000:00:04.0");
        xsd.external_write("/local/domain/0/backend/pci/5/0/dev-1", b"junk");
        xsd.external_write("/local/domain/0/backend/pci/5/0/state", b"4");
        let c = poll_connected(&mut xs, &p).unwrap().unwrap();
        assert_eq!(c.devices, vec![nvme_dev(), PciAddr { domain: 0, bus: 0, devfn: 8 }]);
        assert_eq!(c.machine, vec![Some(PciAddr { domain: 0, bus: 0, devfn: 0x20 }), None], "dev-N: machine addresses");
        assert_eq!(xsd.value(&format!("{home}/device/pci/0/state")).unwrap(), b"4");
    }

    #[test]
    fn handshake_rejects_bad_backend_data() {
        let xsd = FakeXenstored::new(DomId(5));
        let mut xs = xsd.client(1_000_000_000);
        let home = xsd.home();
        let mut evs = FakeEvents::domains(&[DomId(5), DomId(0)]);
        let mut gts = FakeGrants::domains(&[DomId(5), DomId(0)], 16);
        // No device/pci/0 at all.
        assert!(matches!(start(&mut xs, &mut evs[0], &mut gts[0], "device/pci/0", Pfn(9)), Err(PciError::Xs(_))));
        xsd.external_write(&format!("{home}/device/pci/0/backend"), b"/be");
        xsd.external_write(&format!("{home}/device/pci/0/backend-id"), b"70000");
        assert!(matches!(start(&mut xs, &mut evs[0], &mut gts[0], "device/pci/0", Pfn(9)), Err(PciError::BadKey(_))));
        xsd.external_write(&format!("{home}/device/pci/0/backend-id"), b"0");
        xsd.external_write("/be", b"");
        xsd.external_set_perms("/be", &[Perm::new(PermKind::Read, 5)]);
        let p = start(&mut xs, &mut evs[0], &mut gts[0], "device/pci/0", Pfn(9)).unwrap();
        xsd.external_write("/be/state", b"4");
        xsd.external_write("/be/num_devs", b"1");
        xsd.external_write("/be/vdev-0", b"garbage");
        assert!(matches!(poll_connected(&mut xs, &p), Err(PciError::BadKey(_))));
        xsd.external_write("/be/state", b"6");
        assert_eq!(poll_connected(&mut xs, &p), Err(PciError::BackendGone(6)));
    }
}
