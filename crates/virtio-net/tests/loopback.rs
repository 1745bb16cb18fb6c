//! The driver against a fake virtio-net device that reaches memory only by
//! the bus addresses it is given (fake DMA, buffers staged and mapped by
//! `virtio_hal`): bring-up and negotiation, transmit with offload headers,
//! receive with header checks, MQ through the control queue, and hostile
//! used-ring entries (ids we never gave, lengths past the buffer).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use drivers::fake::{FakeClock, FakeDma, FakeMemory, Memory};
use drivers::nic::{Nic, NicError};
use net::{Csum, Frame, Gso, GsoKind, MacAddr, Meta};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use virtio_hal::{HalState, MapperSlot, VirtioHal};
use virtio_net::features as f;
use virtio_net::hdr::{NetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, HDR_LEN};
use virtio_net::{NetConfig, NetError, VirtioNet};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub struct Slot;
impl Slot {
    fn cell() -> &'static std::thread::LocalKey<RefCell<Option<HalState<FakeDma>>>> {
        thread_local! {
            static STATE: RefCell<Option<HalState<FakeDma>>> = const { RefCell::new(None) };
        }
        &STATE
    }
    fn install(s: HalState<FakeDma>) {
        Self::cell().with(|c| *c.borrow_mut() = Some(s));
    }
    fn take() -> Option<HalState<FakeDma>> {
        Self::cell().with(|c| c.borrow_mut().take())
    }
}
// SAFETY: FakeDma returns pointers into FakeMemory's page-aligned pages,
// valid until the region is freed and never referenced otherwise.
unsafe impl MapperSlot for Slot {
    type Mapper = FakeDma;
    fn with<R>(f: impl FnOnce(&mut HalState<FakeDma>) -> R) -> Option<R> {
        Self::cell().with(|c| c.try_borrow_mut().ok()?.as_mut().map(f))
    }
    fn mmio(_paddr: u64, _size: usize) -> Option<core::ptr::NonNull<u8>> {
        None
    }
}
type H = VirtioHal<Slot>;

/// A descriptor chain as the device sees it: (address, length, device-writable).
type Chain = Vec<(u64, usize, bool)>;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

#[derive(Clone, Copy)]
struct Queue {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
}

/// The device's side, shared with the test.
#[derive(Default)]
struct Dev {
    mem: Option<Memory>,
    features: u64,
    driver_features: u64,
    refuse_features: bool,
    /// Never resets (status writes of 0 are ignored).
    stuck: bool,
    status: u32,
    config: Vec<u8>,
    queues: BTreeMap<u16, Queue>,
    /// Frames sent (header + frame), by transmit queue.
    sent: Vec<(u16, Vec<u8>)>,
    /// Control commands seen (class, command, data).
    ctrl: Vec<Vec<u8>>,
    /// Next used entry: report this id instead of the real head.
    fake_id: Option<u32>,
    /// Next used entry: report this length instead of the real one.
    fake_len: Option<u32>,
}

