//! Ferrite's own address end to end on the host: a second smoltcp
//! interface plays the client, on the fake NIC's wire (the outside) or in a
//! guest behind a simulated netfront, and fetches `/metrics` through the
//! real switch, the fabric's local stack and its HTTP server.

use std::collections::VecDeque;

use drivers::fake::FakeNic;
use drivers::nic::Offloads;
use net::switch::Config;
use net::{Frame, MacAddr};
use netback::testing::{world, FrontOpts, TxPkt, World};
use netback::NetConfig;
use netpath::local::{Addressing, LocalConfig};
use netpath::Fabric;
use smoltcp::iface::{Config as IfConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use xen::evtchn::EventOps;

const BODY: &str = "# HELP ferrite_test A test.\n# TYPE ferrite_test gauge\nferrite_test 1\n";

/// The client's wire: frames both ways.
#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Where the client sits.
#[derive(Clone, Copy)]
enum Via {
    /// Outside, behind the NIC.
    Nic,
    /// In guest `fi`, behind its vif.
    Vif(usize),
}

fn setup(local: Option<LocalConfig>) -> (World, Fabric<FakeNic>) {
    let mut w = world(NetConfig::default(), &[1, 2]);
    for fi in 0..2 {
        w.attach(fi, None);
        w.connect(fi, FrontOpts::default());
        w.fronts[fi].post_rx(0, 256);
    }
    let nic = FakeNic::new(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]), Offloads::default(), 256);
    let mut f = Fabric::new(Config::default(), Some(nic));
    if let Some(cfg) = local {
        let mac = f.enable_local(cfg, w.e.now()).unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xfe, 0, 0x12, 0x34, 0x56]));
    }
    f.poll(&mut w.nb, &mut w.g, &mut w.e); // vif ports attach
    (w, f)
}

fn static_cfg(vifs: bool) -> LocalConfig {
    LocalConfig { addressing: Addressing::Static { ip: [10, 0, 2, 15], prefix: 24, gw: None }, port: 9100, vifs }
}

/// A client stack at `via`.
struct Client {
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    via: Via,
}

fn instant(w: &World) -> Instant {
    Instant::from_micros((w.e.now() / 1000) as i64)
}

impl Client {
    fn new(w: &World, via: Via, mac: [u8; 6], ip: [u8; 4]) -> Client {
        let mut wire = Wire::default();
        let cfg = IfConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(cfg, &mut wire, instant(w));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::new(ip[0], ip[1], ip[2], ip[3])), 24)).unwrap();
        });
        Client { wire, iface, sockets: SocketSet::new(vec![]), via }
    }

    /// A connection to 10.0.2.15:9100 from a fresh port.
    fn connect(&mut self) -> SocketHandle {
        let sock = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 4096]));
        let h = self.sockets.add(sock);
        let port = 49152 + NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let remote = (IpAddress::v4(10, 0, 2, 15), 9100);
        self.sockets.get_mut::<tcp::Socket>(h).connect(self.iface.context(), remote, port).unwrap();
        h
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// One millisecond: the client's frames in, the fabric and Ferrite's
    /// stack polled as the main loop does, the answers out.
    fn step(&mut self, w: &mut World, f: &mut Fabric<FakeNic>) {
        w.advance(1_000_000);
        self.iface.poll(instant(w), &mut self.wire, &mut self.sockets);
        for frame in self.wire.tx.drain(..) {
            match self.via {
                Via::Nic => f.nic_mut().unwrap().inject(Frame::plain(frame)),
                Via::Vif(fi) => {
                    let slots = w.fronts[fi].tx_slots(0, &TxPkt::new(frame));
                    w.fronts[fi].push_slots(0, &slots);
                    w.fronts[fi].publish_tx(0);
                }
            }
        }
        f.poll(&mut w.nb, &mut w.g, &mut w.e);
        let now = w.e.now();
        if f.poll_local(now).wants_metrics {
            f.answer_local(BODY, now);
        }
        f.poll(&mut w.nb, &mut w.g, &mut w.e);
        match self.via {
            Via::Nic => self.wire.rx.extend(f.nic_mut().unwrap().sent().into_iter().map(|fr| fr.data)),
            Via::Vif(fi) => {
                let got = w.received(fi);
                w.fronts[fi].post_rx(0, got.len());
                self.wire.rx.extend(got.into_iter().map(|p| p.data));
            }
        }
        self.iface.poll(instant(w), &mut self.wire, &mut self.sockets);
    }
}

/// Fetches `path` from 10.0.2.15:9100 as a client at `via` (MAC `mac`, IP
/// `ip`); returns what the server sent before closing, or `None` if the
/// connection never got anywhere.
fn fetch(w: &mut World, f: &mut Fabric<FakeNic>, via: Via, mac: [u8; 6], ip: [u8; 4], path: &str) -> Option<String> {
    let mut c = Client::new(w, via, mac, ip);
    let h = c.connect();
    let mut sent = false;
    let mut got = Vec::new();
    let mut established = false;
    for _ in 0..3000 {
        c.step(w, f);
        let s = c.socket(h);
        established |= s.may_send() || s.may_recv();
        if s.may_send() && !sent {
            s.send_slice(format!("GET {path} HTTP/1.0\r\nUser-Agent: test\r\n\r\n").as_bytes()).unwrap();
            sent = true;
        }
        while s.can_recv() {
            let mut b = [0u8; 4096];
            let n = s.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        if sent && !s.may_recv() && s.state() != tcp::State::Established {
            // The server closed: close our side too, as a client does.
            s.close();
            if matches!(s.state(), tcp::State::TimeWait | tcp::State::Closed) {
                return Some(String::from_utf8(got).unwrap());
            }
        }
    }
    established.then(|| String::from_utf8_lossy(&got).into_owned())
}

const OUTSIDE: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const GUEST1: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 1];

