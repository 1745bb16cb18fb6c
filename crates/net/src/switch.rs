//! The L2 switch between the guests' vifs, the uplink NIC and (later)
//! Ferrite's own stack.
//!
//! Pure and time-passed-in (STYLE.md §6): [`Switch::forward`] decides,
//! for one frame from one ingress port, the list of egress ports; the
//! caller moves the bytes. The rules, in order:
//!
//! 1. Frames shorter than an Ethernet header are dropped ([`DropReason::Runt`]).
//! 2. A port with a fixed MAC (a vif, the local stack) may send only with
//!    that source MAC; anything else, and a group (multicast) source from
//!    any port, is dropped and counted ([`DropReason::Spoofed`]). An uplink frame
//!    claiming a fixed port's MAC as its source is dropped too: nobody
//!    outside may impersonate a guest.
//! 3. Source MACs seen on uplink ports are learned (bounded table, oldest
//!    evicted, entries age out after [`Config::age`]). Fixed MACs are
//!    static entries that learning never overrides.
//! 4. A unicast destination that is a fixed port's MAC goes to that port
//!    only; one learned on an uplink goes there only (so guest-to-guest
//!    traffic never touches the NIC). A frame is never sent back to its
//!    ingress port.
//! 5. Broadcast, multicast and unknown unicast are flooded to every other
//!    port, at most [`Config::flood_burst`] frames at once and
//!    [`Config::flood_rate`] per second per ingress port (a token bucket),
//!    so one guest cannot flood the others.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::{Frame, MacAddr, ETH_HLEN};

/// Nanoseconds of monotonic time, passed in by the caller (the
/// workspace's one time type).
pub use xen_types::Nanos;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A switch port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortId {
    /// The uplink NIC.
    Uplink,
    /// A guest's vif, by an id the caller chooses (e.g. domid << 16 | devid).
    Vif(u32),
    /// Ferrite's own network stack.
    Local,
}

/// What a port is, which decides what it may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Any source MAC (learned); the outside world.
    Uplink,
    /// A guest's vif: sends only with `mac`.
    Vif {
        /// The MAC the toolstack gave the vif.
        mac: MacAddr,
    },
    /// Ferrite's own stack: sends only with `mac`.
    Local {
        /// Its MAC.
        mac: MacAddr,
    },
}

impl PortKind {
    fn fixed_mac(&self) -> Option<MacAddr> {
        match *self {
            PortKind::Uplink => None,
            PortKind::Vif { mac } | PortKind::Local { mac } => Some(mac),
        }
    }
}

/// Tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most learned MACs kept (the oldest is evicted past it).
    pub max_entries: usize,
    /// A learned MAC not seen for this long is forgotten.
    pub age: Nanos,
    /// Most ports.
    pub max_ports: usize,
    /// Flooded frames per second each ingress port may send.
    pub flood_rate: u64,
    /// Flooded frames an idle port may send at once.
    pub flood_burst: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_entries: 1024, age: 300 * NS_PER_SEC, max_ports: 256, flood_rate: 1000, flood_burst: 100 }
    }
}

/// Why [`Switch::add_port`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// The port exists already.
    DuplicatePort,
    /// Another port has this fixed MAC.
    DuplicateMac,
    /// A fixed MAC that is a group address.
    MulticastMac,
    /// [`Config::max_ports`] reached.
    TooManyPorts,
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// The ingress port is not attached.
    UnknownPort,
    /// Source MAC not the port's own, a group address, or a guest's MAC
    /// arriving from outside.
    Spoofed,
    /// Flooding it would exceed the ingress port's bucket.
    FloodLimit,
    /// Its destination is behind its ingress port (or nowhere else).
    NoEgress,
}

/// What [`Switch::forward`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// To the one port in `out`.
    Unicast,
    /// To every port in `out` (broadcast, multicast, unknown unicast).
    Flood,
    /// To nobody; `out` is empty.
    Drop(DropReason),
}

