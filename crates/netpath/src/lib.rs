#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Ferrite's network path: every frame a guest sends through its vif
//! ([`netback::Netback::poll`]) goes to the L2 [`Switch`], which decides
//! whether it reaches other vifs ([`netback::Netback::deliver`]) or the NIC
//! (the uplink); every frame the NIC receives goes through the switch too.
//!
//! * Switch ports follow netback: a vif gets a port with the MAC its `mac`
//!   node names once it connects (a vif without a valid MAC gets no port
//!   and can send nothing), and loses it when it disconnects. Frames whose
//!   source MAC is not their vif's are dropped by the switch (anti-spoofing).
//! * Guest-to-guest frames never touch the NIC; netback completes or
//!   segments offloads the receiving frontend did not negotiate.
//! * Frames to the NIC: offloads the device does not do are done here in
//!   software first (TCP segmentation, then checksum completion); a frame
//!   that still cannot be sent (queue full after a reclaim, or refused) is
//!   dropped and counted: nothing waits for the device.
//! * Work per [`Fabric::poll`] is bounded: netback's own per-queue budget
//!   for guest frames, [`NIC_BUDGET`] received frames.
//! * Ferrite's own address ([`local`], off unless configured) sits on the
//!   switch's `Local` port. Only the uplink reaches it: frames between a
//!   vif and the `Local` port are dropped (and counted in
//!   [`PathStats::local_denied`]) unless [`LocalConfig::vifs`] allows them.

extern crate alloc;

pub mod http;
pub mod local;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::nic::{Nic, NicError, NicStats};
use local::{Local, LocalConfig, LocalPoll};
use log::{info, warn};
use net::switch::{Config, PortId, PortKind, Switch, SwitchError, SwitchStats, Verdict};
use net::{Frame, MacAddr};
use netback::{Netback, VifId};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames};
use xen::shmem::SharedMem;

/// Frames taken from the NIC per poll.
pub const NIC_BUDGET: usize = 64;

/// Counters of the path (the switch and netback keep their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Frames guests sent that the switch forwarded somewhere.
    pub from_vifs: u64,
    /// Frames received from the NIC.
    pub from_nic: u64,
    /// Frames handed to the NIC (after software segmentation).
    pub to_nic: u64,
    /// Frames for the NIC dropped: queue full, refused, or an offload that
    /// could not be done in software.
    pub nic_drops: u64,
    /// Frames segmented in software for the NIC.
    pub sw_segmented: u64,
    /// Frames whose checksum was completed in software for the NIC.
    pub sw_csum: u64,
    /// Deliveries to a vif that netback dropped (its counters say why).
    pub vif_drops: u64,
    /// Frames the switch dropped (spoofed, runt, flood limit, no egress).
    pub switch_drops: u64,
    /// Frames between a vif and Ferrite's own address that the policy
    /// refused (vifs may not reach it unless configured).
    pub local_denied: u64,
}

/// The switch, the NIC (if Ferrite has one) and the glue to netback.
pub struct Fabric<N: Nic> {
    switch: Switch,
    nic: Option<N>,
    /// netback's generation the switch ports were last synced to.
    synced: Option<u64>,
    /// Vif ports attached now, with their MACs.
    attached: Vec<(VifId, MacAddr)>,
    frames: Vec<(VifId, Frame)>,
    rx: Vec<Frame>,
    out: Vec<PortId>,
    /// Ferrite's own stack, when configured.
    local: Option<Local>,
    /// Counters.
    pub stats: PathStats,
}

impl<N: Nic> Fabric<N> {
    /// A path with `nic` as the uplink (or none: vifs then only reach each
    /// other).
    pub fn new(cfg: Config, nic: Option<N>) -> Self {
        let mut switch = Switch::new(cfg);
        if nic.is_some() {
            // The switch is empty: adding the first port cannot fail.
            let _ = switch.add_port(PortId::Uplink, PortKind::Uplink);
        }
        Fabric {
            switch,
            nic,
            synced: None,
            attached: Vec::new(),
            frames: Vec::new(),
            rx: Vec::new(),
            out: Vec::new(),
            local: None,
            stats: PathStats::default(),
        }
    }

    /// Puts Ferrite's own stack on the switch's `Local` port, with the MAC
    /// [`local::local_mac`] derives from the NIC's; `now` (ns) seeds it.
    pub fn enable_local(&mut self, cfg: LocalConfig, now: u64) -> Result<MacAddr, SwitchError> {
        let mac = local::local_mac(self.nic.as_ref().map(|n| n.mac()));
        self.switch.add_port(PortId::Local, PortKind::Local { mac })?;
        self.local = Some(Local::new(cfg, mac, now));
        Ok(mac)
    }

