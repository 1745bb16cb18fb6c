//! The xenbus backend state machine through whole handshakes.

use blkback::abi::Abi;
use blkback::xenbus::{
    BackendConfig, BackendFsm, ConnectParams, Effect, Event, FrontendKeys, QueueParams, XenbusState as S,
};
use blkback::{DiscardInfo, DiskInfo, EvtchnPort, GrantRef};
use std::collections::HashMap;

fn disk() -> DiskInfo {
    DiskInfo {
        sectors: 2048,
        sector_size: 512,
        physical_sector_size: 4096,
        readonly: false,
        removable: false,
        cdrom: false,
        flush: true,
        barrier: false,
        discard: Some(DiscardInfo { granularity: 4096, alignment: 0, secure: false }),
    }
}

fn writes(fx: &[Effect]) -> HashMap<&'static str, String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Write { key, value } => Some((*key, value.clone())),
            _ => None,
        })
        .collect()
}

fn states(fx: &[Effect]) -> Vec<S> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::SwitchState(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn mapped(fx: &[Effect]) -> Option<ConnectParams> {
    fx.iter().find_map(|e| match e {
        Effect::MapRings(p) => Some(p.clone()),
        _ => None,
    })
}

fn error(fx: &[Effect]) -> Option<String> {
    fx.iter().find_map(|e| match e {
        Effect::WriteError(s) => Some(s.clone()),
        _ => None,
    })
}

/// A frontend's xenstore directory as a map, read through `FrontendKeys::read`
/// the way the shell would.
fn keys(cfg: &BackendConfig, kv: &[(&str, &str)]) -> FrontendKeys {
    let m: HashMap<String, String> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    FrontendKeys::read(cfg, |k| m.get(k).cloned())
}

fn probed(cfg: BackendConfig) -> BackendFsm {
    let mut f = BackendFsm::new(cfg);
    let fx = f.step(Event::Probe);
    let w = writes(&fx);
    assert_eq!(w["feature-max-indirect-segments"], "256");
    assert_eq!(w["multi-queue-max-queues"], cfg.max_queues.to_string());
    assert_eq!(w["max-ring-page-order"], cfg.max_ring_page_order.to_string());
    assert_eq!(states(&fx), [S::InitWait]);
    f
}

#[test]
fn full_connect_single_page() {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    let fx = f.step(Event::HotplugDone(disk()));
    assert_eq!(writes(&fx)["hotplug-status"], "connected");
    assert!(states(&fx).is_empty(), "no connect before the frontend is ready");

    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialising)), []);
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialised)), [Effect::ReadFrontendKeys]);
    let k = keys(
        &cfg,
        &[("ring-ref", "77"), ("event-channel", "9"), ("protocol", "x86_64-abi"), ("feature-persistent", "1")],
    );
    let fx = f.step(Event::FrontendKeys(k));
    assert_eq!(
        mapped(&fx),
        Some(ConnectParams {
            abi: Abi::X86_64,
            ring_page_order: 0,
            queues: vec![QueueParams { ring_refs: vec![GrantRef(77)], evtchn: EvtchnPort(9) }],
            persistent: true,
        })
    );
    // MapRings comes before any key and before Connected.
    assert!(matches!(fx[0], Effect::MapRings(_)));
    let w = writes(&fx);
    assert_eq!(w["sectors"], "2048");
    assert_eq!(w["sector-size"], "512");
    assert_eq!(w["physical-sector-size"], "4096");
    assert_eq!(w["info"], "0");
    assert_eq!(w["feature-flush-cache"], "1");
    assert_eq!(w["feature-persistent"], "1");
    assert_eq!(w["feature-discard"], "1");
    assert_eq!(w["discard-granularity"], "4096");
    assert_eq!(w["discard-alignment"], "0");
    assert_eq!(w["discard-secure"], "0");
    assert!(!w.contains_key("feature-barrier"), "barrier not offered by this disk");
    assert_eq!(fx.last(), Some(&Effect::SwitchState(S::Connected)));
    assert_eq!(f.state(), S::Connected);

    // A second watch firing with Connected changes nothing.
    assert_eq!(f.step(Event::FrontendStateChanged(S::Connected)), []);
}

#[test]
fn hotplug_after_rings_connects_then() {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    f.step(Event::FrontendStateChanged(S::Initialised));
    let fx = f.step(Event::FrontendKeys(keys(&cfg, &[("ring-ref", "1"), ("event-channel", "2")])));
    assert!(mapped(&fx).is_some());
    assert!(states(&fx).is_empty());
    let fx = f.step(Event::HotplugDone(disk()));
    assert_eq!(states(&fx), [S::Connected]);
    assert_eq!(mapped(&fx), None);
    assert_eq!(f.mapped().unwrap().abi, Abi::X86_32, "no protocol node: 32-bit ABI");
}

