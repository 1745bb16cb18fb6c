//! `Lifecycle` against the fake xenstore with a toy device kind (`toy`):
//! discovery from watches and rescans, hotplug nodes, frontend-gone
//! detection, detach, retire and the delayed removal of a closed device's
//! directory, and writes that never re-create a removed directory.

use std::cell::RefCell;
use std::rc::Rc;

use xen::shmem::SharedMem;
use xen::types::DomId;
use xen::wait::Notifier;
use xen::xenstore::fake::{FakePage, FakeXenstored};
use xen::xenstore::{Perm, PermKind, XsClient};
use xen_backend::{DeviceEvent, DeviceKind, DeviceXs, Lifecycle, Outcome, XenbusState, RM_DELAY_NS};

const ME: DomId = DomId(1);
const BE: &str = "backend/toy/5/0";
const FE: &str = "/local/domain/5/device/toy/0";

/// Records every event; connects on frontend Connected; finishes the device
/// on frontend Closed (or gone), at the time in `now`.
#[derive(Default)]
struct Toy {
    events: Vec<(u32, DeviceEvent)>,
    now: u64,
    /// Devices whose kind state exists.
    live: Rc<RefCell<Vec<u32>>>,
}

impl DeviceKind for Toy {
    fn hotplug_nodes(&self) -> Vec<(&'static str, String)> {
        vec![("hotplug-status", "connected".to_string())]
    }

    fn event<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, ev: DeviceEvent) -> Outcome {
        let id = xs.device().id;
        self.events.push((id, ev));
        match ev {
            DeviceEvent::Added => {
                self.live.borrow_mut().push(id);
                xs.switch_state(XenbusState::InitWait);
            }
            DeviceEvent::FrontendState(XenbusState::Connected) => {
                assert_eq!(xs.read_frontend("ring-ref").as_deref(), Some("8"));
                xs.write("feature-x", "1");
                xs.switch_state(XenbusState::Connected);
            }
            DeviceEvent::FrontendState(XenbusState::Closed) | DeviceEvent::FrontendGone | DeviceEvent::Offline => {
                xs.switch_state(XenbusState::Closed);
                self.live.borrow_mut().retain(|&d| d != id);
                return Outcome::Removed { at: self.now };
            }
            DeviceEvent::FrontendStateInvalid => xs.write_error("bad frontend state"),
            DeviceEvent::FrontendState(_) => {}
        }
        Outcome::Keep
    }
}

struct World {
    xsd: FakeXenstored,
    xs: XsClient<FakePage, FakeXenstored>,
    life: Lifecycle,
    toy: Toy,
}

impl World {
    fn new() -> Self {
        let xsd = FakeXenstored::new(ME);
        let mut xs = xsd.client(1_000_000_000).with_event_capacity(1 << 12);
        let mut life = Lifecycle::new("toy");
        life.start(&mut xs).unwrap();
        let mut w = World { xsd, xs, life, toy: Toy::default() };
        w.pump();
        w
    }

    /// Watch events to the lifecycle until none are left (bounded).
    fn pump(&mut self) {
        for _ in 0..200 {
            let Some(ev) = self.xs.poll_watch().unwrap() else { return };
            if ev.token.starts_with(self.life.kind()) {
                self.life.on_watch(&mut self.xs, &ev.token, &mut self.toy);
            }
        }
        panic!("watch storm");
    }

    fn abs(p: &str) -> String {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/local/domain/{}/{p}", ME.0)
        }
    }

    fn put(&mut self, p: &str, v: &str) {
        self.xsd.external_write(&Self::abs(p), v.as_bytes());
    }

    fn get(&self, p: &str) -> Option<String> {
        self.xsd.value(&Self::abs(p)).map(|v| String::from_utf8(v).unwrap())
    }

    /// The toolstack creates the device; `with_id: false` leaves out
    /// `frontend-id` (half-written).
    fn create(&mut self, with_id: bool) {
        self.dirs();
        self.put(&format!("{FE}/state"), "1");
        self.put(&format!("{FE}/ring-ref"), "8");
        self.put(&format!("{BE}/frontend"), FE);
        if with_id {
            self.put(&format!("{BE}/frontend-id"), "5");
        }
        self.put(&format!("{BE}/online"), "1");
        self.put(&format!("{BE}/state"), "1");
        self.pump();
    }

    /// Both directories, each owned by its domain and readable by the
    /// other (libxl's device_add).
    fn dirs(&mut self) {
        let (be, fe) = (Self::abs(BE), FE.to_string());
        self.xsd.external_write(&be, b"");
        self.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, ME.0), Perm::new(PermKind::Read, 5)]);
        self.xsd.external_write(&fe, b"");
        self.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, 5), Perm::new(PermKind::Read, ME.0)]);
    }

    fn maintenance(&mut self, now: u64) -> bool {
        self.toy.now = now;
        self.life.maintenance(&mut self.xs, now, &mut self.toy)
    }
}