    /// Ferrite's own stack, if configured.
    pub fn local(&self) -> Option<&Local> {
        self.local.as_ref()
    }

    /// One round of Ferrite's own stack (after [`Fabric::poll`]); its
    /// frames enter the switch at the next [`Fabric::poll`]. When it says
    /// `wants_metrics`, give the text to [`Fabric::answer_local`].
    pub fn poll_local(&mut self, now: u64) -> LocalPoll {
        self.local.as_mut().map(|l| l.poll(now)).unwrap_or_default()
    }

    /// Answers the connections waiting for the metrics text.
    pub fn answer_local(&mut self, body: &str, now: u64) {
        if let Some(l) = self.local.as_mut() {
            l.answer(body, now);
        }
    }

    /// The NIC, if any.
    pub fn nic(&self) -> Option<&N> {
        self.nic.as_ref()
    }

    /// The NIC, if any.
    pub fn nic_mut(&mut self) -> Option<&mut N> {
        self.nic.as_mut()
    }

    /// The NIC's counters, if there is one.
    pub fn nic_stats(&self) -> Option<NicStats> {
        self.nic.as_ref().map(|n| n.stats())
    }

    /// The switch's counters.
    pub fn switch_stats(&self) -> SwitchStats {
        self.switch.switch_stats()
    }

    /// The switch (read-only: ports and their counters).
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Vif ports attached now.
    pub fn attached(&self) -> &[(VifId, MacAddr)] {
        &self.attached
    }

    /// Whether anything can arrive without an event channel telling us (the
    /// NIC is polled): the caller should not sleep long while this holds.
    pub fn wants_polling(&self) -> bool {
        self.nic.is_some() && !self.attached.is_empty()
    }

    /// Whether Ferrite's own stack waits on the polled NIC: the caller
    /// should not sleep longer than a few milliseconds then (a scraper's
    /// request waits that long; it is not worth waking up every
    /// millisecond for while no guest is connected).
    pub fn local_wants_polling(&self) -> bool {
        self.nic.is_some() && self.local.is_some()
    }

    /// Attaches connected vifs to the switch and detaches the others, when
    /// netback's generation moved.
    fn sync<P: SharedMem, B>(&mut self, nb: &Netback<P, B>)
    where
        B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
    {
        if self.synced == Some(nb.generation()) {
            return;
        }
        self.synced = Some(nb.generation());
        let want: Vec<(VifId, Option<MacAddr>, String)> =
            nb.vifs().filter(|v| v.connected).map(|v| (v.id, v.mac, v.be)).collect();
        let mut keep = Vec::new();
        for &(id, mac) in &self.attached {
            if want.iter().any(|w| w.0 == id && w.1 == Some(mac)) {
                keep.push((id, mac));
            } else {
                self.switch.remove_port(PortId::Vif(id.0));
                info!("switch: vif {} detached ({mac})", id.0);
            }
        }
        self.attached = keep;
        for (id, mac, be) in want {
            if self.attached.iter().any(|a| a.0 == id) {
                continue;
            }
            let Some(mac) = mac else {
                warn!("switch: {be} has no valid mac node: it gets no port and cannot send");
                continue;
            };
            match self.switch.add_port(PortId::Vif(id.0), PortKind::Vif { mac }) {
                Ok(()) => {
                    info!("switch: {be} attached as vif {} ({mac})", id.0);
                    self.attached.push((id, mac));
                }
                Err(e) => warn!("switch: {be} ({mac}) not attached: {e:?}"),
            }
        }
    }