#[test]
fn multi_queue_multi_page() {
    let cfg = BackendConfig { max_queues: 4, max_ring_page_order: 2, persistent: false };
    let mut f = probed(cfg);
    f.step(Event::HotplugDone(disk()));
    f.step(Event::FrontendStateChanged(S::Initialised));
    let k = keys(
        &cfg,
        &[
            ("multi-queue-num-queues", "2"),
            ("ring-page-order", "1"),
            ("protocol", "x86_32-abi"),
            ("feature-persistent", "1"),
            // Top-level keys are ignored with two queues.
            ("ring-ref", "999"),
            ("queue-0/ring-ref0", "10"),
            ("queue-0/ring-ref1", "11"),
            ("queue-0/event-channel", "20"),
            ("queue-1/ring-ref0", "12"),
            ("queue-1/ring-ref1", "13"),
            ("queue-1/event-channel", "21"),
        ],
    );
    let fx = f.step(Event::FrontendKeys(k));
    assert_eq!(
        mapped(&fx),
        Some(ConnectParams {
            abi: Abi::X86_32,
            ring_page_order: 1,
            queues: vec![
                QueueParams { ring_refs: vec![GrantRef(10), GrantRef(11)], evtchn: EvtchnPort(20) },
                QueueParams { ring_refs: vec![GrantRef(12), GrantRef(13)], evtchn: EvtchnPort(21) },
            ],
            persistent: false, // we did not offer it
        })
    );
    assert_eq!(writes(&fx)["feature-persistent"], "0");
    assert_eq!(f.state(), S::Connected);
}

#[test]
fn ring_page_order_zero_uses_ring_ref0() {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    f.step(Event::FrontendStateChanged(S::Initialised));
    let fx = f
        .step(Event::FrontendKeys(keys(&cfg, &[("ring-page-order", "0"), ("ring-ref0", "5"), ("event-channel", "6")])));
    assert_eq!(mapped(&fx).unwrap().queues[0].ring_refs, [GrantRef(5)]);
}

#[test]
fn order_four_sixteen_refs() {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    f.step(Event::FrontendStateChanged(S::Connected));
    let mut kv: Vec<(String, String)> = (0..16).map(|i| (format!("ring-ref{i}"), (100 + i).to_string())).collect();
    kv.push(("ring-page-order".into(), "4".into()));
    kv.push(("event-channel".into(), "3".into()));
    let kv_ref: Vec<(&str, &str)> = kv.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let fx = f.step(Event::FrontendKeys(keys(&cfg, &kv_ref)));
    let p = mapped(&fx).unwrap();
    assert_eq!(p.ring_page_order, 4);
    assert_eq!(p.queues[0].ring_refs.len(), 16);
    assert_eq!(p.queues[0].ring_refs[15], GrantRef(115));
}

fn connected() -> BackendFsm {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    f.step(Event::HotplugDone(disk()));
    f.step(Event::FrontendStateChanged(S::Initialised));
    f.step(Event::FrontendKeys(keys(&cfg, &[("ring-ref", "1"), ("event-channel", "2")])));
    assert_eq!(f.state(), S::Connected);
    f
}

#[test]
fn close_and_reconnect() {
    let cfg = BackendConfig::default();
    let mut f = connected();
    assert_eq!(f.step(Event::FrontendStateChanged(S::Closing)), [Effect::SwitchState(S::Closing)]);
    assert_eq!(f.step(Event::FrontendStateChanged(S::Closed)), [Effect::UnmapAll, Effect::SwitchState(S::Closed)]);
    assert!(f.mapped().is_none());
    // The frontend comes back (e.g. guest driver reloaded).
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialising)), [Effect::SwitchState(S::InitWait)]);
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialised)), [Effect::ReadFrontendKeys]);
    let fx = f.step(Event::FrontendKeys(keys(
        &cfg,
        &[("ring-ref", "40"), ("event-channel", "41"), ("protocol", "x86_64-abi")],
    )));
    assert_eq!(mapped(&fx).unwrap().queues[0].ring_refs, [GrantRef(40)]);
    assert_eq!(states(&fx), [S::Connected]);
}

