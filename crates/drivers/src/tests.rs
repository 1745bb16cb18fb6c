//! Driver tests against the fake controller and fake DMA.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::block::{BlockCompletion, BlockDevice, BlockRequest, RamDisk, Token};
use crate::error::{Error, Status, Wait};
use crate::fake::{FakeClock, FakeDma, FakeMemory, FakeNvme, FakeNvmeConfig, Injection, Stall};
use crate::nvme::spec::{admin, nvm, rw, Oncs};
use crate::nvme::{Config, Nvme};

type Drv = Nvme<FakeNvme, FakeDma, FakeClock>;

struct Rig {
    ctrl: FakeNvme,
    clock: FakeClock,
    nvme: Drv,
}

const MS: u64 = 1_000_000;

fn cfg_fast() -> Config {
    Config { io_timeout_ns: 100 * MS, abort_timeout_ns: 50 * MS, admin_timeout_ns: 50 * MS, ..Config::default() }
}

fn try_rig(
    fc: FakeNvmeConfig,
    cfg: Config,
    dma_setup: impl FnOnce(&mut FakeDma),
) -> (FakeNvme, FakeClock, Result<Drv, Error>) {
    let mem = FakeMemory::new_shared();
    let ctrl = FakeNvme::new(mem.clone(), fc);
    let mut dma = FakeDma::new(mem);
    dma_setup(&mut dma);
    let clock = FakeClock::new(1000);
    let r = Nvme::init(ctrl.clone(), dma, clock.clone(), cfg);
    (ctrl, clock, r)
}

fn rig_with(fc: FakeNvmeConfig, cfg: Config, dma_setup: impl FnOnce(&mut FakeDma)) -> Rig {
    let (ctrl, clock, r) = try_rig(fc, cfg, dma_setup);
    Rig { ctrl, clock, nvme: r.expect("bring-up") }
}

fn rig() -> Rig {
    rig_with(FakeNvmeConfig::default(), cfg_fast(), |_| {})
}

/// Polls `queue` until a completion arrives (bounded).
fn wait<B: BlockDevice>(dev: &mut B, queue: u16, now: u64) -> BlockCompletion<B::Buffer> {
    for _ in 0..1000 {
        if let Some(c) = dev.poll(queue, now) {
            return c;
        }
    }
    panic!("no completion on queue {queue}");
}

