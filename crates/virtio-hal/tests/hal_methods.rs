//! Every `Hal` method of `VirtioHal`, called as virtio-drivers calls them,
//! against the DMA fake and against PV-IOMMU IOVAs translated by the
//! software VT-d. (The raw-pointer calls need `unsafe`, as in
//! virtio-drivers itself.)

mod common;

use core::ptr::NonNull;

use common::*;
use drivers::fake::{FakeDma, FakeMemory};
use iommu_core::vtd::FaultReason;
use virtio_drivers::{BufferDirection, Hal};
use virtio_hal::{HalError, HalState, VirtioHal, POISON};

slot!(FakeSlot, FakeDma);
slot!(IovaSlot, Iova);

type Fh = VirtioHal<FakeSlot>;
type Ih = VirtioHal<IovaSlot>;

fn share<H: Hal>(buf: &[u8], dir: BufferDirection) -> u64 {
    // SAFETY: `buf` is a live, non-empty slice not touched elsewhere during
    // the call.
    unsafe { H::share(NonNull::from(buf), dir) }
}

fn unshare_in<H: Hal>(pa: u64, buf: &mut [u8]) {
    // SAFETY: as in `share`; a device-to-driver buffer may be written.
    unsafe { H::unshare(pa, NonNull::from(buf), BufferDirection::DeviceToDriver) }
}

fn unshare_out<H: Hal>(pa: u64, buf: &[u8]) {
    // SAFETY: as in `share`; driver-to-device buffers are only read.
    unsafe { H::unshare(pa, NonNull::from(buf), BufferDirection::DriverToDevice) }
}

/// CPU write through a `dma_alloc` pointer.
fn cpu_write(p: NonNull<u8>, off: usize, data: &[u8]) {
    // SAFETY: callers pass a pointer from dma_alloc for a live region and
    // an in-bounds range; nothing else references that memory.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr().add(off), data.len()) }
}

fn cpu_read(p: NonNull<u8>, off: usize, out: &mut [u8]) {
    // SAFETY: as in `cpu_write`.
    unsafe { core::ptr::copy_nonoverlapping(p.as_ptr().add(off), out.as_mut_ptr(), out.len()) }
}

#[test]
fn dma_alloc_and_dealloc_on_the_fake() {
    let mem = FakeMemory::new_shared();
    FakeSlot::install(HalState::new(FakeDma::new(mem.clone())));
    let (pa, va) = Fh::dma_alloc(2, BufferDirection::Both);
    assert_ne!(pa, 0);
    assert_eq!(va.as_ptr() as usize % 4096, 0, "page aligned");
    let mut z = [1u8; 64];
    cpu_read(va, 4096 - 32, &mut z);
    assert_eq!(z, [0; 64], "zeroed");
    // CPU writes are what the device reads at `pa`, across the page.
    cpu_write(va, 4095, &[0xab, 0xcd]);
    let mut b = [0u8; 2];
    mem.borrow().read(pa + 4095, &mut b);
    assert_eq!(b, [0xab, 0xcd]);
    // Device writes are what the CPU reads.
    mem.borrow_mut().write(pa + 8, &[1, 2, 3]);
    let mut c = [0u8; 3];
    cpu_read(va, 8, &mut c);
    assert_eq!(c, [1, 2, 3]);
    // SAFETY: pa/va from dma_alloc above; the wrong size is refused and
    // frees nothing.
    assert_eq!(unsafe { Fh::dma_dealloc(pa, va, 1) }, -1);
    assert!(mem.borrow().is_mapped(pa, 8192));
    // SAFETY: as above, with the right size; va is not used afterwards.
    assert_eq!(unsafe { Fh::dma_dealloc(pa, va, 2) }, 0);
    assert!(!mem.borrow().is_mapped(pa, 1));
    // SAFETY: a second dealloc is refused without touching memory.
    assert_eq!(unsafe { Fh::dma_dealloc(pa, va, 2) }, -1);
    let s = FakeSlot::take().unwrap();
    assert_eq!(s.last_error(), Some(HalError::Unknown));
    assert_eq!((s.stats().allocs, s.stats().deallocs), (1, 1));
}

#[test]
fn share_and_unshare_on_the_fake() {
    let mem = FakeMemory::new_shared();
    FakeSlot::install(HalState::new(FakeDma::new(mem.clone())));
    let data = pattern(700, 3);
    let pa = share::<Fh>(&data, BufferDirection::DriverToDevice);
    assert_ne!(pa, data.as_ptr() as u64, "the device never gets the buffer itself");
    let mut seen = vec![0u8; 700];
    mem.borrow().read(pa, &mut seen);
    assert_eq!(seen, data);
    unshare_out::<Fh>(pa, &data);
    assert!(!mem.borrow().is_mapped(pa, 1), "unshared");

    let mut buf = vec![0u8; 300];
    let pa = share::<Fh>(&buf, BufferDirection::DeviceToDriver);
    mem.borrow_mut().write(pa, &data[..300]);
    assert!(buf.iter().all(|&b| b == 0), "nothing before unshare");
    unshare_in::<Fh>(pa, &mut buf);
    assert_eq!(buf, data[..300]);

    assert_eq!(share::<Fh>(&buf, BufferDirection::Both), POISON, "fails closed");
    unshare_in::<Fh>(POISON, &mut buf);
    let s = FakeSlot::take().unwrap();
    assert_eq!((s.live_shares(), s.stats().shares, s.stats().unshares), (0, 2, 2));
    assert_eq!(s.last_error(), Some(HalError::Bidirectional));
    assert_eq!(s.mapper().live_mappings(), 0);
}