    /// One round: guests' frames switched, the NIC's transmit buffers
    /// reclaimed and its received frames switched. Returns whether there
    /// may be more to do at once.
    pub fn poll<P, B, G, E>(&mut self, nb: &mut Netback<P, B>, g: &mut G, e: &mut E) -> bool
    where
        P: SharedMem,
        B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
        G: GrantOps<Page = P>,
        E: EventOps,
    {
        self.sync(nb);
        let mut busy = nb.poll(g, e, &mut self.frames);
        // A vif may have connected or gone during the poll.
        self.sync(nb);
        let now = e.now();
        let mut frames = core::mem::take(&mut self.frames);
        for (vif, frame) in frames.drain(..) {
            self.switch_one(nb, g, e, now, PortId::Vif(vif.0), &frame);
        }
        self.frames = frames;
        if let Some(nic) = self.nic.as_mut() {
            nic.reclaim();
            let n = nic.receive(&mut self.rx, NIC_BUDGET);
            busy |= n >= NIC_BUDGET;
            let mut rx = core::mem::take(&mut self.rx);
            for frame in rx.drain(..) {
                self.stats.from_nic += 1;
                self.switch_one(nb, g, e, now, PortId::Uplink, &frame);
            }
            self.rx = rx;
        }
        // Bounded: the local stack queues at most local::TX_QUEUE frames.
        while let Some(frame) = self.local.as_mut().and_then(|l| l.pop_tx()) {
            self.switch_one(nb, g, e, now, PortId::Local, &frame);
        }
        busy
    }

    fn switch_one<P, B, G, E>(
        &mut self,
        nb: &mut Netback<P, B>,
        g: &mut G,
        e: &mut E,
        now: u64,
        ingress: PortId,
        frame: &Frame,
    ) where
        P: SharedMem,
        B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
        G: GrantOps<Page = P>,
        E: EventOps,
    {
        let mut out = core::mem::take(&mut self.out);
        match self.switch.forward(now, ingress, frame, &mut out) {
            Verdict::Drop(_) => self.stats.switch_drops += 1,
            Verdict::Unicast | Verdict::Flood => {
                if matches!(ingress, PortId::Vif(_)) {
                    self.stats.from_vifs += 1;
                }
                let vifs_allowed = self.local.as_ref().is_some_and(|l| l.config().vifs);
                for &port in &out {
                    let vif_local =
                        matches!((ingress, port), (PortId::Vif(_), PortId::Local) | (PortId::Local, PortId::Vif(_)));
                    if vif_local && !vifs_allowed {
                        self.stats.local_denied += 1;
                        continue;
                    }
                    match port {
                        PortId::Vif(id) => {
                            if nb.deliver(g, e, VifId(id), frame).is_err() {
                                self.stats.vif_drops += 1;
                            }
                        }
                        PortId::Uplink => self.send_to_nic(frame),
                        PortId::Local => {
                            if let Some(l) = self.local.as_mut() {
                                l.push_rx(frame);
                            }
                        }
                    }
                }
            }
        }
        self.out = out;
    }

    /// Hands `frame` to the NIC, doing in software what it cannot.
    fn send_to_nic(&mut self, frame: &Frame) {
        let Some(nic) = self.nic.as_mut() else { return };
        let o = nic.offloads();
        let segments = match frame.meta.gso {
            Some(gso) if !(o.tso4 && gso.kind == net::GsoKind::TcpV4 || o.tso6 && gso.kind == net::GsoKind::TcpV6) => {
                match net::segment(frame) {
                    Ok(s) => {
                        self.stats.sw_segmented += 1;
                        s
                    }
                    Err(_) => {
                        self.stats.nic_drops += 1;
                        return;
                    }
                }
            }
            _ => alloc::vec![frame.clone()],
        };
        for mut f in segments {
            if matches!(f.meta.csum, net::Csum::Partial { .. }) && !o.tx_csum {
                if net::complete_csum(&mut f).is_err() {
                    self.stats.nic_drops += 1;
                    continue;
                }
                self.stats.sw_csum += 1;
            }
            let sent = match nic.transmit(&f) {
                Err(NicError::Full) => {
                    nic.reclaim();
                    nic.transmit(&f)
                }
                r => r,
            };
            match sent {
                Ok(()) => self.stats.to_nic += 1,
                Err(_) => self.stats.nic_drops += 1,
            }
        }
    }