fn run<B: BlockDevice>(dev: &mut B, queue: u16, req: BlockRequest<B::Buffer>) -> BlockCompletion<B::Buffer> {
    let t = dev.submit(queue, req).map_err(|(e, _)| e).expect("submit");
    let c = wait(dev, queue, 0);
    assert_eq!(c.token, t);
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Writes, reads back and compares through the BlockDevice trait only.
fn roundtrip_through_trait<B: BlockDevice<Buffer = Vec<u8>>>(dev: &mut B) {
    let bs = dev.block_size() as usize;
    for (lba, blocks, seed) in [(0u64, 1usize, 1u8), (7, 3, 2), (dev.capacity() - 16, 16, 3), (100, 8192 / bs + 1, 4)] {
        let data = pattern(blocks * bs, seed);
        let c = run(dev, 0, BlockRequest::Write { lba, buffer: data.clone(), fua: false });
        assert_eq!(c.result, Ok(()));
        let c = run(dev, 0, BlockRequest::Read { lba, buffer: vec![0; blocks * bs] });
        assert_eq!(c.result, Ok(()));
        assert_eq!(c.request.into_buffer().unwrap(), data, "lba {lba} blocks {blocks}");
    }
    assert_eq!(run(dev, 0, BlockRequest::Flush).result, Ok(()));
}

#[test]
fn bring_up_sequence() {
    let r = rig_with(FakeNvmeConfig::default(), Config { io_queues: 2, ..cfg_fast() }, |_| {});
    let info = r.nvme.info();
    assert_eq!(info.block_size, 512);
    assert_eq!(info.blocks, 4096);
    assert_eq!(info.io_queues, 2);
    assert_eq!(info.queue_depth, 64);
    assert_eq!(info.max_transfer, 128 * 1024);
    assert!(info.volatile_write_cache && info.dsm && info.write_zeroes && !info.sgl);
    assert_eq!(&info.serial[..12], b"FERRITE-FAKE");
    assert_eq!((info.version.major(), info.version.minor()), (1, 4));
    let ops: Vec<(u16, u8)> = r.ctrl.commands().iter().map(|(q, s)| (*q, s.opcode())).collect();
    assert_eq!(
        ops,
        vec![
            (0, admin::IDENTIFY), // controller
            (0, admin::IDENTIFY), // active namespace list
            (0, admin::IDENTIFY), // namespace 1
            (0, admin::SET_FEATURES),
            (0, admin::CREATE_IO_CQ),
            (0, admin::CREATE_IO_SQ),
            (0, admin::CREATE_IO_CQ),
            (0, admin::CREATE_IO_SQ),
        ]
    );
    assert_eq!(r.ctrl.io_queues(), 2);
    assert_eq!(r.nvme.queue_count(), 2);
}

#[test]
fn queue_depth_is_min_of_mqes_and_wanted() {
    let fc = FakeNvmeConfig { mqes: 15, ..Default::default() };
    let r = rig_with(fc, Config { queue_depth: 64, ..cfg_fast() }, |_| {});
    assert_eq!(r.nvme.info().queue_depth, 16);
    let r = rig_with(fc, Config { queue_depth: 8, ..cfg_fast() }, |_| {});
    assert_eq!(r.nvme.info().queue_depth, 8);
    // Granted queue count is capped by the controller.
    let r = rig_with(FakeNvmeConfig { max_io_queues: 2, ..fc }, Config { io_queues: 8, ..cfg_fast() }, |_| {});
    assert_eq!(r.nvme.queue_count(), 2);
}

#[test]
fn bring_up_waits_are_bounded() {
    // RDY never comes: fails within CAP.TO (2 × 500 ms) of fake time.
    let mem = FakeMemory::new_shared();
    let ctrl = FakeNvme::new(mem.clone(), FakeNvmeConfig::default());
    ctrl.set_stall(Stall::NeverReady);
    let clock = FakeClock::new(1000);
    let r = Nvme::init(ctrl.clone(), FakeDma::new(mem), clock.clone(), cfg_fast());
    assert_eq!(r.err(), Some(Error::Timeout(Wait::Enable)));
    assert!(clock.peek() >= 1_000_000_000 && clock.peek() < 1_100_000_000);
}

#[test]
fn unsupported_formats_refused() {
    // 4 KiB blocks are fine...
    let r = rig_with(FakeNvmeConfig { lbads: 12, ..Default::default() }, cfg_fast(), |_| {});
    assert_eq!(r.nvme.info().block_size, 4096);
    // ...8 KiB blocks are not.
    let (_, _, r) = try_rig(FakeNvmeConfig { lbads: 13, ..Default::default() }, cfg_fast(), |_| {});
    assert_eq!(r.err(), Some(Error::UnsupportedController));
    // Namespace 2 does not exist on the fake.
    let (_, _, r) = try_rig(FakeNvmeConfig::default(), Config { nsid: 2, ..cfg_fast() }, |_| {});
    assert_eq!(r.err(), Some(Error::UnsupportedController));
}

#[test]
fn read_after_write_nvme_and_ramdisk() {
    let mut r = rig();
    roundtrip_through_trait(&mut r.nvme);
    assert_eq!(r.nvme.dma().live_mappings(), 0);
    let mut disk: RamDisk<Vec<u8>> = RamDisk::new(512, 4096, 1, 8);
    roundtrip_through_trait(&mut disk);
    // 4 KiB-block NVMe, offset and scattered buffers.
    let mut r = rig_with(FakeNvmeConfig { lbads: 12, ..Default::default() }, cfg_fast(), |d| {
        d.map_offset = 0x204;
        d.scatter = true;
    });
    roundtrip_through_trait(&mut r.nvme);
}

#[test]
fn large_transfers_use_chained_prp_lists() {
    // MDTS 0 (no limit) and 4 MiB transfers: 1025 PRP entries → 3 list pages.
    let fc = FakeNvmeConfig { mdts: 0, blocks: 1 << 16, ..Default::default() };
    let cfg = Config { max_transfer: 4 << 20, ..cfg_fast() };
    for offset in [0usize, 0x800] {
        let mut r = rig_with(fc, cfg, |d| {
            d.map_offset = offset;
            d.scatter = true;
        });
        assert_eq!(r.nvme.info().max_transfer, 4 << 20);
        let len = (4 << 20) - if offset == 0 { 0 } else { 512 };
        let data = pattern(len, 9);
        assert_eq!(
            run(&mut r.nvme, 0, BlockRequest::Write { lba: 8, buffer: data.clone(), fua: false }).result,
            Ok(())
        );
        let c = run(&mut r.nvme, 0, BlockRequest::Read { lba: 8, buffer: vec![0; len] });
        assert_eq!(c.request.into_buffer().unwrap(), data);
        assert_eq!(r.ctrl.block(8 + (len / 512) as u64 - 1), data[len - 512..].to_vec());
    }
}

#[test]
fn doorbell_stride_is_honoured() {
    let mut r =
        rig_with(FakeNvmeConfig { dstrd: 2, ..Default::default() }, Config { io_queues: 3, ..cfg_fast() }, |_| {});
    for q in 0..3 {
        let c = run(&mut r.nvme, q, BlockRequest::Write { lba: u64::from(q), buffer: vec![q as u8; 512], fua: false });
        assert_eq!(c.result, Ok(()));
    }
    assert_eq!(r.ctrl.block(2), vec![2; 512]);
}

/// Every active namespace is found, each with its own block size; I/O on
/// one never touches the other; an NVMe 1.0 controller (no active list) is
/// probed by NSID.
#[test]
fn namespaces_are_separate_volumes() {
    use crate::block::Volumes;
    for active_list in [true, false] {
        let fc = FakeNvmeConfig { ns2: Some((12, 256)), active_list, ..Default::default() };
        let mut r = rig_with(fc, cfg_fast(), |_| {});
        let ns: Vec<(u32, u32, u64)> =
            r.nvme.info().namespaces.iter().map(|n| (n.nsid, n.block_size, n.blocks)).collect();
        assert_eq!(ns, vec![(1, 512, 4096), (2, 4096, 256)], "active list {active_list}");
        assert_eq!(r.nvme.volumes(), 2);
        assert_eq!(r.nvme.volume_geometry(1), Some((4096, 256)));
        let t =
            Volumes::submit_to(&mut r.nvme, 1, 0, BlockRequest::Write { lba: 3, buffer: vec![0x44; 4096], fua: false })
                .map_err(|(e, _)| e)
                .unwrap();
        let c = wait(&mut r.nvme, 0, 0);
        assert_eq!((c.token, c.result), (t, Ok(())));
        assert_eq!(r.ctrl.ns_block(2, 3), vec![0x44; 4096]);
        assert_eq!(r.ctrl.ns_block(1, 3), vec![0; 512], "namespace 1 untouched");
        // 4 KiB namespace: a 512-byte buffer is not a whole block; LBA 256 is past its end.
        let e = Volumes::submit_to(&mut r.nvme, 1, 0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).unwrap_err();
        assert_eq!(e.0, Error::BadBuffer);
        let e =
            Volumes::submit_to(&mut r.nvme, 1, 0, BlockRequest::Read { lba: 256, buffer: vec![0; 4096] }).unwrap_err();
        assert_eq!(e.0, Error::OutOfRange);
        assert_eq!(Volumes::submit_to(&mut r.nvme, 2, 0, BlockRequest::Flush).unwrap_err().0, Error::OutOfRange);
    }
}

/// Device-reported limits that make no sense fail the controller with an
/// error, never an assertion (MQES = 0 used to trip `Ring::new`; a huge
/// stride used to put doorbells outside BAR0, where MMIO asserts).
#[test]
fn nonsense_capabilities_fail_the_controller() {
    let (_, _, r) = try_rig(FakeNvmeConfig { mqes: 0, ..Default::default() }, cfg_fast(), |_| {});
    assert!(matches!(r.err(), Some(Error::BadCapability(_))));
    let (_, _, r) = try_rig(FakeNvmeConfig { dstrd: 15, ..Default::default() }, cfg_fast(), |_| {});
    assert!(matches!(r.err(), Some(Error::BadCapability(_))));
    // A 16 KiB BAR with a 1 KiB stride (DSTRD 8) holds the doorbells of
    // queues 0 to 5 only: the driver uses the queues that fit.
    let fc = FakeNvmeConfig { dstrd: 8, max_io_queues: 8, ..Default::default() };
    let mut r = rig_with(fc, Config { io_queues: 8, ..cfg_fast() }, |_| {});
    assert_eq!(r.nvme.queue_count(), 5);
    let c = run(&mut r.nvme, 4, BlockRequest::Write { lba: 1, buffer: vec![7; 512], fua: false });
    assert_eq!(c.result, Ok(()));
    assert_eq!(r.ctrl.block(1), vec![7; 512]);
}

#[test]
fn fua_bit_follows_request() {
    let mut r = rig();
    run(&mut r.nvme, 0, BlockRequest::Write { lba: 1, buffer: vec![1; 512], fua: true });
    run(&mut r.nvme, 0, BlockRequest::Write { lba: 2, buffer: vec![1; 512], fua: false });
    let writes: Vec<u32> =
        r.ctrl.commands().iter().filter(|(q, s)| *q == 1 && s.opcode() == nvm::WRITE).map(|(_, s)| s.cdw12).collect();
    assert_eq!(writes, vec![rw::FUA, 0]);
}

#[test]
fn discard_and_write_zeroes() {
    let mut r = rig();
    run(&mut r.nvme, 0, BlockRequest::Write { lba: 0, buffer: vec![0xEE; 8 * 512], fua: false });
    assert_eq!(run(&mut r.nvme, 0, BlockRequest::Discard { lba: 1, blocks: 2 }).result, Ok(()));
    assert_eq!(run(&mut r.nvme, 0, BlockRequest::WriteZeroes { lba: 5, blocks: 1 }).result, Ok(()));
    let b = run(&mut r.nvme, 0, BlockRequest::Read { lba: 0, buffer: vec![7; 8 * 512] }).request.into_buffer().unwrap();
    let blk = |i: usize| &b[i * 512..(i + 1) * 512];
    assert!(blk(0).iter().all(|&x| x == 0xEE));
    assert!(blk(1).iter().chain(blk(2)).chain(blk(5)).all(|&x| x == 0));
    assert!(blk(3).iter().chain(blk(4)).chain(blk(6)).all(|&x| x == 0xEE));
    let dsm = r.ctrl.commands().into_iter().find(|(q, s)| *q != 0 && s.opcode() == nvm::DATASET_MANAGEMENT).unwrap().1;
    assert_eq!(dsm.cdw11, 4, "deallocate attribute");

    // Without ONCS support the requests are refused and handed back.
    let mut r = rig_with(FakeNvmeConfig { oncs: Oncs::COMPARE, ..Default::default() }, cfg_fast(), |_| {});
    let (e, req) = r.nvme.submit(0, BlockRequest::Discard { lba: 0, blocks: 1 }).unwrap_err();
    assert_eq!((e, req), (Error::NotSupported, BlockRequest::Discard { lba: 0, blocks: 1 }));
    let (e, _) = r.nvme.submit(0, BlockRequest::WriteZeroes { lba: 0, blocks: 1 }).unwrap_err();
    assert_eq!(e, Error::NotSupported);
    assert!(!r.nvme.features().discard);
}

#[test]
fn bad_requests_hand_buffer_back() {
    let mut r = rig();
    let (e, req) = r.nvme.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 100] }).unwrap_err();
    assert_eq!(e, Error::BadBuffer);
    assert_eq!(req.into_buffer().unwrap().len(), 100);
    let (e, _) = r.nvme.submit(0, BlockRequest::Read { lba: 4095, buffer: vec![0; 1024] }).unwrap_err();
    assert_eq!(e, Error::OutOfRange);
    let (e, _) = r.nvme.submit(0, BlockRequest::Write { lba: u64::MAX, buffer: vec![0; 512], fua: false }).unwrap_err();
    assert_eq!(e, Error::OutOfRange);
    let (e, _) = r.nvme.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 256 * 1024] }).unwrap_err();
    assert_eq!(e, Error::BadBuffer, "over MDTS");
    let (e, _) = r.nvme.submit(7, BlockRequest::Flush).unwrap_err();
    assert_eq!(e, Error::NoSuchQueue);
    let (e, _) = r.nvme.submit(0, BlockRequest::WriteZeroes { lba: 0, blocks: 0 }).unwrap_err();
    assert_eq!(e, Error::BadBuffer);
    assert_eq!(r.nvme.dma().live_mappings(), 0);
    assert_eq!(r.nvme.in_flight(0), 0);
}

