//! Delivery to a guest: copies into its posted rx requests, offloads
//! passed or done in software, drops when it posted nothing.

use net::{Csum, Frame, Gso, GsoKind, Meta};
use netback::abi::*;
use netback::testing::{tcp4, tcp6, udp4, udp6, world, FrontOpts, World};
use netback::{Drop, NetConfig};

fn connected(o: FrontOpts) -> World {
    let mut w = world(NetConfig::default(), &[5, 6]);
    w.attach(0, None);
    w.connect(0, o);
    w
}

fn partial(mut data: Vec<u8>) -> Frame {
    let csum = net::csum::prepare_partial(&mut data).unwrap();
    Frame { data, meta: Meta { csum, gso: None } }
}

fn gso(data: Vec<u8>, kind: GsoKind, mss: u16) -> Frame {
    let mut f = partial(data);
    f.meta.gso = Some(Gso { kind, mss });
    f
}

#[test]
fn plain_frame_exact_bytes() {
    let mut w = connected(FrontOpts::default());
    w.fronts[0].post_rx(0, 8);
    let f = Frame::plain(udp4(&[0x42; 200]));
    assert_eq!(w.deliver(0, &f), Ok(()));
    let got = w.received(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, f.data, "exact bytes; the harness checks nothing was written past the size");
    assert_eq!((got[0].flags, got[0].slots, got[0].gso), (0, 1, None));
    let s = w.info(0).unwrap().stats;
    assert_eq!((s.rx_packets, s.rx_bytes), (1, f.data.len() as u64));
}

#[test]
fn multi_slot_with_sg() {
    let mut w = connected(FrontOpts::default());
    w.fronts[0].post_rx(0, 8);
    let f = Frame::plain(tcp4(&(0..9000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>()));
    assert_eq!(w.deliver(0, &f), Ok(()));
    let got = w.received(0);
    assert_eq!(got[0].slots, 3);
    assert_eq!(got[0].data, f.data);
    assert_ne!(got[0].flags & NETRXF_MORE_DATA, 0);
}

#[test]
fn no_sg_large_frame_dropped() {
    let mut w = connected(FrontOpts { sg: false, gso_v4: false, gso_v6: false, ..Default::default() });
    w.fronts[0].post_rx(0, 8);
    let f = Frame::plain(tcp4(&[0; 5000]));
    assert_eq!(w.deliver(0, &f), Err(Drop::BadSize));
    assert_eq!(w.info(0).unwrap().stats.rx_drops, 1);
    assert!(w.received(0).is_empty());
}

#[test]
fn gso_passed_with_extra_slot() {
    let mut w = connected(FrontOpts::default());
    w.fronts[0].post_rx(0, 32);
    for (data, kind, ty) in [
        (tcp4(&[5; 20000]), GsoKind::TcpV4, XEN_NETIF_GSO_TYPE_TCPV4),
        (tcp6(&[6; 20000]), GsoKind::TcpV6, XEN_NETIF_GSO_TYPE_TCPV6),
    ] {
        let f = gso(data, kind, 1400);
        assert_eq!(w.deliver(0, &f), Ok(()));
        let got = w.received(0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].gso, Some((1400, ty)));
        assert_eq!(got[0].data, f.data);
        assert_eq!(got[0].slots, f.data.len().div_ceil(4096) + 1);
        assert_eq!(got[0].flags & (NETRXF_CSUM_BLANK | NETRXF_EXTRA_INFO), NETRXF_CSUM_BLANK | NETRXF_EXTRA_INFO);
    }
}

