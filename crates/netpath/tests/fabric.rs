//! The path end to end on the host: real netback with simulated netfronts,
//! the real switch, a fake NIC.

use drivers::fake::FakeNic;
use drivers::nic::{Nic, Offloads};
use net::switch::Config;
use net::{Csum, Frame, MacAddr};
use netback::abi::XEN_NETIF_GSO_TYPE_TCPV4;
use netback::testing::{tcp4, udp4, world, FrontOpts, TxPkt, World};
use netback::NetConfig;
use netpath::Fabric;

const GW: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Two guests (domains 1 and 2, MACs 00:16:3e:00:00:01 and :02) connected,
/// rx requests posted, and a fabric with a NIC of these offloads.
fn setup(o: Offloads) -> (World, Fabric<FakeNic>) {
    let mut w = world(NetConfig::default(), &[1, 2]);
    for fi in 0..2 {
        w.attach(fi, None);
        w.connect(fi, FrontOpts::default());
        w.fronts[fi].post_rx(0, 64);
    }
    let nic = FakeNic::new(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]), o, 256);
    (w, Fabric::new(Config::default(), Some(nic)))
}

fn send(w: &mut World, f: &mut Fabric<FakeNic>, fi: usize, pkt: &TxPkt) {
    let slots = w.fronts[fi].tx_slots(0, pkt);
    w.fronts[fi].push_slots(0, &slots);
    w.fronts[fi].publish_tx(0);
    for _ in 0..10 {
        if !f.poll(&mut w.nb, &mut w.g, &mut w.e) {
            break;
        }
    }
    // Once more: frames sent by the NIC are reclaimed on the next poll.
    f.poll(&mut w.nb, &mut w.g, &mut w.e);
}

fn with_macs(mut d: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    d[0..6].copy_from_slice(&dst);
    d[6..12].copy_from_slice(&src);
    d
}

#[test]
fn guest_to_guest_never_touches_the_nic() {
    let (mut w, mut f) = setup(Offloads::default());
    let data = tcp4(&[7; 300]); // 00:16:3e:00:00:01 -> :02
    send(&mut w, &mut f, 0, &TxPkt::new(data.clone()));
    let got = w.received(1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, data);
    assert!(w.received(0).is_empty(), "not echoed to the sender");
    let nic = f.nic_mut().unwrap();
    assert!(nic.sent().is_empty());
    assert_eq!(nic.stats().tx_frames, 0);
    assert_eq!(f.stats.from_vifs, 1);
}

#[test]
fn spoofed_source_is_dropped_everywhere() {
    let (mut w, mut f) = setup(Offloads::default());
    let data = with_macs(tcp4(&[1; 100]), [0x00, 0x16, 0x3e, 0, 0, 2], [0x00, 0x16, 0x3e, 0, 0, 9]);
    send(&mut w, &mut f, 0, &TxPkt::new(data));
    // Pretending to be the other guest, or broadcasting with its MAC.
    let data = with_macs(udp4(&[1; 100]), [0xff; 6], [0x00, 0x16, 0x3e, 0, 0, 2]);
    send(&mut w, &mut f, 0, &TxPkt::new(data));
    assert!(w.received(1).is_empty());
    assert!(f.nic_mut().unwrap().sent().is_empty());
    assert_eq!(f.stats.switch_drops, 2);
    assert!(f.describe(&w.nb).contains(" drops-spoof=2 "));
    assert_eq!(f.stats.from_vifs, 0);
}

#[test]
fn outside_traffic_goes_through_the_nic_and_replies_reach_only_their_guest() {
    let (mut w, mut f) = setup(Offloads::default());
    let out = with_macs(udp4(&[3; 64]), GW, [0x00, 0x16, 0x3e, 0, 0, 1]);
    send(&mut w, &mut f, 0, &TxPkt::new(out.clone()));
    let sent = f.nic_mut().unwrap().sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].data, out);
    // Unknown unicast is flooded: the other guest saw it too (as a switch
    // does before it learns), but the reply is unicast to guest 1 only.
    let _ = w.received(1);
    let reply = with_macs(udp4(&[4; 64]), [0x00, 0x16, 0x3e, 0, 0, 1], GW);
    f.nic_mut().unwrap().inject(Frame::plain(reply.clone()));
    f.poll(&mut w.nb, &mut w.g, &mut w.e);
    let got = w.received(0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, reply);
    assert!(w.received(1).is_empty());
    assert_eq!(f.stats.from_nic, 1);
    // Now the gateway is learned: guest 2's frame to it is unicast.
    let out2 = with_macs(udp4(&[5; 64]), GW, [0x00, 0x16, 0x3e, 0, 0, 2]);
    send(&mut w, &mut f, 1, &TxPkt::new(out2));
    assert!(w.received(0).is_empty(), "learned: not flooded to guest 1");
    assert_eq!(f.nic_mut().unwrap().sent().len(), 1);
}