#[test]
fn phase_tag_wraps_over_many_laps() {
    // Depth 4: 3 in flight at most. 300 commands = 100 laps of the CQ.
    let fc = FakeNvmeConfig { mqes: 3, ..Default::default() };
    let mut r = rig_with(fc, cfg_fast(), |_| {});
    assert_eq!(r.nvme.info().queue_depth, 4);
    let mut n = 0u64;
    for round in 0..100u64 {
        // Alternate single commands and full batches so head/tail positions
        // drift across the wrap point.
        let batch = if round % 2 == 0 { 1 } else { 3 };
        let mut tokens = Vec::new();
        for _ in 0..batch {
            let lba = n % 64;
            let buf = vec![(n % 251) as u8; 512];
            tokens.push(
                r.nvme.submit(0, BlockRequest::Write { lba, buffer: buf, fua: false }).map_err(|(e, _)| e).unwrap(),
            );
            n += 1;
        }
        for t in tokens {
            let c = wait(&mut r.nvme, 0, 0);
            assert_eq!((c.token, c.result), (t, Ok(())));
        }
    }
    assert_eq!(n, 200);
    for lba in 0..64u64 {
        let last = (0..n).rev().find(|k| k % 64 == lba).unwrap();
        assert_eq!(r.ctrl.block(lba), vec![(last % 251) as u8; 512]);
    }
    assert_eq!(r.nvme.stats().spurious_completions, 0);
}