#[test]
fn discovery_hotplug_and_frontend_states() {
    let mut w = World::new();
    w.create(true);
    assert_eq!(w.life.devices().len(), 1);
    let d = &w.life.devices()[0];
    assert_eq!((d.be.as_str(), d.fe.as_str(), d.fe_dom), (BE, FE, DomId(5)));
    assert_eq!(w.get(&format!("{BE}/hotplug-status")).as_deref(), Some("connected"));
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("2"));
    // Adopted once, however many watch events fire.
    assert_eq!(w.toy.events.iter().filter(|(_, e)| *e == DeviceEvent::Added).count(), 1);
    w.put(&format!("{FE}/state"), "4");
    w.pump();
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("4"));
    assert_eq!(w.get(&format!("{BE}/feature-x")).as_deref(), Some("1"));
    w.put(&format!("{FE}/state"), "banana");
    w.pump();
    assert_eq!(w.toy.events.last(), Some(&(1, DeviceEvent::FrontendStateInvalid)));
    assert_eq!(w.get(&format!("{BE}/error")).as_deref(), Some("bad frontend state"));
    // A token of another kind is none of ours.
    w.life.on_watch(&mut w.xs, "vbd-list", &mut w.toy);
    w.life.on_watch(&mut w.xs, "toy-fe:backend/toy/9/9", &mut w.toy);
    assert_eq!(w.toy.events.len(), 4);
}

#[test]
fn half_written_device_is_found_by_maintenance() {
    let mut w = World::new();
    w.create(false);
    assert!(w.life.devices().is_empty(), "adopted without frontend-id");
    // Nothing fires for frontend-id (the list watch saw the directory
    // already): maintenance looks again.
    w.put(&format!("{BE}/frontend-id"), "5");
    w.pump();
    assert!(w.maintenance(0), "rescanned");
    assert_eq!(w.life.devices().len(), 1);
    assert!(!w.maintenance(0), "nothing more to rescan");
    // Lost events: a requested rescan adopts nothing twice.
    w.life.request_rescan();
    assert!(w.maintenance(0));
    assert_eq!(w.life.devices().len(), 1);
    assert_eq!(w.toy.live.borrow().len(), 1);
}

#[test]
fn closed_device_is_retired_then_its_directory_removed() {
    let mut w = World::new();
    w.create(true);
    w.put(&format!("{FE}/state"), "6");
    w.pump();
    assert!(w.life.devices().is_empty());
    assert!(w.toy.live.borrow().is_empty());
    assert_eq!(w.get(&format!("{BE}/state")).as_deref(), Some("6"));
    assert_eq!(w.life.pending_removals(), &[(BE.to_string(), RM_DELAY_NS)]);
    // Watches are gone: frontend changes reach nobody.
    let n = w.toy.events.len();
    w.put(&format!("{FE}/state"), "4");
    w.pump();
    assert_eq!(w.toy.events.len(), n);
    // Retired: a rescan before the delay does not adopt it again.
    w.life.request_rescan();
    w.maintenance(RM_DELAY_NS - 1);
    assert!(w.life.devices().is_empty());
    assert!(w.get(&format!("{BE}/state")).is_some(), "removed too early");
    w.maintenance(RM_DELAY_NS);
    assert_eq!(w.get(BE), None, "directory removed after the delay");
    assert!(w.life.pending_removals().is_empty());
    // The toolstack re-creates it: a new device, a new id.
    w.create(true);
    assert_eq!(w.life.devices().len(), 1);
    assert_eq!(w.life.devices()[0].id, 2);
}

#[test]
fn frontend_gone_and_detach() {
    // The frontend's directory vanishes (its domain died).
    let mut w = World::new();
    w.create(true);
    w.put(&format!("{FE}/state"), "4");
    w.pump();
    w.xsd.external_rm(FE);
    w.pump();
    assert_eq!(w.toy.events.last(), Some(&(1, DeviceEvent::FrontendGone)));
    assert!(w.life.devices().is_empty());
    // The toolstack detaches (online 0).
    let mut w = World::new();
    w.create(true);
    w.put(&format!("{BE}/online"), "0");
    w.pump();
    assert_eq!(w.toy.events.last(), Some(&(1, DeviceEvent::Offline)));
    assert!(w.life.devices().is_empty());
}

#[test]
fn removed_backend_directory_is_never_recreated() {
    let mut w = World::new();
    w.create(true);
    w.xsd.external_rm(BE);
    w.pump();
    // Found gone by the list watch: the kind closes it, but its Closed
    // state write must not bring the directory back.
    assert_eq!(w.toy.events.last(), Some(&(1, DeviceEvent::FrontendGone)));
    assert_eq!(w.get(BE), None);
    assert_eq!(w.get(&format!("{BE}/state")), None);
    assert!(w.life.pending_removals().is_empty(), "nothing left to remove");
}

#[test]
fn device_being_torn_down_is_not_adopted() {
    let mut w = World::new();
    w.dirs();
    w.put(&format!("{FE}/state"), "1");
    w.put(&format!("{BE}/frontend"), FE);
    w.put(&format!("{BE}/frontend-id"), "5");
    w.put(&format!("{BE}/online"), "0");
    w.put(&format!("{BE}/state"), "5");
    w.pump();
    w.life.request_rescan();
    w.maintenance(0);
    assert!(w.life.devices().is_empty());
    assert!(w.toy.events.is_empty());
}
