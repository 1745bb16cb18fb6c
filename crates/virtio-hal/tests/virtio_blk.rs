//! virtio-drivers' own block driver (`VirtIOBlk`) running on `VirtioHal`,
//! against a virtio-blk device that reaches memory only by the device
//! addresses it is given: plain fake DMA, PV-IOMMU IOVAs translated by the
//! software VT-d (coherent and non-coherent unit), and bounce buffers.

mod common;

use common::*;
use drivers::bounce::BounceDma;
use drivers::fake::{FakeDma, FakeMemory};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_hal::{HalState, VirtioHal};

slot!(PlainSlot, FakeDma);
slot!(IovaSlot, Iova);
slot!(BounceSlot, BounceDma<FakeDma, Vec<u8>>);

const SECTORS: u64 = 64;

/// Writes, reads back and checks the disk; returns the device's record.
fn exercise<H: virtio_drivers::Hal>(dev: FakeBlk) -> (std::rc::Rc<std::cell::RefCell<Seen>>, VirtIOBlk<H, FakeBlk>) {
    let disk = dev.disk.clone();
    let seen = dev.seen.clone();
    let mut blk = VirtIOBlk::<H, _>::new(dev).expect("virtio-blk bring-up");
    assert_eq!(blk.capacity(), SECTORS);
    let data = pattern(3 * SECTOR, 0x21);
    blk.write_blocks(5, &data).expect("write");
    assert_eq!(&disk.borrow()[5 * SECTOR..8 * SECTOR], &data[..], "the device got the data");
    let mut back = vec![0xeeu8; 3 * SECTOR];
    blk.read_blocks(5, &mut back).expect("read");
    assert_eq!(back, data, "read back what was written");
    // A read the device answers from another place on the disk.
    disk.borrow_mut()[SECTOR..2 * SECTOR].copy_from_slice(&pattern(SECTOR, 0x77));
    let mut one = vec![0u8; SECTOR];
    blk.read_blocks(1, &mut one).expect("read");
    assert_eq!(one, pattern(SECTOR, 0x77));
    assert!(seen.borrow().faults.is_empty(), "device faults: {:?}", seen.borrow().faults);
    assert_eq!(seen.borrow().requests, 3);
    (seen, blk)
}

#[test]
fn virtio_blk_over_plain_fake_dma() {
    let mem = FakeMemory::new_shared();
    PlainSlot::install(HalState::new(FakeDma::new(mem.clone())));
    let (_, blk) = exercise::<VirtioHal<PlainSlot>>(FakeBlk::new(Path::Direct(mem.clone()), SECTORS));
    drop(blk);
    let s = PlainSlot::take().unwrap();
    assert_eq!((s.live_regions(), s.live_shares(), s.stats().failures), (0, 0, 0));
    assert_eq!(s.mapper().live_regions(), 0, "queues freed on drop");
    assert_eq!(s.stats().shares, s.stats().unshares);
}

fn over_iommu(coherent: bool) {
    let (hv, mem, ctx, dma) = iommu(coherent);
    IovaSlot::install(HalState::new(dma));
    let (seen, blk) = exercise::<VirtioHal<IovaSlot>>(FakeBlk::new(Path::Iommu(hv.clone(), mem.clone()), SECTORS));
    // The device only ever saw IOVAs (below 1 << 39, from dfn 0x100 on),
    // never the guest frames behind them (fake memory lives above 4 GiB).
    let (d, a, u) = seen.borrow().queue.unwrap();
    for addr in seen.borrow().buffers.iter().copied().chain([d, a, u]) {
        assert!((0x100 * PS..1 << 32).contains(&addr), "device saw {addr:#x}");
        assert!(!mem.borrow().is_mapped(addr, 1));
    }
    // Queues stay mapped; every shared buffer was unmapped again.
    assert_eq!(mapped_pages(&hv, ctx), 2);
    assert!(hv.borrow_mut().next_fault().is_none());
    drop(blk);
    assert_eq!(mapped_pages(&hv, ctx), 0, "queue IOVAs unmapped on drop");
    let s = IovaSlot::take().unwrap();
    assert_eq!((s.live_regions(), s.live_shares(), s.stats().failures), (0, 0, 0));
    assert!(s.mapper().stats().map_calls >= 2 + 3 * 3);
}

#[test]
fn virtio_blk_over_pv_iommu_iovas() {
    over_iommu(true);
}

#[test]
fn virtio_blk_over_pv_iommu_on_a_non_coherent_unit() {
    over_iommu(false);
}

#[test]
fn virtio_blk_over_bounce_buffers() {
    let mem = FakeMemory::new_shared();
    let bounce = BounceDma::new(FakeDma::new(mem.clone()), 4).map_err(|(e, _)| e).unwrap();
    BounceSlot::install(HalState::new(bounce));
    let (seen, blk) = exercise::<VirtioHal<BounceSlot>>(FakeBlk::new(Path::Direct(mem.clone()), SECTORS));
    BounceSlot::with_state(|s| {
        // Every buffer the device was given lies in the bounce pool.
        for &a in &seen.borrow().buffers {
            assert!(s.mapper().in_pool(a, 1), "buffer at {a:#x} outside the pool");
        }
        assert_eq!(s.mapper().free_pages(), 4, "all pool pages back");
        assert_eq!(s.mapper().lower().live_mappings(), 0);
    });
    drop(blk);
    let s = BounceSlot::take().unwrap();
    assert_eq!((s.live_regions(), s.live_shares(), s.stats().failures), (0, 0, 0));
}