#[test]
fn queue_full_then_drains() {
    let fc = FakeNvmeConfig { mqes: 7, ..Default::default() };
    let mut r = rig_with(fc, cfg_fast(), |_| {});
    r.ctrl.set_auto(false);
    let mut tokens = Vec::new();
    for i in 0..7u8 {
        tokens.push(
            r.nvme
                .submit(0, BlockRequest::Write { lba: u64::from(i), buffer: vec![i; 512], fua: false })
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    assert_eq!(r.nvme.in_flight(0), 7);
    let (e, req) = r.nvme.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).unwrap_err();
    assert_eq!(e, Error::QueueFull);
    assert_eq!(req.into_buffer().unwrap().len(), 512);
    assert!(r.nvme.poll(0, 0).is_none(), "nothing processed yet");
    r.ctrl.step();
    let done: Vec<Token> = (0..7).map(|_| wait(&mut r.nvme, 0, 0).token).collect();
    assert_eq!(done, tokens);
    assert!(r.nvme.submit(0, BlockRequest::Flush).is_ok());
}

#[test]
fn error_statuses_are_typed() {
    let mut r = rig();
    let cases = [
        ((2, 0x81), Error::Status(Status::UnrecoveredReadError)),
        ((2, 0x80), Error::Status(Status::WriteFault)),
        ((0, 0x80), Error::Status(Status::LbaOutOfRange)),
        ((0, 0x04), Error::Status(Status::DataTransferError)),
        ((0, 0x07), Error::Aborted),
        ((1, 0x82), Error::Status(Status::WriteToReadOnlyRange)),
        ((7, 0x42), Error::Status(Status::VendorSpecific(0x42))),
    ];
    for ((sct, sc), want) in cases {
        r.ctrl.inject(Injection::Status { sct, sc, dnr: true });
        let c = run(&mut r.nvme, 0, BlockRequest::Read { lba: 3, buffer: vec![0; 1024] });
        assert_eq!(c.result, Err(want));
        assert_eq!(c.request.into_buffer().unwrap().len(), 1024, "buffer comes back");
    }
    assert_eq!(r.nvme.dma().live_mappings(), 0);
    // Normal service afterwards.
    assert_eq!(run(&mut r.nvme, 0, BlockRequest::Flush).result, Ok(()));
}

#[test]
fn timeout_then_abort_succeeds() {
    let mut r = rig();
    r.ctrl.inject(Injection::Drop);
    let t =
        r.nvme.submit(0, BlockRequest::Write { lba: 1, buffer: vec![1; 512], fua: false }).map_err(|(e, _)| e).unwrap();
    assert!(r.nvme.poll(0, 0).is_none()); // deadline stamped: 100 ms
    assert!(r.nvme.poll(0, 99 * MS).is_none());
    assert_eq!(r.nvme.stats().aborts_sent, 0);
    let c = r.nvme.poll(0, 100 * MS).or_else(|| r.nvme.poll(0, 100 * MS)).expect("aborted completion");
    assert_eq!((c.token, c.result), (t, Err(Error::Aborted)));
    assert_eq!(r.nvme.stats().aborts_sent, 1);
    assert_eq!(r.nvme.stats().resets, 0);
    assert_eq!(r.ctrl.resets(), 0);
    assert_eq!(r.nvme.dma().live_mappings(), 0);
    assert_eq!(run(&mut r.nvme, 0, BlockRequest::Flush).result, Ok(()));
}

/// Polls skip the deadline scan until a deadline can be due: a command
/// submitted while another is in flight (after that one's scan) still gets
/// its own deadline at the next poll and is aborted when it passes, not
/// when the first one's would.
#[test]
fn later_command_gets_its_own_deadline() {
    let mut r = rig();
    r.ctrl.inject(Injection::Drop);
    let t1 =
        r.nvme.submit(0, BlockRequest::Write { lba: 1, buffer: vec![1; 512], fua: false }).map_err(|(e, _)| e).unwrap();
    assert!(r.nvme.poll(0, 0).is_none()); // t1: deadline 100 ms
    r.ctrl.inject(Injection::Drop);
    let t2 =
        r.nvme.submit(0, BlockRequest::Write { lba: 2, buffer: vec![2; 512], fua: false }).map_err(|(e, _)| e).unwrap();
    assert!(r.nvme.poll(0, 50 * MS).is_none()); // t2: deadline 150 ms
    let c = r.nvme.poll(0, 100 * MS).or_else(|| r.nvme.poll(0, 100 * MS)).expect("t1 aborted");
    assert_eq!((c.token, c.result), (t1, Err(Error::Aborted)));
    assert!(r.nvme.poll(0, 149 * MS).is_none(), "t2 is not due yet");
    assert_eq!(r.nvme.stats().aborts_sent, 1);
    let c = r.nvme.poll(0, 150 * MS).or_else(|| r.nvme.poll(0, 150 * MS)).expect("t2 aborted");
    assert_eq!((c.token, c.result), (t2, Err(Error::Aborted)));
    assert_eq!(r.nvme.stats().aborts_sent, 2);
    assert_eq!(r.nvme.stats().resets, 0);
    assert_eq!(r.nvme.dma().live_mappings(), 0);
}

/// Commands in flight on two queues; one is swallowed and its Abort fails:
/// the controller is reset and *every* in-flight command comes back with
/// `Error::Reset`, then service resumes.
#[test]
fn timeout_abort_fails_reset_fails_back_all() {
    let mut r = rig_with(FakeNvmeConfig::default(), Config { io_queues: 2, ..cfg_fast() }, |_| {});
    r.ctrl.set_abort_succeeds(false);
    for _ in 0..7 {
        r.ctrl.inject(Injection::Drop);
    }
    let stuck =
        r.nvme.submit(0, BlockRequest::Write { lba: 1, buffer: vec![1; 512], fua: false }).map_err(|(e, _)| e).unwrap();
    let mut others = Vec::new();
    for q in 0..2u16 {
        for i in 0..3u64 {
            others.push((
                q,
                r.nvme.submit(q, BlockRequest::Read { lba: i, buffer: vec![0; 512] }).map_err(|(e, _)| e).unwrap(),
            ));
        }
    }
    assert_eq!(r.ctrl.held(), 7);
    assert!(r.nvme.poll(0, 0).is_none());
    assert!(r.nvme.poll(1, 10 * MS).is_none());
    // Queue 0's four commands are overdue: Aborts go out.
    assert!(r.nvme.poll(0, 100 * MS).is_none(), "aborts sent, answers not yet reaped");
    assert_eq!(r.nvme.stats().aborts_sent, 4);
    // "Not aborted" answers: the commands get until their abort deadline.
    assert!(r.nvme.poll(0, 149 * MS).is_none());
    assert_eq!(r.nvme.stats().aborts_refused, 4);
    assert_eq!(r.nvme.stats().resets, 0);
    // Past it: reset, and everything comes back.
    let mut got = Vec::new();
    for _ in 0..10 {
        while let Some(c) = r.nvme.poll(0, 150 * MS) {
            got.push((0u16, c));
        }
        while let Some(c) = r.nvme.poll(1, 150 * MS) {
            got.push((1u16, c));
        }
    }
    assert_eq!(r.nvme.stats().resets, 1);
    assert_eq!(r.ctrl.resets(), 1);
    assert_eq!(got.len(), 7, "every in-flight command failed back");
    assert!(got.iter().all(|(_, c)| c.result == Err(Error::Reset)));
    assert!(got.iter().any(|(q, c)| *q == 0 && c.token == stuck));
    for (q, t) in others {
        assert!(got.iter().any(|(gq, c)| *gq == q && c.token == t));
    }
    assert!(got.iter().all(|(_, c)| c.request.buffer().unwrap().len() == 512));
    assert_eq!(r.nvme.dma().live_mappings(), 0);
    assert!(!r.nvme.is_failed());
    // Queues were recreated: service continues on both.
    assert_eq!(r.ctrl.io_queues(), 2);
    let _ = r.clock.peek();
    for q in 0..2 {
        let c = run(&mut r.nvme, q, BlockRequest::Write { lba: 9, buffer: vec![9; 512], fua: true });
        assert_eq!(c.result, Ok(()));
    }
    assert_eq!(r.ctrl.block(9), vec![9; 512]);
}

/// The Abort itself goes unanswered (controller stopped processing): the
/// command is failed back by a reset once the abort deadline passes.
#[test]
fn abort_unanswered_command_still_missing_resets() {
    let mut r = rig();
    r.ctrl.inject(Injection::Drop);
    let t = r.nvme.submit(0, BlockRequest::Flush).map_err(|(e, _)| e).unwrap();
    r.ctrl.set_auto(false);
    assert!(r.nvme.poll(0, 0).is_none());
    assert!(r.nvme.poll(0, 100 * MS).is_none());
    assert_eq!(r.nvme.stats().aborts_sent, 1);
    assert!(r.nvme.poll(0, 149 * MS).is_none());
    let c = r.nvme.poll(0, 150 * MS).expect("failed back after reset");
    assert_eq!((c.token, c.result), (t, Err(Error::Reset)));
    assert_eq!(r.nvme.stats().resets, 1);
}

#[test]
fn reset_when_controller_never_stops_fails_closed() {
    let mut r = rig();
    r.ctrl.set_abort_succeeds(false);
    r.ctrl.inject(Injection::Drop);
    let t = r.nvme.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).map_err(|(e, _)| e).unwrap();
    r.ctrl.set_stall(Stall::NeverDisable);
    r.nvme.poll(0, 0);
    r.nvme.poll(0, 100 * MS);
    let c = r.nvme.poll(0, 150 * MS).expect("failed back");
    assert_eq!((c.token, c.result), (t, Err(Error::Reset)));
    assert!(r.nvme.is_failed());
    // The controller never stopped: the read's device memory is abandoned
    // (kept out of use), not unmapped and reused.
    assert_eq!((r.nvme.dma().abandoned(), r.nvme.dma().live_mappings()), (1, 0));
    let (e, req) = r.nvme.submit(0, BlockRequest::Flush).unwrap_err();
    assert_eq!((e, req), (Error::ControllerFailed, BlockRequest::Flush));
    assert!(r.nvme.poll(0, 200 * MS).is_none());
}