#[test]
fn gso_segmented_when_not_negotiated() {
    for o in [
        FrontOpts { gso_v4: false, gso_v6: false, ..Default::default() },
        FrontOpts { sg: false, gso_v4: false, gso_v6: false, ..Default::default() },
        FrontOpts { csum_v4: false, csum_v6: false, ..Default::default() },
    ] {
        let mut w = connected(o);
        w.fronts[0].post_rx(0, 64);
        let payload: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
        let f = gso(tcp4(&payload), GsoKind::TcpV4, 1448);
        assert_eq!(w.deliver(0, &f), Ok(()));
        let got = w.received(0);
        assert_eq!(got.len(), payload.len().div_ceil(1448), "{o:?}");
        let mut back = Vec::new();
        for p in &got {
            assert_eq!(p.gso, None);
            assert!(p.data.len() <= 1514);
            if p.flags & NETRXF_CSUM_BLANK == 0 {
                assert!(net::csum::l4_csum_ok(&p.data), "complete checksum");
            }
            back.extend_from_slice(&p.data[54..]);
        }
        assert_eq!(back, payload);
    }
}

#[test]
fn partial_csum_passed_or_completed() {
    // Offload negotiated: csum_blank + data_validated, field holds the pseudo sum.
    let mut w = connected(FrontOpts::default());
    w.fronts[0].post_rx(0, 8);
    let f = partial(udp6(&[1; 300]));
    w.deliver(0, &f).unwrap();
    let got = w.received(0);
    assert_eq!(got[0].flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
    assert_eq!(got[0].data, f.data);
    // Not negotiated (IPv4 no-csum-offload, no IPv6 offload): completed.
    let mut w = connected(FrontOpts { csum_v4: false, csum_v6: false, ..Default::default() });
    w.fronts[0].post_rx(0, 8);
    for data in [tcp4(&[2; 999]), udp6(&[3; 77])] {
        let f = partial(data);
        assert!(!net::csum::l4_csum_ok(&f.data));
        w.deliver(0, &f).unwrap();
        let got = w.received(0);
        assert_eq!(got[0].flags & NETRXF_CSUM_BLANK, 0);
        assert!(net::csum::l4_csum_ok(&got[0].data));
    }
    // Validated stays validated.
    let f = Frame { data: tcp4(b"ok"), meta: Meta { csum: Csum::Validated, gso: None } };
    w.deliver(0, &f).unwrap();
    assert_eq!(w.received(0)[0].flags, NETRXF_DATA_VALIDATED);
}

/// Frames for a guest that posted no rx requests wait, in order, and go
/// as soon as it posts some (its post notifies us: we asked for it).
#[test]
fn backlog_waits_for_requests_in_order() {
    let mut w = connected(FrontOpts::default());
    let frames: Vec<Frame> = (0..10u8).map(|i| Frame::plain(udp4(&[i; 100]))).collect();
    for f in &frames {
        assert_eq!(w.deliver(0, f), Ok(()));
    }
    assert_eq!(w.nb.backlog(), 10);
    assert!(w.pump());
    assert!(w.received(0).is_empty());
    w.fronts[0].post_rx(0, 4);
    let ports = w.nb.ports();
    assert!(ports.iter().any(|p| w.e.is_pending(*p)), "posting rx requests woke the backend");
    assert!(w.pump());
    let mut got = w.received(0);
    assert_eq!(got.len(), 4);
    assert_eq!(w.nb.backlog(), 6);
    // A new frame queues behind the old ones, even with requests posted.
    w.fronts[0].post_rx(0, 20);
    let last = Frame::plain(udp4(&[0xee; 10]));
    assert_eq!(w.deliver(0, &last), Ok(()));
    assert!(w.pump());
    got.extend(w.received(0));
    let want: Vec<Vec<u8>> = frames.iter().chain([&last]).map(|f| f.data.clone()).collect();
    assert_eq!(got.into_iter().map(|p| p.data).collect::<Vec<_>>(), want);
    let s = w.info(0).unwrap().stats;
    assert_eq!((s.rx_packets, s.rx_drops), (11, 0));
}

#[test]
fn backlog_bounded_then_drops() {
    let mut w = connected(FrontOpts::default());
    let small = Frame::plain(udp4(&[0; 100]));
    for _ in 0..netback::RX_BACKLOG_FRAMES {
        assert_eq!(w.deliver(0, &small), Ok(()));
    }
    for _ in 0..5 {
        assert_eq!(w.deliver(0, &small), Err(Drop::NoRxRequests));
    }
    assert_eq!(w.info(0).unwrap().stats.rx_drops, 5);
    // Bytes are bounded too.
    let mut w = connected(FrontOpts::default());
    let big = Frame::plain(tcp4(&[0; 60000]));
    let fit = netback::RX_BACKLOG_BYTES / big.data.len();
    for _ in 0..fit {
        assert_eq!(w.deliver(0, &big), Ok(()));
    }
    assert_eq!(w.deliver(0, &big), Err(Drop::NoRxRequests));
    // Disconnect: what waits is dropped and counted.
    w.fe_state(0, 5);
    assert_eq!(w.nb.backlog(), 0);
    assert_eq!(w.info(0).unwrap().stats.rx_drops, 1 + fit as u64);
}

/// Too few requests for a multi-slot frame: it waits; the backend looks
/// again after a short deadline (the frontend's next post need not notify).
#[test]
fn partial_requests_retry_after_deadline() {
    let mut w = connected(FrontOpts::default());
    w.fronts[0].post_rx(0, 2);
    let f = Frame::plain(tcp4(&[9; 9000]));
    assert_eq!(w.deliver(0, &f), Ok(()), "needs 3 slots, 2 posted: waits");
    assert!(w.pump());
    let at = w.nb.next_deadline().expect("a retry deadline");
    w.fronts[0].post_rx(0, 1);
    assert!(w.pump());
    w.advance(at.saturating_sub(xen::evtchn::EventOps::now(&w.e)) + 1);
    assert!(w.pump());
    let got = w.received(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, f.data);
    assert_eq!(w.nb.next_deadline(), None);
}

#[test]
fn not_connected_and_unknown() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    assert_eq!(w.deliver(0, &Frame::plain(udp4(b"x"))), Err(Drop::NotConnected));
    assert_eq!(w.nb.deliver(&mut w.g, &mut w.e, netback::VifId(999), &Frame::plain(udp4(b"x"))), Err(Drop::NoSuchVif));
}

