//! Guests' disks never overlap: vbds on two GPT partitions of one NVMe
//! namespace and on a second, 4 KiB-native namespace of the same (fake)
//! controller each see only their own bytes; everything outside every
//! extent stays as it was; overlapping writers are refused.

use block::gpt::{self, Guid};
use block::{OpenError, Registry, View};
use drivers::block::{BlockDevice, BlockRequest};
use drivers::fake::{FakeClock, FakeDma, FakeMemory, FakeNvme, FakeNvmeConfig};
use drivers::nvme::{Config, Nvme};

type Drv = Nvme<FakeNvme, FakeDma, FakeClock>;

const NS1_BLOCKS: u64 = 4096; // 512-byte blocks: 2 MiB
const NS2_BLOCKS: u64 = 256; // 4 KiB blocks: 1 MiB

fn run(v: &mut View<Drv>, r: BlockRequest<Vec<u8>>) -> Result<Vec<u8>, drivers::Error> {
    let t = v.submit(0, r).map_err(|(e, _)| e)?;
    for _ in 0..1000 {
        if let Some(c) = v.poll(0, 0) {
            assert_eq!(c.token, t);
            c.result?;
            return Ok(c.request.into_buffer().unwrap_or_default());
        }
    }
    panic!("no completion");
}

fn setup() -> (FakeNvme, Registry<Drv>) {
    let mem = FakeMemory::new_shared();
    let fc = FakeNvmeConfig { ns2: Some((12, NS2_BLOCKS)), blocks: NS1_BLOCKS, ..Default::default() };
    let ctrl = FakeNvme::new(mem.clone(), fc);
    let mut nvme = Nvme::init(ctrl.clone(), FakeDma::new(mem), FakeClock::new(1000), Config::default()).unwrap();
    // A GPT on namespace 1, written through the driver like any data.
    let label = gpt::build(
        512,
        NS1_BLOCKS,
        &[("guest-a", Guid([0xA; 16]), 64, 1023), ("guest-b", Guid([0xB; 16]), 1024, 2047)],
    );
    let t =
        nvme.submit(0, BlockRequest::Write { lba: 0, buffer: label.clone(), fua: true }).map_err(|(e, _)| e).unwrap();
    let c = (0..100).find_map(|_| nvme.poll(0, 0)).unwrap();
    assert_eq!((c.token, c.result), (t, Ok(())));
    let h = gpt::parse_header(&ctrl.block(0), &ctrl.block(1), NS1_BLOCKS).unwrap().unwrap();
    let entries: Vec<u8> = (h.entries_lba..h.entries_lba + h.entries_blocks(512)).flat_map(|b| ctrl.block(b)).collect();
    let parts = gpt::parse_entries(&h, &entries).unwrap();
    let mut reg = Registry::new();
    let d = reg.add_device(nvme);
    assert!(reg.add_namespace("nvme0n1", d, 0, "Fake NVMe", "FERRITE-FAKE"));
    assert!(reg.add_namespace("nvme0n2", d, 1, "Fake NVMe", "FERRITE-FAKE"));
    reg.add_partitions("nvme0n1", &parts);
    (ctrl, reg)
}

#[test]
fn three_guests_three_extents() {
    let (ctrl, mut reg) = setup();
    let before1: Vec<Vec<u8>> = (0..NS1_BLOCKS).map(|b| ctrl.ns_block(1, b)).collect();
    let mut a = reg.open("nvme0n1p1", false, "vbd 1/51712", |_| None).unwrap();
    let mut b = reg.open("partlabel=guest-b", false, "vbd 2/51712", |_| None).unwrap();
    let mut c = reg.open("nvme0n2", false, "vbd 3/51712", |_| None).unwrap();
    assert_eq!((a.capacity(), a.block_size()), (960, 512));
    assert_eq!((c.capacity(), c.block_size()), (NS2_BLOCKS, 4096));
    // Each guest fills its whole disk with its own byte.
    for (v, byte) in [(&mut a, 0xAAu8), (&mut b, 0xBB)] {
        for lba in (0..v.capacity()).step_by(64) {
            run(v, BlockRequest::Write { lba, buffer: vec![byte; 64 * 512], fua: false }).unwrap();
        }
    }
    for lba in (0..NS2_BLOCKS).step_by(16) {
        run(&mut c, BlockRequest::Write { lba, buffer: vec![0xCC; 16 * 4096], fua: false }).unwrap();
    }
    // Nobody can address past their end, even by one block.
    for v in [&mut a, &mut b] {
        let end = v.capacity();
        let e = run(v, BlockRequest::Write { lba: end - 1, buffer: vec![0xEE; 1024], fua: false }).unwrap_err();
        assert_eq!(e, drivers::Error::OutOfRange);
        assert_eq!(run(v, BlockRequest::Discard { lba: end, blocks: 1 }).unwrap_err(), drivers::Error::OutOfRange);
    }
    // Reads see only their own bytes.
    assert_eq!(run(&mut a, BlockRequest::Read { lba: 959, buffer: vec![0; 512] }).unwrap(), vec![0xAA; 512]);
    assert_eq!(run(&mut b, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).unwrap(), vec![0xBB; 512]);
    // The media: each extent holds its guest's bytes, the rest is unchanged.
    for lba in 0..NS1_BLOCKS {
        let got = ctrl.ns_block(1, lba);
        let want = match lba {
            64..=1023 => vec![0xAA; 512],
            1024..=2047 => vec![0xBB; 512],
            _ => before1[lba as usize].clone(),
        };
        assert_eq!(got, want, "namespace 1 block {lba}");
    }
    assert!((0..NS2_BLOCKS).all(|b| ctrl.ns_block(2, b) == vec![0xCC; 4096]));
}

#[test]
fn overlapping_writers_and_read_only() {
    let (ctrl, mut reg) = setup();
    let a = reg.open("nvme0n1p1", false, "vbd 1/51712", |_| None).unwrap();
    // The namespace holds partition 1: a second writer is refused, so is a reader.
    match reg.open("nvme0n1", false, "vbd 2/51712", |_| None) {
        Err(OpenError::InUse { by, .. }) => assert_eq!(by, "vbd 1/51712"),
        other => panic!("{:?}", other.err()),
    }
    assert!(reg.open("nvme0n1", true, "vbd 2/51712", |_| None).is_err());
    drop(a);
    // Read-only users share; their writes never reach the disk.
    let mut r1 = reg.open("nvme0n1p2", true, "vbd 4/51712", |_| None).unwrap();
    let _r2 = reg.open("nvme0n1", true, "vbd 5/51712", |_| None).unwrap();
    let before = ctrl.ns_block(1, 1024);
    assert!(run(&mut r1, BlockRequest::Write { lba: 0, buffer: vec![1; 512], fua: true }).is_err());
    assert!(run(&mut r1, BlockRequest::Discard { lba: 0, blocks: 8 }).is_err());
    assert!(run(&mut r1, BlockRequest::WriteZeroes { lba: 0, blocks: 8 }).is_err());
    assert_eq!(ctrl.ns_block(1, 1024), before);
    assert!(reg.describe().contains(
        "nvme0n1p2 bytes=524288 lba=512 model=Fake_NVMe serial=FERRITE-FAKE partlabel=guest-b used-by=vbd_4/51712:ro"
    ));
}