/// Per-port counters. Ingress counters count what the port sent into the
/// switch, egress what the switch gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from the port.
    pub rx_frames: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames forwarded to the port.
    pub tx_frames: u64,
    /// Bytes forwarded to the port.
    pub tx_bytes: u64,
    /// Ingress frames shorter than an Ethernet header.
    pub drop_runt: u64,
    /// Ingress frames with a forbidden source MAC.
    pub drop_spoofed: u64,
    /// Ingress frames not flooded because the bucket was empty.
    pub drop_flood: u64,
    /// Ingress frames with nowhere to go.
    pub drop_no_egress: u64,
    /// Ingress frames flooded.
    pub flooded: u64,
}

impl PortStats {
    /// Adds `o`'s counters to these (saturating).
    pub fn add(&mut self, o: &PortStats) {
        self.rx_frames = self.rx_frames.saturating_add(o.rx_frames);
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.tx_frames = self.tx_frames.saturating_add(o.tx_frames);
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.drop_runt = self.drop_runt.saturating_add(o.drop_runt);
        self.drop_spoofed = self.drop_spoofed.saturating_add(o.drop_spoofed);
        self.drop_flood = self.drop_flood.saturating_add(o.drop_flood);
        self.drop_no_egress = self.drop_no_egress.saturating_add(o.drop_no_egress);
        self.flooded = self.flooded.saturating_add(o.flooded);
    }
}

/// Switch-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Learned MACs now in the table.
    pub learned: usize,
    /// Entries evicted because the table was full.
    pub evicted: u64,
    /// Entries forgotten because they aged out.
    pub aged: u64,
    /// Frames from a port that is not attached.
    pub unknown_port: u64,
}

struct Port {
    kind: PortKind,
    stats: PortStats,
    /// Flood credit in frame-nanoseconds (one frame = `NS_PER_SEC`).
    credit: u64,
    refilled: Nanos,
}

#[derive(Clone, Copy)]
struct Learned {
    port: PortId,
    seen: Nanos,
    seq: u64,
}

/// The switch: ports, static entries for fixed MACs, the learning table.
pub struct Switch {
    cfg: Config,
    ports: BTreeMap<PortId, Port>,
    fixed: BTreeMap<MacAddr, PortId>,
    learned: BTreeMap<MacAddr, Learned>,
    /// `learned` ordered by age: (seen, seq) -> MAC.
    by_age: BTreeMap<(Nanos, u64), MacAddr>,
    seq: u64,
    stats: SwitchStats,
    /// Counters of the ports removed so far, so switch-wide totals never
    /// go backwards when a vif leaves.
    departed: PortStats,
}

impl Switch {
    /// An empty switch.
    pub fn new(cfg: Config) -> Switch {
        Switch {
            cfg,
            ports: BTreeMap::new(),
            fixed: BTreeMap::new(),
            learned: BTreeMap::new(),
            by_age: BTreeMap::new(),
            seq: 0,
            stats: SwitchStats::default(),
            departed: PortStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Attaches a port. A vif's MAC must be unicast and unique; it also
    /// replaces any learned entry for that MAC.
    pub fn add_port(&mut self, id: PortId, kind: PortKind) -> Result<(), SwitchError> {
        if self.ports.contains_key(&id) {
            return Err(SwitchError::DuplicatePort);
        }
        if self.ports.len() >= self.cfg.max_ports {
            return Err(SwitchError::TooManyPorts);
        }
        if let Some(mac) = kind.fixed_mac() {
            if mac.is_multicast() {
                return Err(SwitchError::MulticastMac);
            }
            if self.fixed.contains_key(&mac) {
                return Err(SwitchError::DuplicateMac);
            }
            self.forget(mac);
            self.fixed.insert(mac, id);
        }
        let burst = self.cfg.flood_burst.saturating_mul(NS_PER_SEC);
        self.ports.insert(id, Port { kind, stats: PortStats::default(), credit: burst, refilled: 0 });
        Ok(())
    }

    /// Detaches a port, with its fixed MAC and everything learned on it.
    /// Returns its final counters.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortStats> {
        let port = self.ports.remove(&id)?;
        if let Some(mac) = port.kind.fixed_mac() {
            self.fixed.remove(&mac);
        }
        let gone: Vec<MacAddr> = self.learned.iter().filter(|(_, l)| l.port == id).map(|(m, _)| *m).collect();
        for mac in gone {
            self.forget(mac);
        }
        self.departed.add(&port.stats);
        Some(port.stats)
    }

    /// Every port's counters added up, the removed ports' included: totals
    /// for the whole switch that only ever grow.
    pub fn totals(&self) -> PortStats {
        let mut t = self.departed;
        for p in self.ports.values() {
            t.add(&p.stats);
        }
        t
    }

    /// The attached ports, in order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortKind)> + '_ {
        self.ports.iter().map(|(id, p)| (*id, p.kind))
    }