#[test]
fn frontend_vanishing() {
    let mut f = connected();
    let fx = f.step(Event::FrontendGone);
    assert_eq!(fx, [Effect::UnmapAll, Effect::SwitchState(S::Closed), Effect::Remove]);
    assert!(f.removed());
    // Nothing more happens to a removed device.
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialising)), []);
    assert_eq!(f.step(Event::HotplugDone(disk())), []);

    let mut f = connected();
    let fx = f.step(Event::FrontendStateChanged(S::Unknown));
    assert_eq!(fx, [Effect::UnmapAll, Effect::SwitchState(S::Closed), Effect::Remove]);
}

#[test]
fn toolstack_detach() {
    let mut f = connected();
    assert_eq!(f.step(Event::Disconnect), [Effect::SwitchState(S::Closing)]);
    // A frontend trying to reconnect meanwhile is not served.
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialised)), []);
    let fx = f.step(Event::FrontendStateChanged(S::Closed));
    assert_eq!(fx, [Effect::UnmapAll, Effect::SwitchState(S::Closed), Effect::Remove]);
}

#[test]
fn detach_before_any_frontend() {
    let mut f = probed(BackendConfig::default());
    assert_eq!(f.step(Event::Disconnect), [Effect::SwitchState(S::Closed), Effect::Remove]);
}

fn expect_fatal(kv: &[(&str, &str)], msg: &str) {
    let cfg = BackendConfig { max_queues: 2, max_ring_page_order: 1, persistent: true };
    let mut f = probed(cfg);
    f.step(Event::HotplugDone(disk()));
    f.step(Event::FrontendStateChanged(S::Initialised));
    let fx = f.step(Event::FrontendKeys(keys(&cfg, kv)));
    assert_eq!(mapped(&fx), None, "{kv:?}");
    assert_eq!(error(&fx).as_deref(), Some(msg), "{kv:?}");
    assert_eq!(states(&fx), [S::Closing]);
    // The frontend closes in turn; nothing was mapped, so nothing to unmap.
    assert_eq!(f.step(Event::FrontendStateChanged(S::Closed)), [Effect::SwitchState(S::Closed)]);
}

#[test]
fn bad_keys_close_with_error() {
    expect_fatal(&[("event-channel", "1")], "reading ring-ref: missing");
    expect_fatal(&[("ring-ref", "1")], "reading event-channel: missing");
    expect_fatal(&[("ring-ref", "x1"), ("event-channel", "1")], "reading ring-ref: malformed");
    expect_fatal(&[("ring-ref", "-1"), ("event-channel", "1")], "reading ring-ref: malformed");
    expect_fatal(&[("ring-ref", "1"), ("event-channel", "99999999999")], "reading event-channel: malformed");
    expect_fatal(&[("ring-ref", "1"), ("event-channel", "1"), ("protocol", "arm-abi")], "unknown fe protocol arm-abi");
    expect_fatal(
        &[("ring-ref", "1"), ("event-channel", "1"), ("multi-queue-num-queues", "0")],
        "invalid number of requested queues 0",
    );
    expect_fatal(
        &[("ring-ref", "1"), ("event-channel", "1"), ("multi-queue-num-queues", "3")],
        "invalid number of requested queues 3",
    );
    expect_fatal(
        &[("ring-ref0", "1"), ("event-channel", "1"), ("ring-page-order", "2")],
        "requested ring page order 2 exceeds max",
    );
    expect_fatal(&[("ring-page-order", "1"), ("ring-ref0", "1"), ("event-channel", "1")], "reading ring-ref1: missing");
    expect_fatal(
        &[
            ("multi-queue-num-queues", "2"),
            ("queue-0/ring-ref", "1"),
            ("queue-0/event-channel", "1"),
            ("queue-1/ring-ref", "2"),
        ],
        "reading queue-1/event-channel: missing",
    );
}

#[test]
fn bad_frontend_state_is_fatal_and_unmaps() {
    let mut f = connected();
    let fx = f.step(Event::FrontendStateChanged(S::Reconfiguring));
    assert_eq!(
        fx,
        [Effect::UnmapAll, Effect::WriteError("saw state 7 at frontend".into()), Effect::SwitchState(S::Closing)]
    );
    let mut f = connected();
    let fx = f.step(Event::FrontendStateInvalid);
    assert_eq!(error(&fx).as_deref(), Some("saw invalid state at frontend"));
}

#[test]
fn map_failure_closes() {
    let cfg = BackendConfig::default();
    let mut f = probed(cfg);
    f.step(Event::FrontendStateChanged(S::Initialised));
    f.step(Event::FrontendKeys(keys(&cfg, &[("ring-ref", "1"), ("event-channel", "2")])));
    let fx = f.step(Event::RingMapFailed("grant map failed"));
    assert_eq!(
        fx,
        [
            Effect::UnmapAll,
            Effect::WriteError("mapping ring: grant map failed".into()),
            Effect::SwitchState(S::Closing)
        ]
    );
    // Hotplug completing later must not connect a closing device.
    let fx = f.step(Event::HotplugDone(disk()));
    assert!(states(&fx).is_empty());
}