impl Dev {
    fn mem(&self) -> Memory {
        self.mem.clone().unwrap()
    }
    fn r16(&self, a: u64) -> u16 {
        let mut b = [0u8; 2];
        self.mem().borrow().read(a, &mut b);
        u16::from_le_bytes(b)
    }
    /// The next available chain of queue `q`: head and (addr, len, writable).
    fn next_chain(&mut self, q: u16) -> Option<(u16, Chain)> {
        let qu = *self.queues.get(&q)?;
        let idx = self.r16(qu.avail + 2);
        if idx == qu.last_avail {
            return None;
        }
        let head = self.r16(qu.avail + 4 + 2 * (u64::from(qu.last_avail) % u64::from(qu.size)));
        self.queues.get_mut(&q).unwrap().last_avail = qu.last_avail.wrapping_add(1);
        let mut chain = Vec::new();
        let mut i = head;
        for _ in 0..qu.size {
            let mut d = [0u8; 16];
            self.mem().borrow().read(qu.desc + 16 * (u64::from(i) % u64::from(qu.size)), &mut d);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            assert!(self.mem().borrow().is_mapped(addr, len), "device given unmapped memory {addr:#x}+{len}");
            chain.push((addr, len, flags & DESC_F_WRITE != 0));
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            i = u16::from_le_bytes(d[14..16].try_into().unwrap());
        }
        Some((head, chain))
    }
    fn complete(&mut self, q: u16, head: u16, len: u32) {
        let qu = self.queues[&q];
        let u = self.r16(qu.used + 2);
        let slot = qu.used + 4 + 8 * (u64::from(u) % u64::from(qu.size));
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&self.fake_id.take().unwrap_or(u32::from(head)).to_le_bytes());
        e[4..8].copy_from_slice(&self.fake_len.take().unwrap_or(len).to_le_bytes());
        let mem = self.mem();
        mem.borrow_mut().write(slot, &e);
        mem.borrow_mut().write(qu.used + 2, &u.wrapping_add(1).to_le_bytes());
    }
    fn readable(&self, chain: &[(u64, usize, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(a, l, w) in chain {
            if !w {
                let mut b = vec![0u8; l];
                self.mem().borrow().read(a, &mut b);
                out.extend_from_slice(&b);
            }
        }
        out
    }
    /// A frame arrives: written into the next receive buffer of queue `q`.
    fn deliver(&mut self, q: u16, bytes: &[u8]) -> bool {
        let Some((head, chain)) = self.next_chain(q) else { return false };
        let &(a, l, w) = chain.first().unwrap();
        assert!(w && l >= bytes.len());
        self.mem().borrow_mut().write(a, bytes);
        self.complete(q, head, bytes.len() as u32);
        true
    }
    fn max_pairs(&self) -> u16 {
        u16::from_le_bytes([self.config[8], self.config[9]])
    }
}

struct FakeNet(Rc<RefCell<Dev>>);

impl Transport for FakeNet {
    fn device_type(&self) -> DeviceType {
        DeviceType::Network
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.borrow().features
    }
    fn write_driver_features(&mut self, v: u64) {
        self.0.borrow_mut().driver_features = v;
    }
    fn max_queue_size(&mut self, _q: u16) -> u32 {
        256
    }
    fn notify(&mut self, q: u16) {
        let mut d = self.0.borrow_mut();
        let ctrl = 2 * d.max_pairs();
        if q % 2 == 1 || (q == ctrl && d.driver_features & f::MQ != 0) {
            for _ in 0..256 {
                let Some((head, chain)) = d.next_chain(q) else { break };
                let bytes = d.readable(&chain);
                if q == ctrl && d.driver_features & f::MQ != 0 {
                    d.ctrl.push(bytes);
                    let &(a, _, _) = chain.last().unwrap();
                    d.mem().borrow_mut().write(a, &[0]);
                    d.complete(q, head, 1);
                } else {
                    d.sent.push((q, bytes));
                    d.complete(q, head, 0);
                }
            }
        }
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.0.borrow().status)
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let mut d = self.0.borrow_mut();
        let mut s = status.bits();
        if d.stuck && s == 0 {
            return;
        }
        if d.refuse_features {
            s &= !DeviceStatus::FEATURES_OK.bits();
        }
        d.status = s;
    }
    fn set_guest_page_size(&mut self, _s: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, q: u16, size: u32, desc: PhysAddr, avail: PhysAddr, used: PhysAddr) {
        self.0.borrow_mut().queues.insert(q, Queue { size, desc, avail, used, last_avail: 0 });
    }
    fn queue_unset(&mut self, q: u16) {
        self.0.borrow_mut().queues.remove(&q);
    }
    fn queue_used(&mut self, q: u16) -> bool {
        self.0.borrow().queues.contains_key(&q)
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
        let d = self.0.borrow();
        let src = d.config.get(offset..offset + n).ok_or(Error::ConfigSpaceTooSmall)?;
        v.as_mut_bytes().copy_from_slice(src);
        Ok(v)
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, _o: usize, _v: T) -> Result<(), Error> {
        Ok(())
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn device(features: u64, max_pairs: u16) -> (Rc<RefCell<Dev>>, FakeNet, Memory) {
    let mem = FakeMemory::new_shared();
    Slot::install(HalState::new(FakeDma::new(mem.clone())));
    let mut config = vec![0u8; 12];
    config[0..6].copy_from_slice(&MAC);
    config[6..8].copy_from_slice(&1u16.to_le_bytes());
    config[8..10].copy_from_slice(&max_pairs.to_le_bytes());
    let d = Rc::new(RefCell::new(Dev { mem: Some(mem.clone()), features, config, ..Dev::default() }));
    (d.clone(), FakeNet(d), mem)
}

const QEMU_TAP: u64 = f::CSUM | f::GUEST_CSUM | f::MAC | f::HOST_TSO4 | f::HOST_TSO6 | f::STATUS | f::VERSION_1;

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect();
    d[12..14].copy_from_slice(&[0x08, 0x00]);
    d[14] = 0x45;
    if len > 46 {
        d[46] = 5 << 4; // TCP data offset: 20 bytes
    }
    d
}

fn with_hdr(h: NetHdr, data: &[u8]) -> Vec<u8> {
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

#[test]
fn bring_up_transmit_and_receive() {
    let (dev, t, _mem) = device(QEMU_TAP | f::MRG_RXBUF | f::GUEST_TSO4, 1);
    let clock = FakeClock::new(0);
    let mut nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &clock).expect("bring-up");
    assert_eq!(nic.mac(), MacAddr(MAC));
    assert_eq!(dev.borrow().driver_features, QEMU_TAP, "never MRG_RXBUF or GUEST_TSO");
    assert!(DeviceStatus::from_bits_truncate(dev.borrow().status).contains(DeviceStatus::DRIVER_OK));
    let o = nic.offloads();
    assert!(o.tx_csum && o.tso4 && o.tso6 && o.rx_csum);
    assert_eq!(nic.queue_pairs(), 1);
    assert_eq!(nic.link(), drivers::nic::LinkStatus::Up);

    // Plain, partial checksum, and a 20 000-byte TSO frame (spread over
    // page-sized descriptors).
    let plain = Frame::plain(frame(60, 1));
    nic.transmit(&plain).unwrap();
    let partial =
        Frame { data: frame(100, 2), meta: Meta { csum: Csum::Partial { start: 34, offset: 16 }, gso: None } };
    nic.transmit(&partial).unwrap();
    let tso = Frame {
        data: frame(20_000, 3),
        meta: Meta {
            csum: Csum::Partial { start: 34, offset: 16 },
            gso: Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
        },
    };
    nic.transmit(&tso).unwrap();
    assert_eq!(nic.reclaim(), 3);
    assert_eq!(nic.tx_in_flight(), 0);
    let sent = dev.borrow().sent.clone();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].1, with_hdr(NetHdr::default(), &plain.data));
    let h = NetHdr::parse(&sent[1].1).unwrap();
    assert_eq!((h.flags, h.csum_start, h.csum_offset), (F_NEEDS_CSUM, 34, 16));
    assert_eq!(&sent[1].1[HDR_LEN..], &partial.data[..]);
    let h = NetHdr::parse(&sent[2].1).unwrap();
    assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1448, 54));
    assert_eq!(&sent[2].1[HDR_LEN..], &tso.data[..]);

    // Receive: validated, partial, and one whose checksum field lies past
    // the frame (dropped).
    let a = frame(64, 4);
    let b = frame(1514, 5);
    assert!(dev.borrow_mut().deliver(0, &with_hdr(NetHdr { flags: F_DATA_VALID, ..NetHdr::default() }, &a)));
    let nh = NetHdr { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 16, ..NetHdr::default() };
    assert!(dev.borrow_mut().deliver(0, &with_hdr(nh, &b)));
    let bad = NetHdr { flags: F_NEEDS_CSUM, csum_start: 60, csum_offset: 16, ..NetHdr::default() };
    assert!(dev.borrow_mut().deliver(0, &with_hdr(bad, &a)));
    let mut out = Vec::new();
    assert_eq!(nic.receive(&mut out, 1), 1, "budget respected");
    assert_eq!(nic.receive(&mut out, 16), 1);
    assert_eq!(out[0], Frame { data: a.clone(), meta: Meta { csum: Csum::Validated, gso: None } });
    assert_eq!(out[1].data, b);
    assert_eq!(out[1].meta.csum, Csum::Partial { start: 34, offset: 16 });
    let s = nic.stats();
    assert_eq!((s.rx_frames, s.rx_dropped, s.device_errors), (2, 1, 0));
    // Receive buffers are re-posted: many more frames than the queue holds.
    for i in 0..300u32 {
        assert!(dev.borrow_mut().deliver(0, &with_hdr(NetHdr::default(), &frame(60, i as u8))), "frame {i}");
        out.clear();
        assert_eq!(nic.receive(&mut out, 4), 1);
        assert_eq!(out[0].data, frame(60, i as u8));
    }
    drop(nic);
    let st = Slot::take().unwrap();
    assert_eq!(st.stats().failures, 0);
}