#[test]
fn the_outside_cannot_use_a_guests_mac() {
    let (mut w, mut f) = setup(Offloads::default());
    let fake = with_macs(udp4(&[4; 64]), [0x00, 0x16, 0x3e, 0, 0, 2], [0x00, 0x16, 0x3e, 0, 0, 1]);
    f.nic_mut().unwrap().inject(Frame::plain(fake));
    f.poll(&mut w.nb, &mut w.g, &mut w.e);
    assert!(w.received(1).is_empty());
    assert_eq!(f.stats.switch_drops, 1);
}

#[test]
fn broadcast_reaches_every_other_port() {
    let (mut w, mut f) = setup(Offloads::default());
    let arp = with_macs(udp4(&[9; 28]), [0xff; 6], [0x00, 0x16, 0x3e, 0, 0, 1]);
    send(&mut w, &mut f, 0, &TxPkt::new(arp.clone()));
    assert_eq!(w.received(1).len(), 1);
    assert!(w.received(0).is_empty());
    assert_eq!(f.nic_mut().unwrap().sent().len(), 1);
}

/// A TCP GSO frame from a guest to the outside through a NIC without TSO
/// or checksum offload: segmented and checksummed in software (the fake NIC
/// refuses partial checksums and GSO it does not offload, so a frame that
/// was not completed would be counted as dropped).
#[test]
fn offloads_the_nic_lacks_are_done_in_software() {
    let (mut w, mut f) = setup(Offloads::default());
    let payload: Vec<u8> = (0..6000u32).map(|i| (i * 13) as u8).collect();
    let mut data = with_macs(tcp4(&payload), GW, [0x00, 0x16, 0x3e, 0, 0, 1]);
    // What netfront sends with csum_blank: the pseudo-header sum only.
    let _ = net::csum::prepare_partial(&mut data).unwrap();
    let n = data.len();
    send(&mut w, &mut f, 0, &TxPkt::new(data).frags(&[4000, n - 4000]).gso(1400, XEN_NETIF_GSO_TYPE_TCPV4));
    let sent = f.nic_mut().unwrap().sent();
    assert_eq!(f.stats.nic_drops, 0);
    assert_eq!(sent.len(), 5, "6000 bytes at mss 1400");
    let mut joined = Vec::new();
    for s in &sent {
        assert_eq!(s.meta.gso, None);
        assert_ne!(s.meta.csum, Csum::Partial { start: 34, offset: 16 });
        assert!(net::csum::l4_csum_ok(&s.data), "checksums complete");
        joined.extend_from_slice(&s.data[54..]);
    }
    assert_eq!(joined, payload);
    assert_eq!((f.stats.sw_segmented, f.stats.to_nic), (1, 5));
}

#[test]
fn with_offloads_the_nic_gets_the_large_frame() {
    let o = Offloads { tx_csum: true, tso4: true, tso6: true, rx_csum: true };
    let (mut w, mut f) = setup(o);
    let mut data = with_macs(tcp4(&[6; 6000]), GW, [0x00, 0x16, 0x3e, 0, 0, 1]);
    let _ = net::csum::prepare_partial(&mut data).unwrap();
    let n = data.len();
    send(&mut w, &mut f, 0, &TxPkt::new(data).frags(&[4000, n - 4000]).gso(1400, XEN_NETIF_GSO_TYPE_TCPV4));
    let sent = f.nic_mut().unwrap().sent();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].meta.gso.is_some());
    assert_eq!(f.stats.sw_segmented, 0);
}

#[test]
fn a_disconnected_vif_loses_its_port() {
    let (mut w, mut f) = setup(Offloads::default());
    f.poll(&mut w.nb, &mut w.g, &mut w.e);
    assert_eq!(f.attached().len(), 2);
    assert!(f.wants_polling());
    w.fe_state(1, 6); // Closed
    w.pump();
    f.poll(&mut w.nb, &mut w.g, &mut w.e);
    assert_eq!(f.attached().len(), 1);
    let data = tcp4(&[7; 100]); // to guest 2, now unknown: flooded to the NIC
    send(&mut w, &mut f, 0, &TxPkt::new(data));
    assert_eq!(f.nic_mut().unwrap().sent().len(), 1);
    let d = f.describe(&w.nb);
    assert!(d.starts_with("vifs=1 queues=1 "), "{d}");
    assert!(d.lines().any(|l| l.starts_with("vif 2/0 mac=00:16:3e:00:00:02 connected=0")), "{d}");
    let n = f.describe_nic("0000:00:0a.0", "fake").unwrap();
    assert!(n.starts_with("eth0 pci=0000:00:0a.0 kind=fake mac=52:54:00:12:34:56 link=up"), "{n}");
}

#[test]
fn without_a_nic_guests_still_reach_each_other() {
    let (mut w, _) = setup(Offloads::default());
    let mut f: Fabric<FakeNic> = Fabric::new(Config::default(), None);
    let data = tcp4(&[8; 100]);
    send(&mut w, &mut f, 0, &TxPkt::new(data.clone()));
    assert_eq!(w.received(1)[0].data, data);
    assert!(!f.wants_polling());
}