#[test]
fn stale_keys_are_ignored() {
    let cfg = BackendConfig::default();
    let mut f = connected();
    assert_eq!(f.step(Event::FrontendKeys(keys(&cfg, &[("ring-ref", "5"), ("event-channel", "6")]))), []);
}

#[test]
fn frontend_ahead_of_probe() {
    let cfg = BackendConfig::default();
    let mut f = BackendFsm::new(cfg);
    assert_eq!(f.step(Event::FrontendStateChanged(S::Initialised)), []);
    let fx = f.step(Event::Probe);
    assert_eq!(states(&fx), [S::InitWait]);
    assert_eq!(fx.last(), Some(&Effect::ReadFrontendKeys));
}

#[test]
fn reconnect_while_connected_remaps() {
    // Frontend jumps Closed -> Initialised without Initialising.
    let cfg = BackendConfig::default();
    let mut f = connected();
    f.step(Event::FrontendStateChanged(S::Closed));
    let fx = f.step(Event::FrontendStateChanged(S::Initialised));
    assert_eq!(fx, [Effect::ReadFrontendKeys]);
    let fx = f.step(Event::FrontendKeys(keys(&cfg, &[("ring-ref", "8"), ("event-channel", "9")])));
    assert_eq!(states(&fx), [S::Connected]);
}

#[test]
fn key_reads_are_bounded_by_config() {
    let cfg = BackendConfig { max_queues: 2, max_ring_page_order: 1, persistent: true };
    let mut reads = Vec::new();
    let vals: HashMap<&str, &str> = [("multi-queue-num-queues", "4000000000"), ("ring-page-order", "30")].into();
    FrontendKeys::read(&cfg, |k| {
        reads.push(k.to_string());
        vals.get(k).map(|v| v.to_string())
    });
    assert!(reads.len() <= 4 + 2 * 3, "{reads:?}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        let cfg = BackendConfig::default();
        let good = keys(&cfg, &[("ring-ref", "1"), ("event-channel", "2")]);
        let mq = keys(
            &cfg,
            &[
                ("multi-queue-num-queues", "2"),
                ("queue-0/ring-ref", "1"),
                ("queue-0/event-channel", "2"),
                ("queue-1/ring-ref", "3"),
                ("queue-1/event-channel", "4"),
            ],
        );
        let bad = keys(&cfg, &[("ring-ref", "1")]);
        prop_oneof![
            Just(Event::Probe),
            Just(Event::HotplugDone(disk())),
            (0u32..9).prop_map(|s| Event::FrontendStateChanged(S::from_u32(s).unwrap())),
            Just(Event::FrontendStateInvalid),
            prop_oneof![Just(good), Just(mq), Just(bad)].prop_map(Event::FrontendKeys),
            Just(Event::RingMapFailed("nope")),
            Just(Event::Disconnect),
            Just(Event::FrontendGone),
        ]
    }

    proptest! {
        /// Whatever the order of events, the shell is never told to map
        /// twice or unmap nothing, Connected is only announced with rings
        /// and disk ready, and a removed device stays silent.
        #[test]
        fn effects_stay_consistent(events in prop::collection::vec(event(), 0..60)) {
            let mut f = BackendFsm::new(BackendConfig::default());
            let mut shell_mapped = false;
            let mut disk_ready = false;
            let mut removed = false;
            for ev in events {
                if matches!(ev, Event::HotplugDone(_)) {
                    disk_ready = true;
                }
                let fx = f.step(ev);
                if removed {
                    prop_assert!(fx.is_empty());
                }
                for e in &fx {
                    match e {
                        Effect::MapRings(_) => {
                            prop_assert!(!shell_mapped, "map while mapped");
                            shell_mapped = true;
                        }
                        Effect::UnmapAll => {
                            prop_assert!(shell_mapped, "unmap while unmapped");
                            shell_mapped = false;
                        }
                        Effect::SwitchState(S::Connected) => prop_assert!(shell_mapped && disk_ready),
                        Effect::Remove => {
                            prop_assert!(!shell_mapped, "removed with rings mapped");
                            removed = true;
                        }
                        _ => {}
                    }
                }
                prop_assert_eq!(f.mapped().is_some(), shell_mapped);
                if f.state() == S::Connected {
                    prop_assert!(shell_mapped);
                }
            }
        }
    }
}
