//! Ferrite's own network address: a smoltcp interface on the switch's
//! [`PortId::Local`](net::switch::PortId::Local) port serving the metrics
//! over HTTP ([`crate::http`]). Off unless `extra=` configures it.
//!
//! * Its MAC is `02:fe:` followed by the last four bytes of the NIC's MAC
//!   (locally administered, unicast; `02:fe:00:00:00:01` without a NIC); if
//!   that were the NIC's own MAC, its last bit is flipped. The switch holds
//!   it as a fixed MAC: nobody on the uplink may use it as a source.
//! * Frames the switch gives the port wait in a bounded queue
//!   ([`RX_QUEUE`]) until [`Local::poll`] hands them to smoltcp; frames
//!   smoltcp sends wait in another ([`TX_QUEUE`]) until the fabric switches
//!   them. Offloads (partial checksums, GSO) are completed before smoltcp
//!   sees a frame.
//! * At most [`MAX_CONNECTIONS`] connections; each must send its request
//!   within [`CONN_TIMEOUT_NS`] and is closed after one answer.
//! * Whether a vif may reach the port at all is the fabric's decision
//!   ([`LocalConfig::vifs`]).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use alloc::{collections::VecDeque, format};
use net::{Frame, MacAddr};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::http;

/// Frames waiting for smoltcp (more are dropped and counted).
pub const RX_QUEUE: usize = 32;
/// Frames smoltcp sent that wait for the switch (smoltcp holds back more).
pub const TX_QUEUE: usize = 32;
/// Concurrent HTTP connections.
pub const MAX_CONNECTIONS: usize = 4;
/// A connection's whole life: request read, answer sent.
pub const CONN_TIMEOUT_NS: u64 = 10_000_000_000;
/// Default TCP port.
pub const DEFAULT_PORT: u16 = 9100;
/// Largest answer body (a larger one is refused with 400).
pub const MAX_BODY: usize = 1 << 20;
/// Longest the stack goes unpolled while idle (connection deadlines, slots
/// to re-arm).
const IDLE_POLL_NS: u64 = 100_000_000;
/// Ethernet frame without FCS, as smoltcp counts its MTU.
const ETH_MTU: usize = 1514;
const TCP_RX_BUF: usize = http::MAX_REQUEST;
const TCP_TX_BUF: usize = 8192;

/// How the address is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// A fixed address, prefix length and optional default gateway.
    Static {
        /// The address.
        ip: [u8; 4],
        /// Its prefix length (0..=32).
        prefix: u8,
        /// Default gateway.
        gw: Option<[u8; 4]>,
    },
    /// DHCP on the uplink's network.
    Dhcp,
}

/// The `extra=` options of the metrics endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// How the address is found.
    pub addressing: Addressing,
    /// TCP port of the HTTP server.
    pub port: u16,
    /// Whether vifs may reach the address (by default only the uplink can).
    pub vifs: bool,
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl LocalConfig {
    /// Reads the options from the words of the command line:
    /// `metrics=IP/PREFIX[,gw=IP][,port=N]` or `metrics=dhcp[,port=N]`,
    /// and `metrics.vifs=1`. `Ok(None)` when `metrics=` is absent; `Err`
    /// names what did not parse (the endpoint then stays off).
    pub fn from_cmdline(cmdline: &str) -> Result<Option<LocalConfig>, String> {
        let mut cfg = None;
        let mut vifs = false;
        for w in cmdline.split_whitespace() {
            if let Some(v) = w.strip_prefix("metrics=") {
                cfg = Some(Self::parse(v)?);
            } else if let Some(v) = w.strip_prefix("metrics.vifs=") {
                vifs = match v {
                    "1" => true,
                    "0" => false,
                    _ => return Err(format!("metrics.vifs={v}: 0 or 1")),
                };
            }
        }
        Ok(cfg.map(|c| LocalConfig { vifs, ..c }))
    }

    /// Parses the value of `metrics=`.
    pub fn parse(v: &str) -> Result<LocalConfig, String> {
        let mut items = v.split(',');
        let first = items.next().unwrap_or("");
        let mut addressing = if first == "dhcp" {
            Addressing::Dhcp
        } else {
            let (ip, prefix) = first.split_once('/').ok_or_else(|| format!("metrics={v}: IP/PREFIX or dhcp"))?;
            let ip = parse_ip(ip).ok_or_else(|| format!("metrics={v}: bad address {ip}"))?;
            let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= 32);
            let prefix = prefix.ok_or_else(|| format!("metrics={v}: prefix 0..=32"))?;
            Addressing::Static { ip, prefix, gw: None }
        };
        let mut port = DEFAULT_PORT;
        for it in items {
            if let Some(p) = it.strip_prefix("port=") {
                port = p.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("metrics={v}: bad port {p}"))?;
            } else if let Some(g) = it.strip_prefix("gw=") {
                let g = parse_ip(g).ok_or_else(|| format!("metrics={v}: bad gateway {g}"))?;
                match &mut addressing {
                    Addressing::Static { gw, .. } => *gw = Some(g),
                    Addressing::Dhcp => return Err(format!("metrics={v}: gw= is for a static address")),
                }
            } else {
                return Err(format!("metrics={v}: unknown option {it}"));
            }
        }
        Ok(LocalConfig { addressing, port, vifs: false })
    }
}