#[test]
fn fatal_status_skips_abort_and_resets() {
    let mut r = rig();
    r.ctrl.inject(Injection::Drop);
    let t = r.nvme.submit(0, BlockRequest::Flush).map_err(|(e, _)| e).unwrap();
    r.nvme.poll(0, 0);
    r.ctrl.set_fatal(true);
    let c = r.nvme.poll(0, 100 * MS).expect("failed back");
    assert_eq!((c.token, c.result), (t, Err(Error::Reset)));
    assert_eq!(r.nvme.stats().aborts_sent, 0);
}

#[test]
fn spurious_completions_are_ignored() {
    let mut r = rig();
    r.ctrl.post_spurious(1, 42);
    assert!(r.nvme.poll(0, 0).is_none());
    assert_eq!(r.nvme.stats().spurious_completions, 1);
    assert_eq!(run(&mut r.nvme, 0, BlockRequest::Flush).result, Ok(()));
}

#[test]
fn shutdown_deletes_queues_and_refuses_more() {
    let mut r = rig_with(FakeNvmeConfig::default(), Config { io_queues: 2, ..cfg_fast() }, |_| {});
    assert_eq!(r.ctrl.io_queues(), 2);
    assert_eq!(r.nvme.shutdown(), Ok(()));
    assert_eq!(r.ctrl.io_queues(), 0);
    let ops: Vec<u8> = r.ctrl.commands().iter().rev().take(4).map(|(_, s)| s.opcode()).collect();
    assert_eq!(ops, vec![admin::DELETE_IO_CQ, admin::DELETE_IO_CQ, admin::DELETE_IO_SQ, admin::DELETE_IO_SQ]);
    let (e, _) = r.nvme.submit(0, BlockRequest::Flush).unwrap_err();
    assert_eq!(e, Error::ControllerFailed);
}

