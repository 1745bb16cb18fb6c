//! Shared fixtures: thread-local mapper slots, an in-process PV-IOMMU
//! (handler + software VT-d) and a virtio-blk device that reaches guest
//! memory only through device addresses (translated by the model when an
//! IOMMU is in the path).
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use drivers::fake::{FakeDma, FakeMemory, Memory};
use iommu_core::types::{DomId, PciSbdf, Sid};
use iommu_core::vtd::FaultReason;
use pv_iommu_client::dma::IommuDma;
use pv_iommu_client::iova::{IovaAllocator, MSI_WINDOW};
use pv_iommu_client::types::CtxNo;
use pv_iommu_client::Client;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Declares a slot type `$name` holding a `HalState<$mapper>` in a
/// thread-local (each test runs on its own thread).
#[macro_export]
macro_rules! slot {
    ($name:ident, $mapper:ty) => {
        pub struct $name;
        impl $name {
            fn cell() -> &'static std::thread::LocalKey<std::cell::RefCell<Option<virtio_hal::HalState<$mapper>>>> {
                thread_local! {
                    static STATE: std::cell::RefCell<Option<virtio_hal::HalState<$mapper>>> =
                        const { std::cell::RefCell::new(None) };
                }
                &STATE
            }
            pub fn install(s: virtio_hal::HalState<$mapper>) {
                Self::cell().with(|c| *c.borrow_mut() = Some(s));
            }
            pub fn take() -> Option<virtio_hal::HalState<$mapper>> {
                Self::cell().with(|c| c.borrow_mut().take())
            }
            pub fn with_state<R>(f: impl FnOnce(&virtio_hal::HalState<$mapper>) -> R) -> R {
                Self::cell().with(|c| f(c.borrow().as_ref().expect("slot empty")))
            }
        }
        // SAFETY: the mappers used in these tests (FakeDma and mappers over
        // it) return pointers into FakeMemory's page-aligned Cell pages,
        // valid until the region is freed, never referenced otherwise.
        unsafe impl virtio_hal::MapperSlot for $name {
            type Mapper = $mapper;
            fn with<R>(f: impl FnOnce(&mut virtio_hal::HalState<$mapper>) -> R) -> Option<R> {
                Self::cell().with(|c| c.try_borrow_mut().ok()?.as_mut().map(f))
            }
            fn mmio(paddr: u64, size: usize) -> Option<core::ptr::NonNull<u8>> {
                $crate::common::mmio(paddr, size)
            }
        }
    };
}

/// The only "BAR" the tests map: 0xfe00_0000, one page, backed by a leaked
/// host page.
pub fn mmio(paddr: u64, size: usize) -> Option<core::ptr::NonNull<u8>> {
    thread_local! {
        static BAR: &'static [std::cell::Cell<u8>] =
            Box::leak((0..4096).map(|_| std::cell::Cell::new(0u8)).collect::<Vec<_>>().into_boxed_slice());
    }
    if paddr < BAR_ADDR || paddr.checked_add(size as u64)? > BAR_ADDR + 4096 {
        return None;
    }
    BAR.with(|b| core::ptr::NonNull::new(b[(paddr - BAR_ADDR) as usize].as_ptr()))
}

pub const BAR_ADDR: u64 = 0xfe00_0000;
pub const PS: u64 = 4096;
pub const DOM: DomId = DomId(1);
pub const DEV: PciSbdf = PciSbdf::new(0, 0, 4, 0);

pub use iommu_core::testing::{InProcess as Local, TestIommu as Hv};

pub type Iova = IommuDma<Local, FakeDma>;