/// Ferrite's own MAC, derived from the NIC's (see the module doc).
pub fn local_mac(nic: Option<MacAddr>) -> MacAddr {
    let Some(n) = nic else { return MacAddr([0x02, 0xfe, 0, 0, 0, 1]) };
    let mut m = [0x02, 0xfe, n.0[2], n.0[3], n.0[4], n.0[5]];
    if m == n.0 {
        m[5] ^= 1;
    }
    MacAddr(m)
}

/// Counters of the local stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames dropped: queue full, or an offload that could not be done.
    pub rx_drops: u64,
    /// Frames smoltcp sent.
    pub tx_frames: u64,
    /// Answers: 200.
    pub ok: u64,
    /// Answers: 404 or 400.
    pub refused: u64,
    /// Connections aborted for their deadline.
    pub timeouts: u64,
}

/// The frames between the switch and smoltcp.
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct RxTok(Vec<u8>);
struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // smoltcp asks for at most the MTU we gave it.
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxTok, TxTok<'_>)> {
        if self.tx.len() >= TX_QUEUE {
            return None; // answers could not be sent: leave it queued
        }
        let f = self.rx.pop_front()?;
        Some((RxTok(f), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        (self.tx.len() < TX_QUEUE).then_some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = ETH_MTU;
        c.max_burst_size = Some(TX_QUEUE);
        c
    }
}

/// One HTTP connection slot.
struct Conn {
    handle: SocketHandle,
    req: Vec<u8>,
    /// The answer and how much of it was sent.
    resp: Option<(Vec<u8>, usize)>,
    /// A complete `GET /metrics` waits for its body.
    wants_body: bool,
    since: Option<u64>,
}

impl Conn {
    fn reset(&mut self) {
        self.req.clear();
        self.resp = None;
        self.wants_body = false;
        self.since = None;
    }
}

/// What [`Local::poll`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPoll {
    /// A connection waits for the metrics text ([`Local::answer`]).
    pub wants_metrics: bool,
    /// Frames wait for the switch.
    pub busy: bool,
}

/// Ferrite's own stack and its HTTP server.
pub struct Local {
    cfg: LocalConfig,
    mac: MacAddr,
    dev: Queues,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    conns: Vec<Conn>,
    addr: Option<[u8; 4]>,
    /// Nothing to do before this (ns) unless a frame arrives: the main loop
    /// spins while disks work, smoltcp need not run on every pass.
    next_poll: u64,
    /// Counters.
    pub stats: LocalStats,
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros(i64::try_from(ns / 1000).unwrap_or(i64::MAX))
}

