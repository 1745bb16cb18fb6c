//! Disconnects with traffic in flight, resources back to baseline, the
//! map fallback, and the integrator's view.

use net::Frame;
use netback::testing::{tcp4, udp4, world, world_with, FrontOpts, TxPkt, World};
use netback::NetConfig;

/// Half a packet on tx, frames delivered and unread, rx requests posted:
/// the frontend closes; every mapping and port is released and the
/// frontend can end all its grants (none is still mapped).
fn disconnect_in_flight(mut w: World, close: impl FnOnce(&mut World)) {
    w.attach(0, None);
    w.connect(0, FrontOpts { queues: 2, ..Default::default() });
    let frame = tcp4(&[1; 5000]);
    let slots = w.fronts[0].tx_slots(0, &TxPkt::new(frame.clone()).frags(&[2000, 2000, frame.len() - 4000]));
    w.send_slots(0, 0, &slots[..2]);
    w.fronts[0].post_rx(1, 16);
    w.fronts[0].post_rx(0, 16);
    for _ in 0..3 {
        let _ = w.deliver(0, &Frame::plain(udp4(&[2; 3000])));
    }
    assert_eq!(w.nb.mappings(), 4);
    close(&mut w);
    assert_eq!(w.nb.mappings(), 0);
    assert!(w.nb.ports().is_empty());
    let f = &mut w.fronts[0];
    let grants: Vec<u32> = f.granted.iter().copied().collect();
    for g in grants {
        f.end(xen::types::GrantRef(g));
    }
    assert!(f.granted.is_empty());
}

#[test]
fn frontend_closes_with_traffic_in_flight() {
    disconnect_in_flight(world(NetConfig::default(), &[5]), |w| {
        w.fe_state(0, 5);
        w.fe_state(0, 6);
    });
}

#[test]
fn domain_destroyed_with_traffic_in_flight() {
    disconnect_in_flight(world(NetConfig::default(), &[5]), |w| {
        let (fe, be) = (w.fronts[0].fe_dir(), w.fronts[0].be_dir());
        w.xsd.external_rm(&fe);
        w.xsd.external_rm(&be);
        assert!(w.pump());
    });
}

#[test]
fn many_cycles_back_to_baseline() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    for round in 0..5u8 {
        w.connect(0, FrontOpts { queues: 1 + u32::from(round % 3), split: round % 2 == 0, ..Default::default() });
        let rsp = w.send(0, 0, &TxPkt::new(tcp4(&[round; 300])));
        assert_eq!(rsp[0].status, 0);
        w.fe_state(0, 5);
        w.fe_state(0, 6);
        assert_eq!(w.nb.mappings(), 0);
        w.fe_state(0, 1);
    }
    assert_eq!(w.info(0).unwrap().stats.tx_packets, 5);
    assert_eq!(w.got.len(), 5);
}

#[test]
fn map_fallback_moves_the_same_bytes() {
    let mut w = world_with(NetConfig::default(), &[5], false);
    w.attach(0, None);
    w.connect(0, FrontOpts::default());
    let frame = tcp4(&(0..7000u32).map(|i| i as u8).collect::<Vec<_>>());
    let rsp = w.send(0, 0, &TxPkt::new(frame.clone()).frags(&[3000, 4000, frame.len() - 7000]));
    assert!(rsp.iter().all(|r| r.status == 0));
    assert_eq!(w.got.pop().unwrap().1.data, frame);
    w.fronts[0].post_rx(0, 4);
    w.deliver(0, &Frame::plain(frame.clone())).unwrap();
    assert_eq!(w.received(0)[0].data, frame);
    assert_eq!(w.nb.stats.grant_copies, 0);
    assert!(w.nb.stats.data_maps >= 2);
    assert_eq!(w.nb.mappings(), 2, "data mappings released");
}

#[test]
fn generation_tracks_connects() {
    let mut w = world(NetConfig::default(), &[5, 6]);
    let g0 = w.nb.generation();
    w.attach(0, None);
    w.attach(1, None);
    assert_eq!(w.nb.generation(), g0, "discovery alone changes nothing");
    w.connect(0, FrontOpts::default());
    let g1 = w.nb.generation();
    assert!(g1 > g0);
    w.connect(1, FrontOpts::default());
    let g2 = w.nb.generation();
    assert!(g2 > g1);
    let ids: Vec<_> = w.nb.vifs().filter(|v| v.connected).map(|v| v.id).collect();
    assert_eq!(ids.len(), 2);
    w.fe_state(0, 5);
    assert!(w.nb.generation() > g2);
    assert_eq!(w.nb.vifs().filter(|v| v.connected).count(), 1);
}

/// End to end as the image will run it: guest A sends a GSO frame with a
/// blank checksum; the frame is handed to guest B, which negotiated
/// neither GSO nor checksum offload, and to guest C, which took both.
#[test]
fn guest_to_guest_through_a_switch_loop() {
    let mut w = world(NetConfig::default(), &[5, 6, 7]);
    for fi in 0..3 {
        w.attach(fi, None);
    }
    w.connect(0, FrontOpts::default());
    w.connect(1, FrontOpts { gso_v4: false, gso_v6: false, csum_v4: false, csum_v6: false, ..Default::default() });
    w.connect(2, FrontOpts::default());
    w.fronts[1].post_rx(0, 64);
    w.fronts[2].post_rx(0, 64);
    let payload: Vec<u8> = (0..20000u32).map(|i| (i % 253) as u8).collect();
    let frame = tcp4(&payload);
    let frags: Vec<usize> = frame.chunks(4096).map(|c| c.len()).collect();
    let pkt = TxPkt::new(frame.clone()).frags(&frags).gso(1448, netback::abi::XEN_NETIF_GSO_TYPE_TCPV4);
    w.send(0, 0, &pkt);
    let (from, f) = w.got.pop().expect("frame from guest A");
    assert_eq!(from, w.vif(0));
    for fi in 1..3 {
        assert_eq!(w.deliver(fi, &f), Ok(()));
    }
    let b = w.received(1);
    assert_eq!(b.len(), payload.len().div_ceil(1448));
    assert!(b.iter().all(|p| p.gso.is_none() && net::csum::l4_csum_ok(&p.data)));
    assert_eq!(b.iter().flat_map(|p| p.data[54..].to_vec()).collect::<Vec<_>>(), payload);
    let c = w.received(2);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].gso, Some((1448, netback::abi::XEN_NETIF_GSO_TYPE_TCPV4)));
    assert_eq!(c[0].data, f.data);
    assert!(w.received(0).is_empty(), "nothing echoed to the sender");
}