/// A hypervisor whose unit has ECAP.C = `coherent`, DEV attached to a
/// fresh context of DOM, and an `IommuDma` into that context over fake
/// guest memory.
pub fn iommu(coherent: bool) -> (Rc<RefCell<Hv>>, Memory, CtxNo, Iova) {
    let (hv, mut c) = iommu_core::testing::setup(DEV, coherent);
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV).unwrap();
    let mem = FakeMemory::new_shared();
    let d = IommuDma::new(
        Client::new(Local(hv.clone())),
        FakeDma::new(mem.clone()),
        ctx,
        IovaAllocator::new(0x100, 1 << 27, &[MSI_WINDOW]),
    );
    (hv, mem, ctx, d)
}

/// How the fake device reaches memory.
#[derive(Clone)]
pub enum Path {
    /// Bus address = fake memory address.
    Direct(Memory),
    /// Bus address = IOVA, translated by the software VT-d for DEV.
    Iommu(Rc<RefCell<Hv>>, Memory),
}

/// A device DMA fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault(pub u64, pub Option<FaultReason>);

impl Path {
    fn each_page(&self, addr: u64, len: usize, write: bool, mut f: impl FnMut(u64, usize, usize)) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < len {
            let a = addr.checked_add(done as u64).ok_or(Fault(addr, None))?;
            let n = ((PS - a % PS) as usize).min(len - done);
            let pa = match self {
                Path::Direct(m) => {
                    if !m.borrow().is_mapped(a, n) {
                        return Err(Fault(a, None));
                    }
                    a
                }
                Path::Iommu(hv, _) => {
                    let mut h = hv.borrow_mut();
                    let (hw, mem) = h.hw_and_mem();
                    hw.dma(mem, Sid::from(DEV), a, write).map_err(|r| Fault(a, Some(r)))?
                }
            };
            f(pa, done, n);
            done += n;
        }
        Ok(())
    }

    fn mem(&self) -> &Memory {
        match self {
            Path::Direct(m) | Path::Iommu(_, m) => m,
        }
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        let mem = self.mem().clone();
        self.each_page(addr, out.len(), false, |pa, at, n| mem.borrow().read(pa, &mut out[at..at + n]))
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        let mem = self.mem().clone();
        self.each_page(addr, data.len(), true, |pa, at, n| mem.borrow_mut().write(pa, &data[at..at + n]))
    }
}

pub const SECTOR: usize = 512;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// What the device observed.
#[derive(Default, Debug)]
pub struct Seen {
    /// Every descriptor buffer address it was given.
    pub buffers: Vec<u64>,
    /// Queue addresses (descriptors, driver area, device area).
    pub queue: Option<(u64, u64, u64)>,
    /// DMA faults it hit.
    pub faults: Vec<Fault>,
    /// Requests completed.
    pub requests: u64,
}

/// A virtio-blk device (modern layout, one queue, VERSION_1 only) behind
/// a `Transport`; it processes the queue synchronously on notify.
pub struct FakeBlk {
    pub path: Path,
    pub disk: Rc<RefCell<Vec<u8>>>,
    pub seen: Rc<RefCell<Seen>>,
    status: DeviceStatus,
    queue: Option<(u32, u64, u64, u64)>,
    last_avail: u16,
    config: [u8; 64],
}

impl FakeBlk {
    pub fn new(path: Path, sectors: u64) -> Self {
        let mut config = [0u8; 64];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        FakeBlk {
            path,
            disk: Rc::new(RefCell::new(vec![0; sectors as usize * SECTOR])),
            seen: Rc::default(),
            status: DeviceStatus::empty(),
            queue: None,
            last_avail: 0,
            config,
        }
    }