#[test]
fn no_mapper_registered_fails_closed() {
    let (pa, _) = Fh::dma_alloc(1, BufferDirection::Both);
    assert_eq!(pa, 0, "virtio-drivers reads 0 as DmaError");
    let mut buf = [0u8; 4];
    assert_eq!(share::<Fh>(&buf, BufferDirection::DeviceToDriver), POISON);
    unshare_in::<Fh>(0x1000, &mut buf);
    // SAFETY: dealloc of an unknown address is refused without access.
    assert_eq!(unsafe { Fh::dma_dealloc(0x1000, NonNull::dangling(), 1) }, -1);
}

#[test]
fn mmio_phys_to_virt_asks_the_slot() {
    // SAFETY: a range the slot maps (the test BAR).
    let p = unsafe { Fh::mmio_phys_to_virt(BAR_ADDR + 0x10, 4) };
    assert_eq!(Some(p), mmio(BAR_ADDR + 0x10, 4));
}

#[test]
#[should_panic(expected = "refused by the platform")]
fn mmio_outside_the_platform_window_panics() {
    // SAFETY: the slot refuses the range before anything is dereferenced.
    let _ = unsafe { Fh::mmio_phys_to_virt(BAR_ADDR + 4096, 4) };
}

fn iommu_methods(coherent: bool) {
    let (hv, mem, ctx, dma) = iommu(coherent);
    IovaSlot::install(HalState::new(dma));
    let dev = Path::Iommu(hv.clone(), mem.clone());
    let dma_at = |iova: u64, write: bool| {
        let mut h = hv.borrow_mut();
        let (hw, m) = h.hw_and_mem();
        hw.dma(m, iommu_core::types::Sid::from(DEV), iova, write)
    };

    // A region: the device reaches the CPU's bytes at the IOVA, read-write.
    let (iova, va) = Ih::dma_alloc(1, BufferDirection::DeviceToDriver);
    assert!((0x100 * PS..1 << 32).contains(&iova), "an IOVA, not a guest frame: {iova:#x}");
    cpu_write(va, 0x40, b"queue");
    let mut q = [0u8; 5];
    dev.read(iova + 0x40, &mut q).unwrap();
    assert_eq!(&q, b"queue");
    dev.write(iova + 0x80, b"used").unwrap();
    let mut u = [0u8; 4];
    cpu_read(va, 0x80, &mut u);
    assert_eq!(&u, b"used");

    // A driver-to-device buffer: translated, read-only, at the IOVA.
    let data = pattern(256, 9);
    let pa = share::<Ih>(&data, BufferDirection::DriverToDevice);
    let host = dma_at(pa, false).expect("translated");
    let mut seen = vec![0u8; 256];
    mem.borrow().read(host, &mut seen);
    assert_eq!(seen, data, "the IOVA leads to the staged bytes");
    assert_eq!(dma_at(pa, true), Err(FaultReason::Write), "read-only");
    assert_eq!(mapped_pages(&hv, ctx), 2);
    unshare_out::<Ih>(pa, &data);
    assert_eq!(dma_at(pa, false), Err(FaultReason::Read), "faults after unshare");

    // A device-to-driver buffer: write-only; data arrives at unshare.
    let mut buf = vec![0u8; 64];
    let pa = share::<Ih>(&buf, BufferDirection::DeviceToDriver);
    assert_eq!(dma_at(pa, false), Err(FaultReason::Read), "write-only");
    dev.write(pa, &data[..64]).unwrap();
    unshare_in::<Ih>(pa, &mut buf);
    assert_eq!(buf, data[..64]);
    assert!(dev.write(pa, &[0]).is_err(), "faults after unshare");

    // SAFETY: iova/va from dma_alloc above, not used afterwards.
    assert_eq!(unsafe { Ih::dma_dealloc(iova, va, 1) }, 0);
    assert_eq!(dma_at(iova, true), Err(FaultReason::Write), "region revoked");
    assert_eq!(mapped_pages(&hv, ctx), 0);
    let s = IovaSlot::take().unwrap();
    assert_eq!((s.live_regions(), s.live_shares(), s.stats().failures), (0, 0, 0));
}

#[test]
fn hal_over_pv_iommu_translates_and_revokes() {
    iommu_methods(true);
}

#[test]
fn hal_over_pv_iommu_on_a_non_coherent_unit() {
    iommu_methods(false);
}