    /// A port's counters.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        self.ports.get(&id).map(|p| p.stats)
    }

    /// Switch-wide counters.
    pub fn switch_stats(&self) -> SwitchStats {
        SwitchStats { learned: self.learned.len(), ..self.stats }
    }

    /// Where unicast to `mac` would go now (a fixed port, or a learned entry
    /// that has not aged out).
    pub fn lookup(&self, now: Nanos, mac: MacAddr) -> Option<PortId> {
        if let Some(p) = self.fixed.get(&mac) {
            return Some(*p);
        }
        let l = self.learned.get(&mac)?;
        (now.saturating_sub(l.seen) < self.cfg.age).then_some(l.port)
    }

    /// Decides where `frame`, received on `ingress` at time `now`, goes:
    /// `out` is cleared and filled with the egress ports (never `ingress`).
    pub fn forward(&mut self, now: Nanos, ingress: PortId, frame: &Frame, out: &mut Vec<PortId>) -> Verdict {
        out.clear();
        let len = frame.data.len() as u64;
        let Some(port) = self.ports.get_mut(&ingress) else {
            self.stats.unknown_port += 1;
            return Verdict::Drop(DropReason::UnknownPort);
        };
        port.stats.rx_frames += 1;
        port.stats.rx_bytes = port.stats.rx_bytes.saturating_add(len);
        let (Some(dst), Some(src)) = (frame.dst(), frame.src()) else {
            port.stats.drop_runt += 1;
            return Verdict::Drop(DropReason::Runt);
        };
        if frame.data.len() < ETH_HLEN {
            port.stats.drop_runt += 1;
            return Verdict::Drop(DropReason::Runt);
        }
        let kind = port.kind;
        let spoofed = src.is_multicast()
            || match kind.fixed_mac() {
                Some(own) => src != own,
                // Nobody outside may use a guest's (or our own) MAC.
                None => self.fixed.contains_key(&src),
            };
        if spoofed {
            if let Some(p) = self.ports.get_mut(&ingress) {
                p.stats.drop_spoofed += 1;
            }
            return Verdict::Drop(DropReason::Spoofed);
        }
        if kind == PortKind::Uplink {
            self.learn(now, src, ingress);
        }
        let known = if dst.is_multicast() { None } else { self.lookup(now, dst) };
        if let Some(egress) = known {
            if egress == ingress || !self.ports.contains_key(&egress) {
                if let Some(p) = self.ports.get_mut(&ingress) {
                    p.stats.drop_no_egress += 1;
                }
                return Verdict::Drop(DropReason::NoEgress);
            }
            out.push(egress);
            self.count_egress(out, len);
            return Verdict::Unicast;
        }
        // Flood: every other port, if the ingress port's bucket allows.
        let (rate, burst) = (self.cfg.flood_rate, self.cfg.flood_burst.saturating_mul(NS_PER_SEC));
        let Some(port) = self.ports.get_mut(&ingress) else { return Verdict::Drop(DropReason::UnknownPort) };
        let elapsed = now.saturating_sub(port.refilled);
        port.credit = port.credit.saturating_add(elapsed.saturating_mul(rate)).min(burst);
        port.refilled = port.refilled.max(now);
        if port.credit < NS_PER_SEC {
            port.stats.drop_flood += 1;
            return Verdict::Drop(DropReason::FloodLimit);
        }
        out.extend(self.ports.keys().copied().filter(|p| *p != ingress));
        let Some(port) = self.ports.get_mut(&ingress) else { return Verdict::Drop(DropReason::UnknownPort) };
        if out.is_empty() {
            port.stats.drop_no_egress += 1;
            return Verdict::Drop(DropReason::NoEgress);
        }
        port.credit -= NS_PER_SEC;
        port.stats.flooded += 1;
        self.count_egress(out, len);
        Verdict::Flood
    }

    fn count_egress(&mut self, out: &[PortId], len: u64) {
        for id in out {
            if let Some(p) = self.ports.get_mut(id) {
                p.stats.tx_frames += 1;
                p.stats.tx_bytes = p.stats.tx_bytes.saturating_add(len);
            }
        }
    }

    fn forget(&mut self, mac: MacAddr) {
        if let Some(l) = self.learned.remove(&mac) {
            self.by_age.remove(&(l.seen, l.seq));
        }
    }

    fn learn(&mut self, now: Nanos, mac: MacAddr, port: PortId) {
        if self.fixed.contains_key(&mac) {
            return;
        }
        // Forget what aged out (oldest first, bounded by the table size).
        while let Some((&(seen, seq), &old)) = self.by_age.iter().next() {
            if now.saturating_sub(seen) < self.cfg.age {
                break;
            }
            self.by_age.remove(&(seen, seq));
            self.learned.remove(&old);
            self.stats.aged += 1;
        }
        self.forget(mac);
        while self.learned.len() >= self.cfg.max_entries {
            let Some((&key, &old)) = self.by_age.iter().next() else { break };
            self.by_age.remove(&key);
            self.learned.remove(&old);
            self.stats.evicted += 1;
        }
        if self.cfg.max_entries == 0 {
            return;
        }
        self.seq += 1;
        self.learned.insert(mac, Learned { port, seen: now, seq: self.seq });
        self.by_age.insert((now, self.seq), mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x00, 0x16, 0x3e, 0, 0, n])
    }

    fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Frame {
        let mut d = vec![0u8; len.max(14)];
        d[..6].copy_from_slice(&dst.0);
        d[6..12].copy_from_slice(&src.0);
        d[12..14].copy_from_slice(&[0x08, 0x00]);
        d.truncate(len);
        Frame::plain(d)
    }

    fn three() -> Switch {
        let mut s = Switch::new(Config::default());
        s.add_port(PortId::Uplink, PortKind::Uplink).unwrap();
        s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(1) }).unwrap();
        s.add_port(PortId::Vif(2), PortKind::Vif { mac: mac(2) }).unwrap();
        s
    }

    #[test]
    fn guest_to_guest_skips_the_uplink() {
        let mut s = three();
        let mut out = Vec::new();
        assert_eq!(s.forward(1, PortId::Vif(1), &frame(mac(2), mac(1), 60), &mut out), Verdict::Unicast);
        assert_eq!(out, [PortId::Vif(2)]);
        assert_eq!(s.stats(PortId::Uplink).unwrap().tx_frames, 0);
        assert_eq!(s.stats(PortId::Vif(2)).unwrap().tx_bytes, 60);
        assert_eq!(s.stats(PortId::Vif(1)).unwrap().rx_frames, 1);
    }

    #[test]
    fn broadcast_and_unknown_unicast_flood_to_others() {
        let mut s = three();
        let mut out = Vec::new();
        assert_eq!(s.forward(1, PortId::Vif(1), &frame(MacAddr::BROADCAST, mac(1), 42), &mut out), Verdict::Flood);
        assert_eq!(out, [PortId::Uplink, PortId::Vif(2)]);
        assert_eq!(s.forward(1, PortId::Vif(2), &frame(mac(9), mac(2), 42), &mut out), Verdict::Flood);
        assert_eq!(out, [PortId::Uplink, PortId::Vif(1)]);
    }

    #[test]
    fn learning_on_the_uplink_and_aging() {
        let mut s = three();
        let mut out = Vec::new();
        let outside = MacAddr([0x52, 0x55, 10, 0, 2, 2]);
        assert_eq!(s.forward(10, PortId::Uplink, &frame(mac(1), outside, 60), &mut out), Verdict::Unicast);
        assert_eq!(out, [PortId::Vif(1)]);
        assert_eq!(s.lookup(10, outside), Some(PortId::Uplink));
        assert_eq!(s.forward(20, PortId::Vif(1), &frame(outside, mac(1), 60), &mut out), Verdict::Unicast);
        assert_eq!(out, [PortId::Uplink]);
        // Aged out: flooded again.
        let later = 10 + s.config().age;
        assert_eq!(s.lookup(later, outside), None);
        assert_eq!(s.forward(later, PortId::Vif(1), &frame(outside, mac(1), 60), &mut out), Verdict::Flood);
    }

    #[test]
    fn spoofing_is_dropped_and_counted() {
        let mut s = three();
        let mut out = Vec::new();
        // Another guest's MAC, a made-up MAC, a multicast source.
        for src in [mac(2), mac(7), MacAddr([0x01, 0, 0x5e, 0, 0, 1])] {
            assert_eq!(
                s.forward(1, PortId::Vif(1), &frame(mac(2), src, 60), &mut out),
                Verdict::Drop(DropReason::Spoofed)
            );
            assert!(out.is_empty());
        }
        // From outside with a guest's MAC: refused, and not learned.
        assert_eq!(
            s.forward(1, PortId::Uplink, &frame(mac(2), mac(1), 60), &mut out),
            Verdict::Drop(DropReason::Spoofed)
        );
        assert_eq!(s.lookup(1, mac(1)), Some(PortId::Vif(1)));
        assert_eq!(s.stats(PortId::Vif(1)).unwrap().drop_spoofed, 3);
        assert_eq!(s.stats(PortId::Uplink).unwrap().drop_spoofed, 1);
        assert_eq!(s.stats(PortId::Vif(2)).unwrap().tx_frames, 0);
    }

    #[test]
    fn totals_keep_the_counts_of_removed_ports() {
        let mut s = three();
        let mut out = Vec::new();
        for _ in 0..3 {
            s.forward(1, PortId::Vif(1), &frame(mac(2), mac(7), 60), &mut out);
        }
        s.forward(1, PortId::Vif(2), &frame(mac(1), mac(2), 60), &mut out);
        let before = s.totals();
        assert_eq!((before.drop_spoofed, before.rx_frames, before.tx_frames), (3, 4, 1));
        // The spoofing vif leaves: its drops stay in the totals.
        let gone = s.remove_port(PortId::Vif(1)).unwrap();
        assert_eq!(gone.drop_spoofed, 3);
        assert_eq!(s.totals(), before);
        // A new vif with the same id starts from zero; the totals go on.
        s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(1) }).unwrap();
        s.forward(2, PortId::Vif(1), &frame(mac(2), mac(9), 60), &mut out);
        assert_eq!(s.stats(PortId::Vif(1)).unwrap().drop_spoofed, 1);
        assert_eq!(s.totals().drop_spoofed, 4);
    }

    #[test]
    fn runts_hairpins_and_unknown_ports() {
        let mut s = three();
        let mut out = vec![PortId::Local];
        assert_eq!(s.forward(1, PortId::Vif(1), &frame(mac(2), mac(1), 13), &mut out), Verdict::Drop(DropReason::Runt));
        assert!(out.is_empty());
        assert_eq!(s.forward(1, PortId::Vif(1), &Frame::plain(Vec::new()), &mut out), Verdict::Drop(DropReason::Runt));
        assert_eq!(s.stats(PortId::Vif(1)).unwrap().drop_runt, 2);
        assert_eq!(
            s.forward(1, PortId::Vif(1), &frame(mac(1), mac(1), 60), &mut out),
            Verdict::Drop(DropReason::NoEgress)
        );
        assert_eq!(
            s.forward(1, PortId::Vif(9), &frame(mac(1), mac(9), 60), &mut out),
            Verdict::Drop(DropReason::UnknownPort)
        );
        assert_eq!(s.switch_stats().unknown_port, 1);
    }

    #[test]
    fn ports_add_and_remove() {
        let mut s = three();
        assert_eq!(s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(5) }), Err(SwitchError::DuplicatePort));
        assert_eq!(s.add_port(PortId::Vif(3), PortKind::Vif { mac: mac(1) }), Err(SwitchError::DuplicateMac));
        assert_eq!(
            s.add_port(PortId::Vif(3), PortKind::Vif { mac: MacAddr::BROADCAST }),
            Err(SwitchError::MulticastMac)
        );
        let mut out = Vec::new();
        let outside = mac(0x40);
        s.forward(1, PortId::Uplink, &frame(mac(1), outside, 60), &mut out);
        assert_eq!(s.switch_stats().learned, 1);
        assert!(s.remove_port(PortId::Uplink).is_some());
        assert_eq!(s.switch_stats().learned, 0);
        assert!(s.remove_port(PortId::Vif(2)).is_some());
        assert_eq!(s.lookup(1, mac(2)), None);
        // The MAC is free again.
        s.add_port(PortId::Vif(3), PortKind::Vif { mac: mac(2) }).unwrap();
        assert_eq!(s.ports().count(), 2);
    }

    #[test]
    fn flood_bucket_refills_with_time() {
        let cfg = Config { flood_rate: 10, flood_burst: 3, ..Config::default() };
        let mut s = Switch::new(cfg);
        s.add_port(PortId::Uplink, PortKind::Uplink).unwrap();
        s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(1) }).unwrap();
        let mut out = Vec::new();
        let b = frame(MacAddr::BROADCAST, mac(1), 60);
        let v: Vec<Verdict> = (0..5).map(|_| s.forward(0, PortId::Vif(1), &b, &mut out)).collect();
        assert_eq!(v[..3], [Verdict::Flood; 3]);
        assert_eq!(v[3..], [Verdict::Drop(DropReason::FloodLimit); 2]);
        // 100 ms at 10/s: one more.
        assert_eq!(s.forward(100_000_000, PortId::Vif(1), &b, &mut out), Verdict::Flood);
        assert_eq!(s.forward(100_000_000, PortId::Vif(1), &b, &mut out), Verdict::Drop(DropReason::FloodLimit));
        // Unicast to a known port is not limited.
        s.add_port(PortId::Vif(2), PortKind::Vif { mac: mac(2) }).unwrap();
        assert_eq!(s.forward(100_000_000, PortId::Vif(1), &frame(mac(2), mac(1), 60), &mut out), Verdict::Unicast);
        assert_eq!(s.stats(PortId::Vif(1)).unwrap().drop_flood, 3);
    }

    #[test]
    fn table_evicts_the_oldest() {
        let cfg = Config { max_entries: 4, ..Config::default() };
        let mut s = Switch::new(cfg);
        s.add_port(PortId::Uplink, PortKind::Uplink).unwrap();
        s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(1) }).unwrap();
        let mut out = Vec::new();
        for i in 0..6u8 {
            s.forward(u64::from(i), PortId::Uplink, &frame(mac(1), mac(0x80 + i), 60), &mut out);
        }
        assert_eq!(s.switch_stats().learned, 4);
        assert_eq!(s.switch_stats().evicted, 2);
        assert_eq!(s.lookup(10, mac(0x80)), None);
        assert_eq!(s.lookup(10, mac(0x81)), None);
        assert_eq!(s.lookup(10, mac(0x85)), Some(PortId::Uplink));
    }

    /// One step of a random workload: who sends, to what, from what.
    #[derive(Clone, Debug)]
    struct Step {
        dt: u64,
        ingress: u8,
        dst: u8,
        src: u8,
        len: usize,
    }

    fn step() -> impl Strategy<Value = Step> {
        (0u64..50_000_000, 0u8..4, 0u8..12, 0u8..12, 0usize..80).prop_map(|(dt, ingress, dst, src, len)| Step {
            dt,
            ingress,
            dst,
            src,
            len,
        })
    }

    /// MACs 1..=3 are the vifs'; 4..=10 outside hosts; 11 broadcast; 0 a
    /// multicast group.
    fn addr(n: u8) -> MacAddr {
        match n {
            0 => MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
            11 => MacAddr::BROADCAST,
            n => mac(n),
        }
    }

    fn port(n: u8) -> PortId {
        if n == 0 {
            PortId::Uplink
        } else {
            PortId::Vif(u32::from(n))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A vif never receives a frame addressed to another vif's MAC,
        /// spoofed frames are never forwarded, the egress list never holds
        /// the ingress port, and the table stays within its bound.
        #[test]
        fn isolation_and_antispoofing(steps in proptest::collection::vec(step(), 1..300)) {
            let cfg = Config { max_entries: 3, ..Config::default() };
            let mut s = Switch::new(cfg);
            s.add_port(PortId::Uplink, PortKind::Uplink).unwrap();
            for v in 1..=3u8 {
                s.add_port(port(v), PortKind::Vif { mac: mac(v) }).unwrap();
            }
            let mut now = 0u64;
            let mut out = Vec::new();
            for st in steps {
                now += st.dt;
                let (dst, src, ingress) = (addr(st.dst), addr(st.src), port(st.ingress));
                let f = frame(dst, src, st.len);
                let verdict = s.forward(now, ingress, &f, &mut out);
                let own = (1..=3u8).contains(&st.ingress).then(|| mac(st.ingress));
                let spoofed = src.is_multicast()
                    || match own { Some(m) => src != m, None => (1..=3u8).any(|v| mac(v) == src) };
                if st.len < 14 {
                    prop_assert_eq!(verdict, Verdict::Drop(DropReason::Runt));
                }
                if spoofed {
                    prop_assert!(out.is_empty(), "spoofed frame forwarded: {:?}", st);
                }
                prop_assert!(!out.contains(&ingress));
                for v in 1..=3u8 {
                    let vif_dst = (1..=3u8).find(|&w| mac(w) == dst);
                    if let Some(w) = vif_dst {
                        if w != v {
                            prop_assert!(!out.contains(&port(v)), "vif {} got a frame for vif {}", v, w);
                        }
                    }
                }
                prop_assert!(s.switch_stats().learned <= 3);
                prop_assert_eq!(verdict == Verdict::Drop(DropReason::Spoofed), spoofed && st.len >= 14);
            }
        }

        /// Over any window, a port floods at most burst + rate * window.
        #[test]
        fn flooding_is_bounded(dts in proptest::collection::vec(0u64..20_000_000, 1..400)) {
            let cfg = Config { flood_rate: 50, flood_burst: 5, ..Config::default() };
            let mut s = Switch::new(cfg);
            s.add_port(PortId::Uplink, PortKind::Uplink).unwrap();
            s.add_port(PortId::Vif(1), PortKind::Vif { mac: mac(1) }).unwrap();
            s.add_port(PortId::Vif(2), PortKind::Vif { mac: mac(2) }).unwrap();
            let b = frame(MacAddr::BROADCAST, mac(1), 60);
            let mut out = Vec::new();
            let mut now = 0u64;
            let mut flooded = 0u64;
            for dt in dts {
                now += dt;
                if s.forward(now, PortId::Vif(1), &b, &mut out) == Verdict::Flood {
                    flooded += 1;
                }
                let bound = 5 + now * 50 / NS_PER_SEC;
                prop_assert!(flooded <= bound, "{} floods by {} ns > {}", flooded, now, bound);
            }
            prop_assert_eq!(s.stats(PortId::Vif(2)).unwrap().tx_frames, flooded);
        }
    }
}