    fn r16(&self, a: u64) -> Result<u16, Fault> {
        let mut b = [0u8; 2];
        self.path.read(a, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// One request: returns the bytes written to device-writable buffers.
    fn request(&mut self, desc: u64, size: u32, head: u16) -> Result<u32, Fault> {
        // The chain: (addr, len, device-writable); bounded by the queue size.
        let mut chain = Vec::new();
        let mut i = head;
        for _ in 0..size {
            let mut d = [0u8; 16];
            self.path.read(desc + 16 * (i as u64 % size as u64), &mut d)?;
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            chain.push((addr, len as usize, flags & DESC_F_WRITE != 0));
            self.seen.borrow_mut().buffers.push(addr);
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            i = u16::from_le_bytes(d[14..16].try_into().unwrap());
        }
        let (Some(&(h, hl, false)), Some(&(st, 1, true))) = (chain.first(), chain.last()) else {
            return Ok(0);
        };
        if hl != 16 {
            return Ok(0);
        }
        let mut hdr = [0u8; 16];
        self.path.read(h, &mut hdr)?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap()) as usize;
        let mut at = sector * SECTOR;
        let mut written = 0u32;
        let mut status = 0u8;
        for &(addr, len, writable) in &chain[1..chain.len() - 1] {
            let mut disk = self.disk.borrow_mut();
            let Some(range) = disk.get_mut(at..at + len) else {
                status = 1;
                break;
            };
            match (kind, writable) {
                (0, true) => {
                    self.path.write(addr, range)?;
                    written += len as u32;
                }
                (1, false) => self.path.read(addr, range)?,
                _ => status = 2,
            }
            at += len;
        }
        self.path.write(st, &[status])?;
        self.seen.borrow_mut().requests += 1;
        Ok(written + 1)
    }

    fn process(&mut self) -> Result<(), Fault> {
        let Some((size, desc, avail, used)) = self.queue else { return Ok(()) };
        let idx = self.r16(avail + 2)?;
        // Bounded: at most one pass over the ring per notify.
        for _ in 0..size {
            if self.last_avail == idx {
                break;
            }
            let head = self.r16(avail + 4 + 2 * (self.last_avail as u64 % size as u64))?;
            // A fault inside the request still completes it (the status
            // stays unwritten): the driver sees an error instead of hanging.
            let len = match self.request(desc, size, head) {
                Ok(n) => n,
                Err(f) => {
                    self.seen.borrow_mut().faults.push(f);
                    0
                }
            };
            let u = self.r16(used + 2)?;
            let slot = used + 4 + 8 * (u as u64 % size as u64);
            let mut e = [0u8; 8];
            e[0..4].copy_from_slice(&(head as u32).to_le_bytes());
            e[4..8].copy_from_slice(&len.to_le_bytes());
            self.path.write(slot, &e)?;
            self.path.write(used + 2, &u.wrapping_add(1).to_le_bytes())?;
            self.last_avail = self.last_avail.wrapping_add(1);
        }
        Ok(())
    }
}

impl Transport for FakeBlk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn write_driver_features(&mut self, _driver_features: u64) {}
    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        32
    }
    fn notify(&mut self, _queue: u16) {
        if let Err(f) = self.process() {
            self.seen.borrow_mut().faults.push(f);
        }
    }
    fn get_status(&self) -> DeviceStatus {
        self.status
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.status = status;
    }
    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        _queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.queue = Some((size, descriptors, driver_area, device_area));
        self.seen.borrow_mut().queue = Some((descriptors, driver_area, device_area));
        self.last_avail = 0;
    }
    fn queue_unset(&mut self, _queue: u16) {
        self.queue = None;
    }
    fn queue_used(&mut self, _queue: u16) -> bool {
        self.queue.is_some()
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let mut v = T::new_zeroed();
        let n = core::mem::size_of::<T>();
        let src = self.config.get(offset..offset + n).ok_or(Error::ConfigSpaceTooSmall)?;
        v.as_mut_bytes().copy_from_slice(src);
        Ok(v)
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, _offset: usize, _value: T) -> Result<(), Error> {
        Ok(())
    }
}

/// A byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ 0x5a).collect()
}

/// Live IOVA mappings of DOM's context `ctx` (pages).
pub fn mapped_pages(hv: &Rc<RefCell<Hv>>, ctx: CtxNo) -> u64 {
    hv.borrow().replay(DOM, ctx).unwrap().iter().map(|r| r.count).sum()
}