    /// `data/ferrite/net`: a first line of `key=value` gauges and counters
    /// (`vifs`, `queues`, `grant-maps` come back to their baseline once the
    /// guests are gone), then one line per vif, `vif <domid>/<devid> ...`.
    pub fn describe<P: SharedMem, B>(&self, nb: &Netback<P, B>) -> String
    where
        B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
    {
        let connected: Vec<_> = nb.vifs().filter(|v| v.connected).collect();
        let queues: usize = connected.iter().map(|v| v.queues).sum();
        // Switch-wide totals: they keep the counts of vifs that are gone.
        let t = self.switch.totals();
        let (spoof, runt, flood, no_egress) = (t.drop_spoofed, t.drop_runt, t.drop_flood, t.drop_no_egress);
        let p = &self.stats;
        let mut s = format!(
            "vifs={} queues={queues} grant-maps={} ports={} learned={} drops-spoof={spoof} drops-runt={runt} drops-flood={flood} drops-no-egress={no_egress} from-vifs={} from-nic={} to-nic={} nic-drops={} vif-drops={} sw-segmented={} sw-csum={}",
            connected.len(),
            nb.mappings(),
            self.attached.len() + usize::from(self.nic.is_some()) + usize::from(self.local.is_some()),
            self.switch.switch_stats().learned,
            p.from_vifs,
            p.from_nic,
            p.to_nic,
            p.nic_drops,
            p.vif_drops,
            p.sw_segmented,
            p.sw_csum
        );
        for v in nb.vifs() {
            let st = v.stats;
            let mac = v.mac.map(|m| format!("{m}")).unwrap_or_else(|| String::from("none"));
            let name = v.be.strip_prefix("backend/vif/").unwrap_or(&v.be);
            s.push_str(&format!(
                "\nvif {name} mac={mac} connected={} queues={} tx-packets={} tx-bytes={} tx-errors={} tx-drops={} rx-packets={} rx-bytes={} rx-errors={} rx-drops={}",
                u8::from(v.connected),
                v.queues,
                st.tx_packets,
                st.tx_bytes,
                st.tx_errors,
                st.tx_drops,
                st.rx_packets,
                st.rx_bytes,
                st.rx_errors,
                st.rx_drops
            ));
        }
        s
    }

    /// Fills the network part of a metrics snapshot: every vif, the NIC
    /// (as `eth0`) and the switch's drops.
    pub fn fill_metrics<P: SharedMem, B>(&self, nb: &Netback<P, B>, snap: &mut metrics::Snapshot)
    where
        B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
    {
        for v in nb.vifs() {
            let st = v.stats;
            snap.vifs.push(metrics::Vif {
                name: v.be.clone(),
                mac: v.mac.map(|m| format!("{m}")).unwrap_or_default(),
                connected: v.connected,
                tx_packets: st.tx_packets,
                tx_bytes: st.tx_bytes,
                tx_errors: st.tx_errors,
                tx_drops: st.tx_drops,
                rx_packets: st.rx_packets,
                rx_bytes: st.rx_bytes,
                rx_errors: st.rx_errors,
                rx_drops: st.rx_drops,
            });
        }
        if let Some(st) = self.nic_stats() {
            snap.nic = Some(metrics::Nic {
                name: String::from("eth0"),
                rx_packets: st.rx_frames,
                rx_bytes: st.rx_bytes,
                rx_drops: st.rx_dropped,
                tx_packets: st.tx_frames,
                tx_bytes: st.tx_bytes,
                tx_drops: self.stats.nic_drops,
                device_errors: st.device_errors,
            });
        }
        let d = &mut snap.switch;
        // Prometheus counters must never go backwards: totals over every
        // port the switch ever had.
        let t = self.switch.totals();
        d.spoofed = t.drop_spoofed;
        d.runt = t.drop_runt;
        d.flood = t.drop_flood;
        d.no_egress = t.drop_no_egress;
        d.local_denied = self.stats.local_denied;
        snap.switch_learned = self.switch.switch_stats().learned as u64;
    }

    /// `data/ferrite/nic`: one line for the NIC, `eth0 pci=<addr> ...`, or
    /// `None` without one.
    pub fn describe_nic(&mut self, pci: &str, kind: &str) -> Option<String> {
        let n = self.nic.as_mut()?;
        let link = match n.link() {
            drivers::nic::LinkStatus::Up => "up",
            drivers::nic::LinkStatus::Down => "down",
            drivers::nic::LinkStatus::Unknown => "unknown",
        };
        let (st, o) = (n.stats(), n.offloads());
        Some(format!(
            "eth0 pci={pci} kind={kind} mac={} link={link} queue-pairs={} tx-csum={} tso4={} tso6={} rx-csum={} tx-packets={} tx-bytes={} rx-packets={} rx-bytes={} rx-dropped={} device-errors={}",
            n.mac(),
            n.queue_pairs(),
            u8::from(o.tx_csum),
            u8::from(o.tso4),
            u8::from(o.tso6),
            u8::from(o.rx_csum),
            st.tx_frames,
            st.tx_bytes,
            st.rx_frames,
            st.rx_bytes,
            st.rx_dropped,
            st.device_errors
        ))
    }
}