#[test]
fn bad_rx_grant_answered_with_error() {
    let mut w = connected(FrontOpts::default());
    // A request naming a grant that does not exist.
    let fq = &mut w.fronts[0].queues[0];
    assert!(fq.rx.push_request(&RxRequest { id: 77, pad: 0, gref: 99_999 }));
    fq.rx.publish();
    assert_eq!(w.deliver(0, &Frame::plain(udp4(&[1; 10]))), Err(Drop::CopyFailed));
    let rsp = w.fronts[0].queues[0].rx.take_responses(2);
    assert_eq!(rsp.len(), 1);
    let RxSlot::Rsp(r) = rsp[0] else { panic!() };
    assert_eq!((r.id, r.status), (77, NETIF_RSP_ERROR));
    assert_eq!(w.info(0).unwrap().stats.rx_errors, 1);
}

/// Two guests: what goes to one never reaches the other's pages.
#[test]
fn guests_isolated() {
    let mut w = world(NetConfig::default(), &[5, 6]);
    for fi in 0..2 {
        w.attach(fi, None);
        w.connect(fi, FrontOpts { queues: 2, ..Default::default() });
        for q in 0..2 {
            w.fronts[fi].post_rx(q, 8);
        }
    }
    let a = Frame::plain(udp4(&[0xa1; 500]));
    let b = Frame::plain(udp4(&[0xb2; 500]));
    w.deliver(0, &a).unwrap();
    w.deliver(1, &b).unwrap();
    let ga = w.received(0);
    let gb = w.received(1);
    assert_eq!(ga.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), [a.data]);
    assert_eq!(gb.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), [b.data]);
}