#[test]
fn metrics_answer_from_the_uplink() {
    let (mut w, mut f) = setup(Some(static_cfg(false)));
    assert_eq!(f.local().unwrap().url().as_deref(), Some("http://10.0.2.15:9100/metrics"));
    let r = fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], "/metrics").expect("connected");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
    assert!(r.contains(&format!("\r\nContent-Length: {}\r\n", BODY.len())), "{r}");
    assert!(r.ends_with(&format!("\r\n\r\n{BODY}")), "{r}");
    let r = fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], "/").expect("connected");
    assert!(r.starts_with("HTTP/1.0 404 Not Found\r\n"), "{r}");
    // A request larger than the server reads: 400, not a bigger buffer.
    let long = format!("/{}", "a".repeat(3000));
    let r = fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], &long).expect("connected");
    assert!(r.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{r}");
    let st = f.local().unwrap().stats;
    assert_eq!((st.ok, st.refused), (1, 2));
    // Guests never saw the conversation (ARP aside, it was unicast).
    assert_eq!(f.stats.local_denied, 0);
}

#[test]
fn a_vif_cannot_reach_ferrites_address_by_default() {
    let (mut w, mut f) = setup(Some(static_cfg(false)));
    assert_eq!(fetch(&mut w, &mut f, Via::Vif(0), GUEST1, [10, 0, 2, 50], "/metrics"), None);
    assert!(f.stats.local_denied > 0);
    assert_eq!(f.local().unwrap().stats.rx_frames, 0, "nothing from the vif reached the stack");
    // The uplink still can.
    let r = fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], "/metrics").unwrap();
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
}

#[test]
fn a_vif_reaches_it_when_configured() {
    let (mut w, mut f) = setup(Some(static_cfg(true)));
    let r = fetch(&mut w, &mut f, Via::Vif(0), GUEST1, [10, 0, 2, 50], "/metrics").expect("connected");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.ends_with(BODY));
    assert_eq!(f.stats.local_denied, 0);
}

#[test]
fn off_unless_configured() {
    let (mut w, mut f) = setup(None);
    assert!(f.local().is_none());
    assert_eq!(fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], "/metrics"), None);
}

#[test]
fn the_fabric_fills_the_network_metrics() {
    let (mut w, mut f) = setup(Some(static_cfg(false)));
    assert_eq!(fetch(&mut w, &mut f, Via::Vif(0), GUEST1, [10, 0, 2, 50], "/metrics"), None);
    let mut snap = metrics::Snapshot::default();
    f.fill_metrics(&w.nb, &mut snap);
    assert_eq!(snap.vifs.len(), 2);
    let sent = snap.vifs.iter().find(|v| v.mac == "00:16:3e:00:00:01").unwrap().tx_packets;
    assert!(sent > 0);
    assert_eq!(snap.switch.local_denied, f.stats.local_denied);
    let t = metrics::render(&snap);
    for line in [
        format!("ferrite_vif_tx_packets_total{{vif=\"backend/vif/1/0\"}} {sent}\n"),
        "ferrite_vif_info{vif=\"backend/vif/1/0\",mac=\"00:16:3e:00:00:01\"} 1\n".to_string(),
        format!("ferrite_switch_drops_total{{reason=\"local_denied\"}} {}\n", f.stats.local_denied),
        "ferrite_nic_device_errors_total{device=\"eth0\"} 0\n".to_string(),
    ] {
        assert!(t.contains(&line), "missing {line:?} in\n{t}");
    }
}

/// Clients that connect and never send hold a slot at most
/// `CONN_TIMEOUT_NS`; there are never more than `MAX_CONNECTIONS` of them,
/// and once they time out a scraper is served again.
#[test]
fn idle_connections_are_bounded_and_time_out() {
    use netpath::local::{CONN_TIMEOUT_NS, MAX_CONNECTIONS};
    let (mut w, mut f) = setup(Some(static_cfg(false)));
    let mut c = Client::new(&w, Via::Nic, OUTSIDE, [10, 0, 2, 2]);
    let hs: Vec<_> = (0..MAX_CONNECTIONS + 3).map(|_| c.connect()).collect();
    for _ in 0..200 {
        c.step(&mut w, &mut f);
    }
    let up = hs.iter().filter(|h| c.socket(**h).state() == tcp::State::Established).count();
    assert_eq!(up, MAX_CONNECTIONS, "only {MAX_CONNECTIONS} slots");
    // A scraper now finds no slot.
    let mut busy = Client::new(&w, Via::Nic, [0x52, 0x55, 0x0a, 0, 2, 3], [10, 0, 2, 3]);
    let b = busy.connect();
    for _ in 0..50 {
        busy.step(&mut w, &mut f);
    }
    assert_ne!(busy.socket(b).state(), tcp::State::Established);
    drop(busy);
    // Past the deadline the idle ones are aborted.
    for _ in 0..(CONN_TIMEOUT_NS / 1_000_000 + 500) {
        c.step(&mut w, &mut f);
    }
    assert!(f.local().unwrap().stats.timeouts >= MAX_CONNECTIONS as u64);
    drop(c);
    let r = fetch(&mut w, &mut f, Via::Nic, OUTSIDE, [10, 0, 2, 2], "/metrics").expect("served again");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
}