#[derive(Clone, Debug)]
enum Op {
    Write { lba: u64, blocks: u64, seed: u8, fua: bool },
    Read { lba: u64, blocks: u64 },
    Discard { lba: u64, blocks: u64 },
    Zero { lba: u64, blocks: u64 },
    Flush,
}

fn op_strategy(cap: u64) -> impl Strategy<Value = Op> {
    let range = (0..cap).prop_flat_map(move |lba| (Just(lba), 1..=(cap - lba).min(40)));
    prop_oneof![
        3 => (range.clone(), any::<u8>(), any::<bool>()).prop_map(|((lba, blocks), seed, fua)| Op::Write { lba, blocks, seed, fua }),
        3 => range.clone().prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
        1 => range.clone().prop_map(|(lba, blocks)| Op::Discard { lba, blocks }),
        1 => range.prop_map(|(lba, blocks)| Op::Zero { lba, blocks }),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random I/O in random batch sizes, through the NVMe driver and the
    /// fake controller, against a flat model.
    #[test]
    fn random_io_matches_model(
        ops in proptest::collection::vec(op_strategy(256), 1..60),
        batch in 1usize..8,
        offset in (0usize..1024).prop_map(|o| o * 4),
        scatter in any::<bool>(),
        mqes in 3u16..16,
    ) {
        let fc = FakeNvmeConfig { blocks: 256, mqes, ..Default::default() };
        let mut r = rig_with(fc, cfg_fast(), |d| { d.map_offset = offset; d.scatter = scatter; });
        let mut model = vec![0u8; 256 * 512];
        let depth = usize::from(r.nvme.info().queue_depth) - 1;
        for chunk in ops.chunks(batch.min(depth)) {
            let mut expect = Vec::new();
            for op in chunk {
                let (req, want) = match *op {
                    Op::Write { lba, blocks, seed, fua } => {
                        let data = pattern(blocks as usize * 512, seed);
                        let s = lba as usize * 512;
                        model[s..s + data.len()].copy_from_slice(&data);
                        (BlockRequest::Write { lba, buffer: data, fua }, None)
                    }
                    Op::Read { lba, blocks } => {
                        let s = lba as usize * 512;
                        let want = model[s..s + blocks as usize * 512].to_vec();
                        (BlockRequest::Read { lba, buffer: vec![0xCC; blocks as usize * 512] }, Some(want))
                    }
                    Op::Discard { lba, blocks } | Op::Zero { lba, blocks } => {
                        let s = lba as usize * 512;
                        model[s..s + blocks as usize * 512].fill(0);
                        if matches!(op, Op::Discard { .. }) {
                            (BlockRequest::Discard { lba, blocks }, None)
                        } else {
                            (BlockRequest::WriteZeroes { lba, blocks }, None)
                        }
                    }
                    Op::Flush => (BlockRequest::Flush, None),
                };
                let t = r.nvme.submit(0, req).map_err(|(e, _)| e).unwrap();
                expect.push((t, want));
            }
            for (t, want) in expect {
                let c = wait(&mut r.nvme, 0, 0);
                prop_assert_eq!(c.token, t);
                prop_assert_eq!(c.result, Ok(()));
                if let Some(want) = want {
                    prop_assert_eq!(c.request.into_buffer().unwrap(), want);
                }
            }
        }
        prop_assert_eq!(r.nvme.dma().live_mappings(), 0);
        for lba in 0..256u64 {
            let s = lba as usize * 512;
            prop_assert_eq!(r.ctrl.block(lba), model[s..s + 512].to_vec());
        }
    }

    /// Same against the RamDisk.
    #[test]
    fn ramdisk_matches_model(ops in proptest::collection::vec(op_strategy(128), 1..60)) {
        let mut d: RamDisk<Vec<u8>> = RamDisk::new(512, 128, 1, 4);
        let mut model = vec![0u8; 128 * 512];
        for op in ops {
            match op {
                Op::Write { lba, blocks, seed, fua } => {
                    let data = pattern(blocks as usize * 512, seed);
                    let s = lba as usize * 512;
                    model[s..s + data.len()].copy_from_slice(&data);
                    prop_assert_eq!(run(&mut d, 0, BlockRequest::Write { lba, buffer: data, fua }).result, Ok(()));
                }
                Op::Read { lba, blocks } => {
                    let s = lba as usize * 512;
                    let c = run(&mut d, 0, BlockRequest::Read { lba, buffer: vec![0; blocks as usize * 512] });
                    prop_assert_eq!(c.request.into_buffer().unwrap(), model[s..s + blocks as usize * 512].to_vec());
                }
                Op::Discard { lba, blocks } | Op::Zero { lba, blocks } => {
                    let s = lba as usize * 512;
                    model[s..s + blocks as usize * 512].fill(0);
                    run(&mut d, 0, BlockRequest::WriteZeroes { lba, blocks });
                }
                Op::Flush => { run(&mut d, 0, BlockRequest::Flush); }
            }
        }
        prop_assert_eq!(d.contents(), &model[..]);
    }
}

/// A command completes on its own while its Abort is still queued: its id
/// must not be handed out again until the Abort's answer is in, or the
/// Abort could hit the newer command.
#[test]
fn aborted_id_is_not_reused_before_abort_answer() {
    let fc = FakeNvmeConfig { mqes: 2, ..Default::default() }; // depth 3: ids 0, 1
    let mut r = rig_with(fc, cfg_fast(), |_| {});
    r.ctrl.set_auto(false);
    r.ctrl.set_admin_paused(true);
    let a = r.nvme.submit(0, BlockRequest::Flush).map_err(|(e, _)| e).unwrap();
    assert!(r.nvme.poll(0, 0).is_none());
    assert!(r.nvme.poll(0, 100 * MS).is_none()); // Abort for id 0 queued
    assert_eq!(r.nvme.stats().aborts_sent, 1);
    r.ctrl.step(); // the flush completes normally; the Abort waits
    let c = wait(&mut r.nvme, 0, 100 * MS);
    assert_eq!((c.token, c.result), (a, Ok(())));
    // Id 0 is parked: only id 1 is free.
    r.nvme.submit(0, BlockRequest::Flush).map_err(|(e, _)| e).unwrap();
    let (e, _) = r.nvme.submit(0, BlockRequest::Flush).unwrap_err();
    assert_eq!(e, Error::QueueFull);
    // The Abort's answer ("not aborted": nothing to abort) frees id 0.
    r.ctrl.set_admin_paused(false);
    r.ctrl.step();
    let c = wait(&mut r.nvme, 0, 100 * MS);
    assert_eq!(c.result, Ok(()));
    assert_eq!(r.nvme.stats().aborts_refused, 1);
    r.nvme.submit(0, BlockRequest::Flush).map_err(|(e, _)| e).unwrap();
    r.ctrl.step();
    let cids: Vec<u16> =
        r.ctrl.commands().iter().filter(|(q, s)| *q == 1 && s.opcode() == nvm::FLUSH).map(|(_, s)| s.cid()).collect();
    assert_eq!(cids, vec![0, 1, 0]);
    assert_eq!(r.nvme.stats().resets, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A device that posts completions nobody asked for (random ids, some
    /// naming real commands) must not make the driver panic, lose a token,
    /// complete one twice, or leak a mapping (STYLE.md §5).
    #[test]
    fn lying_device_never_loses_or_duplicates(
        script in proptest::collection::vec((any::<bool>(), 0u16..16), 1..80),
    ) {
        let fc = FakeNvmeConfig { mqes: 7, ..Default::default() };
        let mut r = rig_with(fc, cfg_fast(), |_| {});
        r.ctrl.set_auto(false);
        let mut outstanding = alloc::collections::BTreeSet::new();
        let mut seen = alloc::collections::BTreeSet::new();
        for (submit, cid) in script {
            if submit {
                match r.nvme.submit(0, BlockRequest::Write { lba: u64::from(cid), buffer: vec![1; 512], fua: false }) {
                    Ok(t) => { outstanding.insert(t); }
                    Err((e, _)) => prop_assert_eq!(e, Error::QueueFull),
                }
            } else {
                r.ctrl.step();
                r.ctrl.post_spurious(1, cid);
            }
            while let Some(c) = r.nvme.poll(0, 0) {
                prop_assert!(seen.insert(c.token), "token completed twice");
                prop_assert!(outstanding.remove(&c.token));
            }
        }
        r.ctrl.step();
        for _ in 0..64 {
            while let Some(c) = r.nvme.poll(0, 0) {
                prop_assert!(seen.insert(c.token), "token completed twice");
                prop_assert!(outstanding.remove(&c.token));
            }
        }
        prop_assert!(outstanding.is_empty(), "lost tokens: {:?}", outstanding);
        prop_assert_eq!(r.nvme.dma().live_mappings(), 0);
    }
}

#[test]
fn admin_command_timeout_fails_bring_up() {
    let mem = FakeMemory::new_shared();
    let ctrl = FakeNvme::new(mem.clone(), FakeNvmeConfig::default());
    ctrl.set_admin_paused(true);
    let clock = FakeClock::new(1000);
    let r = Nvme::init(ctrl, FakeDma::new(mem), clock.clone(), cfg_fast());
    assert_eq!(r.err(), Some(Error::Timeout(Wait::AdminCommand)));
    assert!(clock.peek() >= 50 * MS);
}

#[test]
fn vanished_device_detected() {
    let mem = FakeMemory::new_shared();
    let ctrl = FakeNvme::new(mem.clone(), FakeNvmeConfig::default());
    ctrl.set_gone(true);
    let r = Nvme::init(ctrl, FakeDma::new(mem), FakeClock::new(1000), cfg_fast());
    assert_eq!(r.err(), Some(Error::DeviceGone));

    // Gone while a command is stuck: the reset cannot stop it, the driver
    // fails closed and still hands the command back.
    let mut r = rig();
    r.ctrl.inject(Injection::Drop);
    let t = r.nvme.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).map_err(|(e, _)| e).unwrap();
    r.nvme.poll(0, 0);
    r.ctrl.set_gone(true);
    let c = r.nvme.poll(0, 100 * MS).expect("failed back");
    assert_eq!((c.token, c.result), (t, Err(Error::Reset)));
    assert!(r.nvme.is_failed());
    assert_eq!(r.nvme.dma().live_mappings(), 0);
}

#[test]
fn sgl_when_the_controller_supports_it() {
    // Contiguous (one Data Block) and scattered, offset buffers (a Last
    // Segment list of Data Blocks); the fake checks every descriptor.
    for (scatter, offset) in [(false, 0usize), (true, 0x200)] {
        let fc = FakeNvmeConfig { sgl: true, ..Default::default() };
        let mut r = rig_with(fc, cfg_fast(), |d| {
            d.scatter = scatter;
            d.map_offset = offset;
        });
        assert!(r.nvme.info().sgl);
        roundtrip_through_trait(&mut r.nvme);
        let data = pattern(64 * 1024, 3);
        assert_eq!(
            run(&mut r.nvme, 0, BlockRequest::Write { lba: 40, buffer: data.clone(), fua: false }).result,
            Ok(())
        );
        let c = run(&mut r.nvme, 0, BlockRequest::Read { lba: 40, buffer: vec![0; data.len()] });
        assert_eq!(c.request.into_buffer().unwrap(), data);
        assert!(r.ctrl.sgl_commands() >= 2, "data went through SGLs (scatter {scatter})");
        assert_eq!(r.nvme.dma().live_mappings(), 0);
    }
    // Without controller support, or turned off, PRPs are used.
    for (fc_sgl, use_sgl) in [(false, true), (true, false)] {
        let mut r =
            rig_with(FakeNvmeConfig { sgl: fc_sgl, ..Default::default() }, Config { use_sgl, ..cfg_fast() }, |_| {});
        roundtrip_through_trait(&mut r.nvme);
        assert_eq!(r.ctrl.sgl_commands(), 0);
    }
}