#[test]
fn offloads_not_negotiated_are_refused() {
    let (dev, t, _mem) = device(f::MAC | f::VERSION_1, 1);
    let mut nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    assert_eq!(nic.link(), drivers::nic::LinkStatus::Unknown);
    let partial =
        Frame { data: frame(100, 2), meta: Meta { csum: Csum::Partial { start: 34, offset: 16 }, gso: None } };
    assert_eq!(nic.transmit(&partial), Err(NicError::Unsupported));
    assert_eq!(nic.transmit(&Frame::plain(frame(1600, 1))), Err(NicError::Unsupported));
    assert!(dev.borrow().sent.is_empty());
    // A device that hands us a checksum state we did not negotiate: dropped.
    dev.borrow_mut().deliver(0, &with_hdr(NetHdr { flags: F_DATA_VALID, ..NetHdr::default() }, &frame(60, 0)));
    let mut out = Vec::new();
    assert_eq!(nic.receive(&mut out, 8), 0);
    assert_eq!(nic.stats().rx_dropped, 1);
    drop(nic);
    Slot::take();
}

#[test]
fn refusals_at_bring_up() {
    let (_, t, _) = device(f::MAC, 1);
    assert_eq!(
        VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).err(),
        Some(NetError::Features(f::FeatureError::NoVersion1))
    );
    Slot::take();
    let (dev, t, _) = device(QEMU_TAP, 1);
    dev.borrow_mut().refuse_features = true;
    assert_eq!(
        VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).err(),
        Some(NetError::FeaturesRefused)
    );
    assert!(DeviceStatus::from_bits_truncate(dev.borrow().status).contains(DeviceStatus::FAILED));
    Slot::take();
    // A device that never resets: bring-up gives up at the deadline.
    let (dev, t, _) = device(QEMU_TAP, 1);
    dev.borrow_mut().stuck = true;
    dev.borrow_mut().status = DeviceStatus::DRIVER_OK.bits();
    let cfg = NetConfig { timeout_ns: 1_000_000, ..NetConfig::default() };
    assert_eq!(VirtioNet::<H, _>::new(t, cfg, &FakeClock::new(1000)).err(), Some(NetError::ResetTimeout));
    Slot::take();
}

