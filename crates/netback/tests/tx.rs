//! The guest's transmit side: frames built from slots, offloads, and
//! every hostile slot sequence answered without harm.

use net::{Csum, Gso, GsoKind};
use netback::abi::*;
use netback::testing::{capture_logs, tcp4, tcp6, udp4, world, FrontOpts, TxPkt, World};
use netback::NetConfig;
use xen::evtchn::EventOps;

fn connected() -> World {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    w.connect(0, FrontOpts::default());
    w
}

fn statuses(rsp: &[TxResponse]) -> Vec<i16> {
    rsp.iter().map(|r| r.status).collect()
}

#[test]
fn scatter_gather_and_split_headers() {
    let mut w = connected();
    let frame = tcp4(&(0..6000u32).map(|i| i as u8).collect::<Vec<_>>());
    // Headers split across the first two fragments (10 bytes, then the rest).
    let rest = frame.len() - (10 + 30 + 2000 + 1);
    let pkt = TxPkt::new(frame.clone()).frags(&[10, 30, 2000, 1, 0, rest]);
    let rsp = w.send(0, 0, &pkt);
    assert_eq!(statuses(&rsp), [0; 6]);
    let (_, got) = w.got.pop().unwrap();
    assert_eq!(got.data, frame, "bytes in order, headers linear");
    assert_eq!(got.meta.csum, Csum::None);
    let s = w.info(0).unwrap().stats;
    assert_eq!((s.tx_packets, s.tx_bytes, s.tx_errors), (1, frame.len() as u64, 0));
}

#[test]
fn page_offsets_honoured() {
    let mut w = connected();
    let frame = udp4(&[9; 1000]);
    let pkt = TxPkt { offset: 3000, ..TxPkt::new(frame.clone()) };
    assert_eq!(statuses(&w.send(0, 0, &pkt)), [0]);
    assert_eq!(w.got.pop().unwrap().1.data, frame);
}

#[test]
fn csum_blank_becomes_partial_and_completes() {
    let mut w = connected();
    for mut frame in [tcp4(&[1; 700]), tcp6(&[2; 700]), udp4(&[3; 33])] {
        // The guest leaves garbage where the checksum goes.
        let h = net::packet::parse(&frame).unwrap();
        let at = h.l4_off + usize::from(h.csum_offset());
        frame[at] ^= 0x5a;
        let pkt = TxPkt { flags: NETTXF_CSUM_BLANK, ..TxPkt::new(frame.clone()) };
        assert_eq!(statuses(&w.send(0, 0, &pkt)), [0]);
        let (_, mut got) = w.got.pop().unwrap();
        assert_eq!(got.meta.csum, Csum::Partial { start: h.l4_off as u16, offset: h.csum_offset() });
        net::complete_csum(&mut got).unwrap();
        assert!(net::csum::l4_csum_ok(&got.data), "completes to a right checksum");
    }
    let pkt = TxPkt { flags: NETTXF_DATA_VALIDATED, ..TxPkt::new(tcp4(b"v")) };
    w.send(0, 0, &pkt);
    assert_eq!(w.got.pop().unwrap().1.meta.csum, Csum::Validated);
}

#[test]
fn gso_tx_v4_and_v6() {
    let mut w = connected();
    for (frame, ty, kind) in [
        (tcp4(&vec![7; 20000]), XEN_NETIF_GSO_TYPE_TCPV4, GsoKind::TcpV4),
        (tcp6(&vec![8; 30000]), XEN_NETIF_GSO_TYPE_TCPV6, GsoKind::TcpV6),
    ] {
        let n = frame.len();
        let mut frags = vec![4000];
        let mut left = n - 4000;
        while left > 0 {
            frags.push(left.min(4096));
            left -= left.min(4096);
        }
        let pkt = TxPkt::new(frame.clone()).frags(&frags).gso(1448, ty);
        let rsp = w.send(0, 0, &pkt);
        let mut want = vec![0i16; frags.len() + 1];
        want[1] = NETIF_RSP_NULL;
        assert_eq!(statuses(&rsp), want, "extra slot answered NULL");
        let (_, got) = w.got.pop().unwrap();
        assert_eq!(got.meta.gso, Some(Gso { kind, mss: 1448 }));
        let segs = net::segment(&got).unwrap();
        assert!(segs.iter().all(|s| net::csum::l4_csum_ok(&s.data)));
        assert_eq!(segs.len(), (n - 54 - if kind == GsoKind::TcpV6 { 20 } else { 0 }).div_ceil(1448));
    }
}

