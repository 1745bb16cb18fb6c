//! The control ring: a frontend sets a Toeplitz hash, key and mapping
//! table, and received frames land on the queue it chose.

use net::Frame;
use netback::abi::*;
use netback::ctrl::toeplitz;
use netback::testing::{capture_logs, tcp4, world, FrontOpts, World};
use netback::NetConfig;

fn req(id: u16, ty: u16, data: [u32; 3]) -> CtrlRequest {
    CtrlRequest { id, ty, data }
}

fn with_ctrl(queues: u32) -> World {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    assert_eq!(w.be(0, "feature-ctrl-ring").as_deref(), Some("1"));
    w.connect(0, FrontOpts { queues, ctrl: true, ..Default::default() });
    assert_eq!(w.be(0, "state").as_deref(), Some("4"));
    w
}

#[test]
fn hash_mapping_steers_rx() {
    let mut w = with_ctrl(4);
    assert_eq!(w.nb.mappings(), 9, "4 queues x 2 + control ring");
    let ok = XEN_NETIF_CTRL_STATUS_SUCCESS;
    let r = w.ctrl(0, req(1, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, 0, 0]));
    assert_eq!((r.id, r.ty, r.status), (1, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, ok));
    let flags = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
    assert_eq!(w.ctrl(0, req(2, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [flags, 0, 0])).status, ok);
    let key: Vec<u8> = (1..=40).collect();
    let kp = w.fronts[0].grant_page(&key, 0, 0, true);
    assert_eq!(w.ctrl(0, req(3, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [kp.gref.0, 40, 0])).status, ok);
    assert_eq!(w.ctrl(0, req(4, XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, [0; 3])).data, 128);
    assert_eq!(w.ctrl(0, req(5, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [8, 0, 0])).status, ok);
    // Every table entry points at queue 2 except entry hash % 8 of our flow,
    // which points at queue 3.
    let frame = tcp4(&[7; 100]);
    let h = net::packet::parse(&frame).unwrap();
    let mut buf = frame[h.l3_off + 12..h.l3_off + 20].to_vec();
    buf.extend_from_slice(&frame[h.l4_off..h.l4_off + 4]);
    let slot = toeplitz(&key, &buf) as usize % 8;
    let table: Vec<u8> = (0..8).flat_map(|i| if i == slot { 3u32 } else { 2u32 }.to_le_bytes()).collect();
    let tp = w.fronts[0].grant_page(&table, 0, 0, true);
    assert_eq!(w.ctrl(0, req(6, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [tp.gref.0, 8, 0])).status, ok);
    for q in 0..4 {
        w.fronts[0].post_rx(q, 4);
    }
    w.deliver(0, &Frame::plain(frame.clone())).unwrap();
    assert_eq!(w.fronts[0].take_rx(3).len(), 1, "on the queue the table names");
    // A different flow: entry != slot most likely lands on queue 2, never 0 or 1.
    let mut other = frame.clone();
    other[h.l4_off] ^= 0x55;
    w.deliver(0, &Frame::plain(other)).unwrap();
    assert!(w.fronts[0].take_rx(0).is_empty() && w.fronts[0].take_rx(1).is_empty());
}

#[test]
fn hostile_control_requests_answered() {
    let mut w = with_ctrl(2);
    let inval = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
    w.ctrl(0, req(1, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, 0, 0]));
    // A key grant that does not exist.
    assert_eq!(w.ctrl(0, req(2, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [77_777, 16, 0])).status, inval);
    assert_eq!(w.ctrl(0, req(3, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [1, 4096, 0])).status, 3);
    w.ctrl(0, req(4, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [4, 0, 0]));
    // Entries naming queue 2 of 2.
    let tp = w.fronts[0].grant_page(&[2, 0, 0, 0], 0, 0, true);
    assert_eq!(w.ctrl(0, req(5, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [tp.gref.0, 1, 0])).status, inval);
    assert_eq!(w.ctrl(0, req(6, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [tp.gref.0, 1, 4])).status, inval);
    assert_eq!(w.ctrl(0, req(7, 0xffff, [0; 3])).status, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
    // A bogus producer kills only the control ring.
    let (_, logs) = capture_logs(|| {
        if let Some((ring, _)) = w.fronts[0].ctrl.as_mut() {
            ring.poke_req_prod(500);
        }
        let port = w.fronts[0].ctrl.as_ref().unwrap().1;
        xen::evtchn::EventOps::send(&mut w.fronts[0].e, port).unwrap();
        assert!(w.pump());
    });
    assert!(logs.iter().any(|l| l.contains("control ring")));
    w.fronts[0].post_rx(0, 4);
    w.fronts[0].post_rx(1, 4);
    w.deliver(0, &Frame::plain(tcp4(b"still"))).unwrap();
    // Teardown releases the control ring too.
    w.fe_state(0, 5);
    assert_eq!(w.nb.mappings(), 0);
    assert!(w.nb.ports().is_empty());
}

#[test]
fn bad_control_ring_ref_refuses_connect() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    let keys = w.fronts[0].make_queues(&FrontOpts { ctrl: true, ..Default::default() });
    for (k, v) in &keys {
        let v = if k == "ctrl-ring-ref" { "5555" } else { v.as_str() };
        w.fe_write(0, k, v);
    }
    w.fe_state(0, 4);
    assert_eq!(w.be(0, "state").as_deref(), Some("5"));
    assert_eq!(w.nb.mappings(), 0, "the queues mapped before are released");
    assert!(w.nb.ports().is_empty());
    let f = &mut w.fronts[0];
    for g in f.granted.clone() {
        f.end(xen::types::GrantRef(g)); // panics if the backend still maps it
    }
}