#[test]
fn a_device_that_does_not_reset_keeps_its_rings() {
    let (dev, t, mem) = device(QEMU_TAP, 1);
    let nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    dev.borrow_mut().stuck = true;
    drop(nic);
    // Nothing freed: the rings and the posted receive buffers are still
    // mapped for the device.
    let rx = dev.borrow().queues[&0];
    assert!(mem.borrow().is_mapped(rx.desc, 4096) && mem.borrow().is_mapped(rx.used, 1030));
    let st = Slot::take().unwrap();
    assert!(st.live_regions() >= 4 && st.live_shares() == 128, "{} {}", st.live_regions(), st.live_shares());
    // A device that resets gets everything back.
    let (_dev, t, _mem) = device(QEMU_TAP, 1);
    let nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    drop(nic);
    let st = Slot::take().unwrap();
    assert_eq!((st.live_regions(), st.stats().failures), (0, 0));
}

#[test]
fn multiqueue_through_the_control_queue() {
    let (dev, t, _mem) = device(QEMU_TAP | f::CTRL_VQ | f::MQ, 8);
    let mut nic =
        VirtioNet::<H, _>::new(t, NetConfig { max_pairs: 3, ..NetConfig::default() }, &FakeClock::new(0)).unwrap();
    assert_eq!(nic.queue_pairs(), 3);
    // VIRTIO_NET_CTRL_MQ (4), VQ_PAIRS_SET (0), 3 pairs, on queue 2 * 8.
    assert_eq!(dev.borrow().ctrl, vec![vec![4, 0, 3, 0]]);
    assert!(dev.borrow().queues.contains_key(&16));
    // Frames of many flows spread over the transmit queues 1, 3, 5; one
    // flow stays on one queue.
    for i in 0..64u8 {
        let mut d = frame(80, 0);
        d[26..30].copy_from_slice(&[10, 0, 0, i]);
        nic.transmit(&Frame::plain(d.clone())).unwrap();
        nic.transmit(&Frame::plain(d)).unwrap();
    }
    let sent = dev.borrow().sent.clone();
    let mut queues: Vec<u16> = sent.iter().map(|(q, _)| *q).collect();
    for pair in sent.chunks(2) {
        assert_eq!(pair[0].0, pair[1].0, "one flow, one queue");
    }
    queues.sort();
    queues.dedup();
    assert_eq!(queues, vec![1, 3, 5]);
    // Frames arriving on the second pair's receive queue are received.
    dev.borrow_mut().deliver(2, &with_hdr(NetHdr::default(), &frame(60, 9)));
    let mut out = Vec::new();
    assert_eq!(nic.receive(&mut out, 8), 1);
    drop(nic);
    Slot::take();
}