/// Each hostile packet is answered with an error on every slot it used,
/// produces no frame, and the next good packet goes through.
#[test]
fn hostile_packets_answered_and_survived() {
    let mut w = connected();
    let good = tcp4(&[1; 100]);
    let mut cases: Vec<(&str, TxPkt)> = vec![
        ("too short", TxPkt::new(vec![0; 10])),
        ("frags exceed size", TxPkt { size: Some(100), ..TxPkt::new(vec![0; 300]).frags(&[100, 100, 100]) }),
        ("crosses page", TxPkt { offset: 4000, ..TxPkt::new(good.clone()) }),
        ("frag crosses page", TxPkt { offset: 4090, ..TxPkt::new(vec![0; 300]).frags(&[4, 296]) }),
        ("gso size 0", TxPkt::new(good.clone()).gso(0, XEN_NETIF_GSO_TYPE_TCPV4)),
        ("gso size tiny", TxPkt::new(good.clone()).gso(20, XEN_NETIF_GSO_TYPE_TCPV4)),
        ("bogus gso type", TxPkt::new(good.clone()).gso(1448, 7)),
        ("gso on udp", TxPkt::new(udp4(&[0; 3000])).gso(1448, XEN_NETIF_GSO_TYPE_TCPV4)),
        ("gso v6 on v4", TxPkt::new(tcp4(&[0; 3000])).gso(1448, XEN_NETIF_GSO_TYPE_TCPV6)),
        ("csum_blank unparsable", TxPkt { flags: NETTXF_CSUM_BLANK, ..TxPkt::new(vec![0xee; 100]) }),
        ("19 slots", TxPkt::new(vec![0; 19 * 10]).frags(&[10; 19])),
    ];
    let mut bogus = TxPkt::new(good.clone());
    bogus.extras.push(ExtraInfo { ty: 9, flags: 0, u: [0; 6] });
    cases.push(("unknown extra type", bogus));
    let mut none = TxPkt::new(good.clone());
    none.extras.push(ExtraInfo::default());
    cases.push(("extra type none", none));
    for (what, pkt) in cases {
        let slots = w.fronts[0].tx_slots(0, &pkt);
        let rsp = w.send_slots(0, 0, &slots);
        assert_eq!(rsp.len(), slots.len(), "{what}: every slot answered");
        assert!(rsp.iter().all(|r| r.status == NETIF_RSP_ERROR || r.status == NETIF_RSP_NULL), "{what}: {rsp:?}");
        assert!(rsp.iter().any(|r| r.status == NETIF_RSP_ERROR), "{what}");
        assert!(w.got.is_empty(), "{what}: no frame");
        assert_eq!(statuses(&w.send(0, 0, &TxPkt::new(good.clone()))), [0], "{what}: next packet fine");
        assert_eq!(w.got.pop().unwrap().1.data, good);
    }
    let s = w.info(0).unwrap().stats;
    assert_eq!(s.tx_errors, 13);
    assert_eq!(w.nb.stats.fatal_queues, 0);
}

/// A chain longer than any packet may be stops the queue's tx (Linux:
/// fatal), without a panic, and the other queue goes on.
#[test]
fn endless_chain_stops_only_that_queue() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    w.connect(0, FrontOpts { queues: 2, ..Default::default() });
    let pkt = TxPkt::new(vec![0; 40]).frags(&[1; 40]);
    let slots = w.fronts[0].tx_slots(0, &pkt);
    let rsp = w.send_slots(0, 0, &slots[..30]);
    assert!(rsp.iter().all(|r| r.status == NETIF_RSP_ERROR));
    assert_eq!(w.nb.stats.fatal_queues, 1);
    assert!(w.got.is_empty());
    assert_eq!(statuses(&w.send(0, 1, &TxPkt::new(tcp4(b"ok")))), [0]);
}