impl Local {
    /// A stack with `mac` (see [`local_mac`]); `now` seeds its randomness.
    pub fn new(cfg: LocalConfig, mac: MacAddr, now: u64) -> Local {
        let mut dev = Queues { rx: VecDeque::new(), tx: VecDeque::new() };
        let mut ic = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
        ic.random_seed = now ^ u64::from_le_bytes([mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5], 0, 0]);
        let mut iface = Interface::new(ic, &mut dev, instant(now));
        let mut sockets = SocketSet::new(Vec::new());
        let mut addr = None;
        let dhcp = match cfg.addressing {
            Addressing::Static { ip, prefix, gw } => {
                let a = Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]);
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(a, prefix)));
                });
                if let Some(g) = gw {
                    let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(g[0], g[1], g[2], g[3]));
                }
                addr = Some(ip);
                None
            }
            Addressing::Dhcp => Some(sockets.add(dhcpv4::Socket::new())),
        };
        let mut conns = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; TCP_RX_BUF]),
                tcp::SocketBuffer::new(vec![0u8; TCP_TX_BUF]),
            );
            let handle = sockets.add(s);
            conns.push(Conn { handle, req: Vec::new(), resp: None, wants_body: false, since: None });
        }
        Local { cfg, mac, dev, iface, sockets, dhcp, conns, addr, next_poll: 0, stats: LocalStats::default() }
    }

    /// Its configuration.
    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// Its MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Its IPv4 address, once known.
    pub fn addr(&self) -> Option<[u8; 4]> {
        self.addr
    }

    /// `http://IP:PORT/metrics`, once the address is known.
    pub fn url(&self) -> Option<String> {
        let a = self.addr?;
        Some(format!("http://{}.{}.{}.{}:{}/metrics", a[0], a[1], a[2], a[3], self.cfg.port))
    }

    /// A frame the switch gives the port.
    pub fn push_rx(&mut self, frame: &Frame) {
        if self.dev.rx.len() >= RX_QUEUE {
            self.stats.rx_drops += 1;
            return;
        }
        let mut frames = match frame.meta.gso {
            Some(_) => match net::segment(frame) {
                Ok(s) => s,
                Err(_) => {
                    self.stats.rx_drops += 1;
                    return;
                }
            },
            None => vec![frame.clone()],
        };
        for f in frames.iter_mut() {
            if matches!(f.meta.csum, net::Csum::Partial { .. }) && net::complete_csum(f).is_err() {
                self.stats.rx_drops += 1;
                continue;
            }
            if f.data.len() > ETH_MTU || self.dev.rx.len() >= RX_QUEUE {
                self.stats.rx_drops += 1;
                continue;
            }
            self.stats.rx_frames += 1;
            self.dev.rx.push_back(core::mem::take(&mut f.data));
        }
    }

    /// The next frame smoltcp sent, for the switch.
    pub fn pop_tx(&mut self) -> Option<Frame> {
        let f = self.dev.tx.pop_front()?;
        self.stats.tx_frames += 1;
        Some(Frame::plain(f))
    }

    /// One round of the stack at `now` (ns): received frames, timers,
    /// DHCP, the HTTP connections. Bounded: at most [`RX_QUEUE`] frames.
    pub fn poll(&mut self, now: u64) -> LocalPoll {
        if self.dev.rx.is_empty() && now < self.next_poll {
            return LocalPoll { wants_metrics: false, busy: !self.dev.tx.is_empty() };
        }
        let t = instant(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        self.dhcp_events();
        let mut wants = false;
        for c in &mut self.conns {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            Self::serve(&mut self.stats, c, s, self.cfg.port, now);
            wants |= c.wants_body;
        }
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        self.plan(now);
        LocalPoll { wants_metrics: wants, busy: !self.dev.tx.is_empty() }
    }

    /// Gives `body` (the metrics text) to every connection waiting for it.
    pub fn answer(&mut self, body: &str, now: u64) {
        for c in &mut self.conns {
            if !c.wants_body {
                continue;
            }
            c.wants_body = false;
            let r = if body.len() > MAX_BODY {
                self.stats.refused += 1;
                http::response(400, "text/plain", b"too large\n")
            } else {
                self.stats.ok += 1;
                http::response(200, metrics::CONTENT_TYPE, body.as_bytes())
            };
            c.resp = Some((r, 0));
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            Self::serve(&mut self.stats, c, s, self.cfg.port, now);
        }
        self.iface.poll(instant(now), &mut self.dev, &mut self.sockets);
        self.plan(now);
    }

    /// When smoltcp next needs a poll (timers, data to send), at most
    /// [`IDLE_POLL_NS`] away.
    fn plan(&mut self, now: u64) {
        let mut next = now.saturating_add(IDLE_POLL_NS);
        if let Some(at) = self.iface.poll_at(instant(now), &self.sockets) {
            let at = u64::try_from(at.total_micros()).unwrap_or(0).saturating_mul(1000);
            next = next.min(at);
        }
        for c in &self.conns {
            if let Some(since) = c.since {
                next = next.min(since.saturating_add(CONN_TIMEOUT_NS + 1));
            }
        }
        self.next_poll = next;
    }

    fn dhcp_events(&mut self) {
        let Some(h) = self.dhcp else { return };
        let ev = match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => Some((c.address, c.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
            None => return,
        };
        self.iface.update_ip_addrs(|a| a.clear());
        self.iface.routes_mut().remove_default_ipv4_route();
        let had = self.addr.take().is_some();
        if let Some((cidr, router)) = ev {
            self.iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::Ipv4(cidr));
            });
            if let Some(r) = router {
                let _ = self.iface.routes_mut().add_default_ipv4_route(r);
            }
            self.addr = Some(cidr.address().octets());
            log::info!("metrics: DHCP gave {cidr}, router {router:?}");
        } else if had {
            // smoltcp also reports "deconfigured" once at start: no news.
            log::warn!("metrics: DHCP lease lost");
        }
    }

    /// Moves one connection on: listen, read the request, send the answer,
    /// close; aborts it past its deadline.
    fn serve(st: &mut LocalStats, c: &mut Conn, s: &mut tcp::Socket<'_>, port: u16, now: u64) {
        if !s.is_open() {
            c.reset();
            if s.listen(port).is_ok() {
                // A backstop: our own deadline (the whole connection's
                // life, trickling peers included) comes first.
                s.set_timeout(Some(Duration::from_secs(2 * CONN_TIMEOUT_NS / 1_000_000_000)));
            }
            return;
        }
        if s.state() == tcp::State::TimeWait {
            // Our answer was acknowledged and the peer closed: free the slot.
            s.abort();
            c.reset();
            return;
        }
        if s.is_listening() {
            return;
        }
        let since = *c.since.get_or_insert(now);
        if now.saturating_sub(since) > CONN_TIMEOUT_NS {
            st.timeouts += 1;
            s.abort();
            c.reset();
            return;
        }
        if c.resp.is_none() && !c.wants_body {
            let mut buf = [0u8; 512];
            // Bounded: the request buffer grows to MAX_REQUEST at most.
            while s.can_recv() && c.req.len() < http::MAX_REQUEST {
                let room = (http::MAX_REQUEST - c.req.len()).min(buf.len());
                match s.recv_slice(&mut buf[..room]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => c.req.extend_from_slice(&buf[..n]),
                }
            }
            // The peer closed its side before finishing its request.
            let peer_done = matches!(s.state(), tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing);
            match http::parse(&c.req) {
                http::Request::Incomplete if !peer_done => {}
                http::Request::Metrics => c.wants_body = true,
                http::Request::NotFound => {
                    st.refused += 1;
                    c.resp = Some((http::response(404, "text/plain", b"not found\n"), 0));
                }
                http::Request::Bad | http::Request::Incomplete => {
                    st.refused += 1;
                    c.resp = Some((http::response(400, "text/plain", b"bad request\n"), 0));
                }
            }
        }
        if let Some((r, sent)) = &mut c.resp {
            if *sent < r.len() && s.can_send() {
                if let Ok(n) = s.send_slice(&r[*sent..]) {
                    *sent += n;
                }
            }
            if *sent >= r.len() && s.may_send() {
                s.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(LocalConfig::from_cmdline("poll=spin nvme.sgl=0"), Ok(None));
        let c = LocalConfig::from_cmdline("metrics=10.0.2.15/24,gw=10.0.2.2,port=8080 x").unwrap().unwrap();
        assert_eq!(
            c,
            LocalConfig {
                addressing: Addressing::Static { ip: [10, 0, 2, 15], prefix: 24, gw: Some([10, 0, 2, 2]) },
                port: 8080,
                vifs: false
            }
        );
        let c = LocalConfig::from_cmdline("metrics.vifs=1 metrics=dhcp").unwrap().unwrap();
        assert_eq!(c, LocalConfig { addressing: Addressing::Dhcp, port: DEFAULT_PORT, vifs: true });
        for bad in [
            "metrics=10.0.2.15",
            "metrics=10.0.2.256/24",
            "metrics=10.0.2/24",
            "metrics=10.0.2.15/33",
            "metrics=dhcp,gw=10.0.2.2",
            "metrics=dhcp,port=0",
            "metrics=dhcp,port=70000",
            "metrics=dhcp,foo=1",
            "metrics=dhcp metrics.vifs=yes",
            "metrics=+1.2.3.4/8",
        ] {
            assert!(LocalConfig::from_cmdline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_is_local_unicast_and_not_the_nics() {
        let m = local_mac(Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])));
        assert_eq!(m, MacAddr([0x02, 0xfe, 0, 0x12, 0x34, 0x56]));
        let n = MacAddr([0x02, 0xfe, 1, 2, 3, 4]);
        assert_ne!(local_mac(Some(n)), n);
        assert_eq!(local_mac(None).0[0] & 3, 2);
    }

    #[test]
    fn rx_queue_is_bounded() {
        let cfg = LocalConfig { addressing: Addressing::Dhcp, port: 1, vifs: false };
        let mut l = Local::new(cfg, local_mac(None), 0);
        for _ in 0..RX_QUEUE + 5 {
            l.push_rx(&Frame::plain(vec![0xff; 60]));
        }
        assert_eq!((l.stats.rx_frames, l.stats.rx_drops), (RX_QUEUE as u64, 5));
        l.push_rx(&Frame::plain(vec![0; 2000]));
        let p = l.poll(1_000_000);
        assert!(!p.wants_metrics);
        assert!(l.url().is_none(), "no address before DHCP");
    }
}
