//! The vif handshake against the simulated Linux netfront.

use netback::testing::{capture_logs, tcp4, world, FrontOpts, TxPkt};
use netback::NetConfig;

#[test]
fn probe_publishes_features_and_waits() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    assert_eq!(w.be(0, "state").as_deref(), Some("2"), "InitWait");
    assert_eq!(w.be(0, "hotplug-status").as_deref(), Some("connected"));
    for (k, v) in [
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-split-event-channels", "1"),
        ("multi-queue-max-queues", "4"),
    ] {
        assert_eq!(w.be(0, k).as_deref(), Some(v), "{k}");
    }
    let info = w.info(0).unwrap();
    assert!(!info.connected);
    assert_eq!(info.mac.map(|m| m.to_string()).as_deref(), Some("00:16:3e:00:00:05"));
    assert_eq!(w.nb.mappings(), 0);
}

fn connect_and_ping(queues: u32, split: bool) {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    let gen0 = w.nb.generation();
    w.connect(0, FrontOpts { queues, split, ..Default::default() });
    assert_eq!(w.be(0, "state").as_deref(), Some("4"), "Connected");
    let info = w.info(0).unwrap();
    assert!(info.connected);
    assert_eq!(info.queues, queues as usize);
    assert_eq!(w.nb.mappings(), 2 * queues as usize);
    assert_eq!(w.nb.ports().len(), queues as usize * if split { 2 } else { 1 });
    assert!(w.nb.generation() > gen0);
    // Every queue carries traffic.
    for q in 0..queues as usize {
        let frame = tcp4(&[q as u8; 100]);
        let rsp = w.send(0, q, &TxPkt::new(frame.clone()));
        assert_eq!(rsp.len(), 1);
        assert_eq!(rsp[0].status, 0);
        let (vif, got) = w.got.pop().expect("frame");
        assert_eq!(vif, w.vif(0));
        assert_eq!(got.data, frame);
    }
    // Teardown: Closing, Closed, everything released.
    w.fe_state(0, 5);
    assert_eq!(w.be(0, "state").as_deref(), Some("5"));
    assert_eq!(w.nb.mappings(), 0);
    assert!(w.nb.ports().is_empty());
    w.fe_state(0, 6);
    assert_eq!(w.be(0, "state").as_deref(), Some("6"));
    assert!(!w.info(0).unwrap().connected);
}

#[test]
fn single_queue_split_events() {
    connect_and_ping(1, true);
}

#[test]
fn single_queue_shared_event() {
    connect_and_ping(1, false);
}

#[test]
fn four_queues_split_and_shared() {
    connect_and_ping(4, true);
    connect_and_ping(4, false);
}

#[test]
fn too_many_queues_refused() {
    let mut w = world(NetConfig { max_queues: 2 }, &[5]);
    w.attach(0, None);
    let (_, logs) = capture_logs(|| w.connect(0, FrontOpts { queues: 3, ..Default::default() }));
    assert_eq!(w.be(0, "state").as_deref(), Some("5"), "Closing");
    assert!(w.be(0, "error").unwrap().contains("multi-queue-num-queues"));
    assert!(logs.iter().any(|l| l.contains("multi-queue-num-queues")));
    assert_eq!(w.nb.mappings(), 0);
}

#[test]
fn rx_flip_only_frontend_refused() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    w.connect(0, FrontOpts { rx_copy: None, ..Default::default() });
    assert_eq!(w.be(0, "state").as_deref(), Some("5"));
    assert!(w.be(0, "error").unwrap().contains("request-rx-copy"));
    assert_eq!(w.nb.mappings(), 0);
}

#[test]
fn reconnect_after_close() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    w.connect(0, FrontOpts::default());
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    w.fe_state(0, 1);
    assert_eq!(w.be(0, "state").as_deref(), Some("2"), "InitWait again");
    w.connect(0, FrontOpts { queues: 2, ..Default::default() });
    assert_eq!(w.be(0, "state").as_deref(), Some("4"));
    assert_eq!(w.nb.mappings(), 4);
    let rsp = w.send(0, 1, &TxPkt::new(tcp4(b"again")));
    assert_eq!(rsp[0].status, 0);
}

#[test]
fn detach_and_directory_removed() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, None);
    w.connect(0, FrontOpts::default());
    let be = w.fronts[0].be_dir();
    w.xsd.external_write(&format!("{be}/online"), b"0");
    assert!(w.pump());
    assert_eq!(w.be(0, "state").as_deref(), Some("5"));
    w.fe_state(0, 6);
    assert_eq!(w.be(0, "state").as_deref(), Some("6"));
    assert!(w.info(0).is_none(), "vif forgotten");
    assert_eq!(w.nb.mappings(), 0);
    w.advance(3_000_000_000);
    w.nb.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.value(&be).is_none(), "driver domain removes its backend directory");
}

#[test]
fn frontend_domain_destroyed_with_rings_mapped() {
    let mut w = world(NetConfig::default(), &[5, 6]);
    w.attach(0, None);
    w.attach(1, None);
    w.connect(0, FrontOpts::default());
    w.connect(1, FrontOpts::default());
    assert_eq!(w.nb.mappings(), 4);
    let gen = w.nb.generation();
    let (fe, be) = (w.fronts[0].fe_dir(), w.fronts[0].be_dir());
    w.xsd.external_rm(&fe);
    w.xsd.external_rm(&be);
    assert!(w.pump());
    assert_eq!(w.nb.mappings(), 2, "only the other vif's rings stay");
    assert!(w.nb.generation() > gen);
    assert!(w.info(0).is_none());
    let rsp = w.send(1, 0, &TxPkt::new(tcp4(b"still here")));
    assert_eq!(rsp[0].status, 0);
}

#[test]
fn unmappable_ring_or_bad_event_channel_closes_cleanly() {
    for key in ["tx-ring-ref", "rx-ring-ref", "event-channel-rx"] {
        let mut w = world(NetConfig::default(), &[5]);
        w.attach(0, None);
        let keys = w.fronts[0].make_queues(&FrontOpts::default());
        for (k, v) in &keys {
            let v = if k == key { "4000" } else { v.as_str() };
            w.fe_write(0, k, v);
        }
        let (_, logs) = capture_logs(|| w.fe_state(0, 4));
        assert_eq!(w.be(0, "state").as_deref(), Some("5"), "{key}: Closing");
        assert!(w.be(0, "error").is_some(), "{key}: error node written");
        assert!(logs.iter().any(|l| l.contains("vif")), "{key}");
        assert_eq!(w.nb.mappings(), 0, "{key}: nothing left mapped");
        assert!(w.nb.ports().is_empty(), "{key}");
        // The frontend can take back every grant.
        let f = &mut w.fronts[0];
        for g in f.granted.clone() {
            f.end(xen::types::GrantRef(g));
        }
    }
}

#[test]
fn malformed_rate_means_unlimited() {
    let mut w = world(NetConfig::default(), &[5]);
    w.attach(0, Some("lots,often"));
    w.connect(0, FrontOpts::default());
    assert_eq!(w.be(0, "state").as_deref(), Some("4"));
    let rsp = w.send(0, 0, &TxPkt::new(tcp4(b"unlimited")));
    assert_eq!(rsp[0].status, 0);
    assert!(w.nb.next_deadline().is_none());
}