/// A packet whose end is not published yet waits; it is not an error.
#[test]
fn half_published_packet_waits() {
    let mut w = connected();
    let frame = tcp4(&[4; 3000]);
    let slots = w.fronts[0].tx_slots(0, &TxPkt::new(frame.clone()).frags(&[1000, 1000, frame.len() - 2000]));
    assert!(w.send_slots(0, 0, &slots[..2]).is_empty());
    assert!(w.got.is_empty());
    let rsp = w.send_slots(0, 0, &slots[2..]);
    assert_eq!(statuses(&rsp), [0, 0, 0]);
    assert_eq!(w.got.pop().unwrap().1.data, frame);
}

#[test]
fn bogus_req_prod_breaks_only_that_ring() {
    let mut w = connected();
    w.fronts[0].queues[0].tx.poke_req_prod(1000);
    let (_, logs) = capture_logs(|| assert!(w.pump()));
    assert_eq!(w.nb.stats.fatal_queues, 1);
    assert!(logs.iter().any(|l| l.contains("req_prod")));
    // Delivery on the rx ring of that queue still works.
    w.fronts[0].post_rx(0, 4);
    assert_eq!(w.deliver(0, &net::Frame::plain(tcp4(b"in"))), Ok(()));
}

/// A flood of slots is taken at most TX_BUDGET per queue per poll.
#[test]
fn flood_bounded_per_poll() {
    let mut w = connected();
    let frame = udp4(&[0; 60]);
    for _ in 0..200 {
        let s = w.fronts[0].tx_slots(0, &TxPkt::new(frame.clone()));
        w.fronts[0].push_slots(0, &s);
        if w.fronts[0].queues[0].tx.free_slots() == 0 {
            break;
        }
    }
    w.fronts[0].publish_tx(0);
    let port = w.fronts[0].queues[0].tx_port;
    for _ in 0..50 {
        w.fronts[0].e.send(port).unwrap();
    }
    let mut out = Vec::new();
    w.nb.poll(&mut w.g, &mut w.e, &mut out);
    assert_eq!(out.len(), netback::TX_BUDGET);
    assert!(w.pump());
    let total = out.len() + w.got.len();
    assert_eq!(total, 200);
    assert!(w.polls >= 3, "took several polls");
}

#[test]
fn rate_limit_spreads_traffic() {
    let mut w = world(NetConfig::default(), &[5]);
    // 10 000 bytes per 10 ms.
    w.attach(0, Some("10000,10000"));
    w.connect(0, FrontOpts::default());
    let frame = udp4(&[0; 958]); // 1000-byte frames
    assert_eq!(frame.len(), 1000);
    for _ in 0..30 {
        let s = w.fronts[0].tx_slots(0, &TxPkt::new(frame.clone()));
        w.fronts[0].push_slots(0, &s);
    }
    w.fronts[0].publish_tx(0);
    assert!(w.pump());
    assert_eq!(w.got.len(), 10, "one period's credit");
    let at = w.nb.next_deadline().expect("throttled queue has a deadline");
    w.advance(at - netback_now(&w));
    assert!(w.pump());
    assert_eq!(w.got.len(), 20);
    assert!(w.nb.next_deadline().is_some());
    w.advance(10_000_000);
    assert!(w.pump());
    assert_eq!(w.got.len(), 30);
    assert_eq!(w.fronts[0].take_tx(0).len(), 30);
}

fn netback_now(w: &World) -> u64 {
    w.e.now()
}

#[test]
fn guest_errors_log_bounded() {
    let mut w = connected();
    let (_, logs) = capture_logs(|| {
        for _ in 0..200 {
            let s = w.fronts[0].tx_slots(0, &TxPkt::new(vec![0; 5]));
            w.send_slots(0, 0, &s);
        }
    });
    assert_eq!(w.info(0).unwrap().stats.tx_errors, 200);
    let bad = logs.iter().filter(|l| l.contains("bad packet")).count();
    assert!(bad <= 12, "{bad} lines for 200 bad packets");
}