#[test]
fn hostile_used_ring_entries() {
    // A used length past the receive buffer: the frame is dropped, counted.
    let (dev, t, _mem) = device(QEMU_TAP, 1);
    let mut nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    dev.borrow_mut().fake_len = Some(1 << 30);
    dev.borrow_mut().deliver(0, &with_hdr(NetHdr::default(), &frame(60, 1)));
    let mut out = Vec::new();
    assert_eq!(nic.receive(&mut out, 8), 0);
    assert_eq!(nic.stats().device_errors, 1);
    assert!(!nic.is_broken());
    // A length shorter than the header: dropped.
    dev.borrow_mut().fake_len = Some(5);
    dev.borrow_mut().deliver(0, &with_hdr(NetHdr::default(), &frame(60, 1)));
    assert_eq!(nic.receive(&mut out, 8), 0);
    assert_eq!(nic.stats().rx_dropped, 2);
    // Still working.
    dev.borrow_mut().deliver(0, &with_hdr(NetHdr::default(), &frame(60, 2)));
    assert_eq!(nic.receive(&mut out, 8), 1);
    drop(nic);
    // A used id that is no chain we gave: the device is given up, without
    // a panic, and refuses further work.
    for id in [1000u32, 200, 127] {
        let (dev, t, _mem) = device(QEMU_TAP, 1);
        let mut nic =
            VirtioNet::<H, _>::new(t, NetConfig { rx_buffers: 4, ..NetConfig::default() }, &FakeClock::new(0)).unwrap();
        dev.borrow_mut().fake_id = Some(id);
        dev.borrow_mut().deliver(0, &with_hdr(NetHdr::default(), &frame(60, 1)));
        assert_eq!(nic.receive(&mut out, 8), 0);
        assert!(nic.is_broken(), "id {id}");
        assert_eq!(nic.transmit(&Frame::plain(frame(60, 0))), Err(NicError::Device));
        drop(nic);
    }
    // A transmit completion with a made-up id.
    let (dev, t, _mem) = device(QEMU_TAP, 1);
    let mut nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    dev.borrow_mut().fake_id = Some(77);
    nic.transmit(&Frame::plain(frame(60, 0))).unwrap();
    assert_eq!(nic.reclaim(), 0);
    assert!(nic.is_broken());
    drop(nic);
    Slot::take();
}

#[test]
fn transmit_queue_full_then_reclaim() {
    let (dev, t, _mem) = device(QEMU_TAP, 1);
    let mut nic = VirtioNet::<H, _>::new(t, NetConfig::default(), &FakeClock::new(0)).unwrap();
    // The device stops consuming: forget the transmit queue's notifications
    // by filling it before it is processed.
    let q = dev.borrow().queues[&1];
    dev.borrow_mut().queues.remove(&1);
    let mut n = 0;
    loop {
        match nic.transmit(&Frame::plain(frame(60, 0))) {
            Ok(()) => n += 1,
            Err(NicError::Full) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(n <= 128);
    }
    // A small frame and its header share one descriptor.
    assert_eq!(n, 128);
    // A TSO frame needs 1 + 5 descriptors: refused as full, not split.
    let tso = Frame {
        data: frame(20_000, 3),
        meta: Meta {
            csum: Csum::Partial { start: 34, offset: 16 },
            gso: Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
        },
    };
    assert_eq!(nic.transmit(&tso), Err(NicError::Full));
    dev.borrow_mut().queues.insert(1, q);
    let mut t2 = FakeNet(dev.clone());
    t2.notify(1);
    assert_eq!(nic.reclaim(), 128);
    nic.transmit(&tso).unwrap();
    nic.transmit(&Frame::plain(frame(60, 0))).unwrap();
    assert_eq!(nic.reclaim(), 2);
    let sent = dev.borrow().sent.clone();
    assert_eq!(sent.len(), 130);
    assert_eq!(&sent[128].1[HDR_LEN..], &tso.data[..]);
    drop(nic);
    Slot::take();
}