/// Going idle, the backend asks for an event on the next request: a
/// frontend publishing after a quiet spell notifies (or the main loop,
/// which sleeps on the ports, would never wake).
#[test]
fn idle_backend_rearms_notifications() {
    let mut w = connected();
    for round in 0..3u8 {
        assert!(w.pump());
        let ports = w.nb.ports();
        assert!(ports.iter().all(|p| !w.e.is_pending(*p)), "quiet before round {round}");
        let s = w.fronts[0].tx_slots(0, &TxPkt::new(udp4(&[round; 50])));
        w.fronts[0].push_slots(0, &s);
        w.fronts[0].publish_tx(0);
        assert!(ports.iter().any(|p| w.e.is_pending(*p)), "round {round}: the frontend notified");
        assert!(w.pump());
        assert_eq!(w.fronts[0].take_tx(0).len(), 1, "round {round}: answered and notified back");
    }
}

/// The largest packet the 16-bit size allows (65535 bytes over 16 slots)
/// goes through; nothing larger can be expressed.
#[test]
fn largest_packet() {
    let mut w = connected();
    let mut frame = tcp4(&vec![0x3c; 65535 - 54]);
    // The IPv4 total length field: 65535 - 14 = 65521 fits.
    assert_eq!(frame.len(), 65535);
    let mut frags = vec![4096; 15];
    frags.push(4095);
    let pkt = TxPkt::new(frame.clone()).frags(&frags).gso(1448, XEN_NETIF_GSO_TYPE_TCPV4);
    let rsp = w.send(0, 0, &pkt);
    assert_eq!(rsp.len(), 17);
    assert!(rsp.iter().all(|r| r.status == 0 || r.status == NETIF_RSP_NULL));
    let (_, got) = w.got.pop().unwrap();
    // The backend rewrote only the checksum field (pseudo-header sum).
    let h = net::packet::parse(&frame).unwrap();
    let at = h.l4_off + 16;
    frame[at..at + 2].copy_from_slice(&got.data[at..at + 2]);
    assert_eq!(got.data, frame);
    assert_eq!(net::segment(&got).unwrap().len(), (65535 - 54usize).div_ceil(1448));
}

/// Packets taken in one turn share one grant copy call; a bad grant fails
/// only its own packet; a batch never outgrows the staging buffer.
#[test]
fn copies_batched_across_packets() {
    let mut w = connected();
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| udp4(&[i; 500])).collect();
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut s = w.fronts[0].tx_slots(0, &TxPkt::new(f.clone()));
        if i == 4 {
            s[0][0..4].copy_from_slice(&99_999u32.to_le_bytes()); // a grant that does not exist
        }
        all.extend(s);
    }
    let before = w.nb.stats.grant_copies;
    let rsp = w.send_slots(0, 0, &all);
    assert_eq!(w.nb.stats.grant_copies - before, 1, "one copy call for ten packets");
    let st = statuses(&rsp);
    assert_eq!(st.iter().filter(|&&s| s == NETIF_RSP_ERROR).count(), 1);
    assert_eq!(st[4], NETIF_RSP_ERROR);
    let got: Vec<Vec<u8>> = w.got.drain(..).map(|(_, f)| f.data).collect();
    let want: Vec<Vec<u8>> = frames.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, f)| f.clone()).collect();
    assert_eq!(got, want);
    // Three 30 000-byte packets: two batches (the buffer holds 64 KiB).
    let big: Vec<Vec<u8>> = (0..3u8).map(|i| tcp4(&vec![i; 30000])).collect();
    let mut all = Vec::new();
    for f in &big {
        let frags: Vec<usize> = f.chunks(4096).map(|c| c.len()).collect();
        all.extend(w.fronts[0].tx_slots(0, &TxPkt::new(f.clone()).frags(&frags)));
    }
    let before = w.nb.stats.grant_copies;
    let rsp = w.send_slots(0, 0, &all);
    assert!(rsp.iter().all(|r| r.status == 0));
    assert_eq!(w.nb.stats.grant_copies - before, 2);
    assert_eq!(w.got.drain(..).map(|(_, f)| f.data).collect::<Vec<_>>(), big);
}
