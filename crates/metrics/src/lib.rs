#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Ferrite's counters in the Prometheus text exposition format (version
//! 0.0.4), with no I/O: the integrator fills a [`Snapshot`] from what the
//! backends, the switch and the drivers count, and [`render`] turns it into
//! the text an HTTP `GET /metrics` answers with ([`CONTENT_TYPE`]).
//!
//! The format, as used here:
//! * each metric family starts with `# HELP <name> <text>` (in the text a
//!   backslash is written `\\` and a line feed `\n`) and
//!   `# TYPE <name> counter|gauge|histogram`, then its samples, one per
//!   line: `name{label="value",...} <value>`;
//! * label values escape backslash (`\\`), double quote (`\"`) and line
//!   feed (`\n`) — label values come from xenstore paths and MAC strings
//!   that a toolstack, not Ferrite, chose;
//! * a histogram `x` has cumulative `x_bucket{le="<bound>"}` samples ending
//!   with `le="+Inf"`, then `x_sum` and `x_count`; latencies are in seconds.
//!
//! Families with no samples (e.g. no vif connected) are still described,
//! so a scraper sees every metric name Ferrite has.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A fixed-bucket histogram of durations in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Upper bounds (inclusive, ns), ascending.
    pub bounds: Vec<u64>,
    /// Observations per bucket (not cumulative): `bounds.len() + 1`
    /// entries, the last for values above every bound. Missing entries
    /// count as zero, extra ones are added to the last bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations (ns).
    pub sum_ns: u64,
}

/// One vbd (a guest's virtual block device).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vbd {
    /// Its backend directory, e.g. `backend/vbd/3/51712`.
    pub name: String,
    /// Requests taken from its rings.
    pub requests: u64,
    /// Bytes read from the disk for it.
    pub read_bytes: u64,
    /// Bytes written to the disk for it.
    pub write_bytes: u64,
    /// Requests the disk failed or refused.
    pub errors: u64,
    /// Disk operations in flight now.
    pub in_flight: u64,
    /// Disk operations waiting for buffers or the disk queue now.
    pub queued: u64,
    /// Disk latency of its operations (submit to completion).
    pub latency: Histogram,
}

/// One vif (a guest's virtual network interface).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vif {
    /// Its backend directory, e.g. `backend/vif/3/0`.
    pub name: String,
    /// Its MAC, as the toolstack wrote it.
    pub mac: String,
    /// Whether it is connected.
    pub connected: bool,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Malformed packets the guest sent.
    pub tx_errors: u64,
    /// Packets the guest sent that were dropped.
    pub tx_drops: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Deliveries that failed on the guest's side.
    pub rx_errors: u64,
    /// Frames for the guest that were dropped.
    pub rx_drops: u64,
}

/// One NVMe controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nvme {
    /// Its name, e.g. `nvme0`.
    pub name: String,
    /// Controller resets.
    pub resets: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Completions naming no command (a broken device).
    pub spurious: u64,
}

/// The NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    /// Its name, e.g. `eth0`.
    pub name: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Received frames dropped.
    pub rx_drops: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames for the NIC that could not be sent.
    pub tx_drops: u64,
    /// Contract violations seen from the device.
    pub device_errors: u64,
}

/// The switch's drops, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchDrops {
    /// Forbidden source MAC.
    pub spoofed: u64,
    /// Shorter than an Ethernet header.
    pub runt: u64,
    /// Flood limit.
    pub flood: u64,
    /// Nowhere to go.
    pub no_egress: u64,
    /// Frames between a vif and Ferrite's own address, refused by policy.
    pub local_denied: u64,
}

/// Everything [`render`] writes, taken at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Served vbds.
    pub vbds: Vec<Vbd>,
    /// Known vifs.
    pub vifs: Vec<Vif>,
    /// NVMe controllers.
    pub nvme: Vec<Nvme>,
    /// The NIC, if any.
    pub nic: Option<Nic>,
    /// Switch drops.
    pub switch: SwitchDrops,
    /// Learned MACs in the switch.
    pub switch_learned: u64,
    /// Heap bytes in use.
    pub heap_used: u64,
}

/// Writes `s` with backslash, double quote and line feed escaped (a label
/// value).
pub fn escape_label(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `s` with backslash and line feed escaped (a HELP text).
pub fn escape_help(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `ns` nanoseconds as seconds, exactly (no floating point):
/// `1500000` → `0.0015`, `2000000000` → `2`.
pub fn write_secs(out: &mut String, ns: u64) {
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    let _ = write!(out, "{s}");
    if frac != 0 {
        let mut digits = [0u8; 9];
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let end = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        out.push('.');
        for &d in &digits[..end] {
            out.push(char::from(d));
        }
    }
}

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until Ferrite restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// Low-level writer of the text format.
#[derive(Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// The text so far.
    pub fn finish(self) -> String {
        self.out
    }

    /// `# HELP` and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = write!(self.out, "# HELP {name} ");
        escape_help(&mut self.out, help);
        let k = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "\n# TYPE {name} {k}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<u64>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label(&mut self.out, v);
            self.out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(',');
            }
            self.out.push_str("le=\"");
            if le == u64::MAX {
                self.out.push_str("+Inf");
            } else {
                write_secs(&mut self.out, le);
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One integer sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// The samples of histogram `name` (bounds and sum in ns, written in
    /// seconds).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let bucket = alloc::format!("{name}_bucket");
        for (i, &bound) in h.bounds.iter().enumerate() {
            cumulative = cumulative.saturating_add(h.counts.get(i).copied().unwrap_or(0));
            self.out.push_str(&bucket);
            self.labels(labels, Some(bound.min(u64::MAX - 1)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        for c in h.counts.iter().skip(h.bounds.len()) {
            cumulative = cumulative.saturating_add(*c);
        }
        self.out.push_str(&bucket);
        self.labels(labels, Some(u64::MAX));
        let _ = writeln!(self.out, " {cumulative}");
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        self.out.push(' ');
        write_secs(&mut self.out, h.sum_ns);
        self.out.push('\n');
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {cumulative}");
    }
}

/// A family of one sample per item, labelled by `label`.
fn each<T>(
    w: &mut Writer,
    items: &[T],
    name: &str,
    kind: Kind,
    help: &str,
    label: (&str, fn(&T) -> &str),
    value: fn(&T) -> u64,
) {
    w.family(name, kind, help);
    for it in items {
        w.sample(name, &[(label.0, label.1(it))], value(it));
    }
}

/// The whole exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    use Kind::{Counter, Gauge};
    let mut w = Writer::new();
    let vbd: (&str, fn(&Vbd) -> &str) = ("vbd", |v| v.name.as_str());
    let v = &s.vbds[..];
    each(&mut w, v, "ferrite_vbd_requests_total", Counter, "Requests taken from the vbd's rings.", vbd, |x| x.requests);
    each(&mut w, v, "ferrite_vbd_read_bytes_total", Counter, "Bytes read from the disk for the vbd.", vbd, |x| {
        x.read_bytes
    });
    each(&mut w, v, "ferrite_vbd_written_bytes_total", Counter, "Bytes written to the disk for the vbd.", vbd, |x| {
        x.write_bytes
    });
    each(&mut w, v, "ferrite_vbd_errors_total", Counter, "Disk operations of the vbd that failed.", vbd, |x| x.errors);
    each(&mut w, v, "ferrite_vbd_in_flight", Gauge, "Disk operations of the vbd in flight.", vbd, |x| x.in_flight);
    each(&mut w, v, "ferrite_vbd_queued", Gauge, "Disk operations of the vbd waiting to be submitted.", vbd, |x| {
        x.queued
    });
    let name = "ferrite_vbd_latency_seconds";
    w.family(name, Kind::Histogram, "Disk latency of the vbd's operations, submit to completion.");
    for x in v {
        w.histogram(name, &[("vbd", &x.name)], &x.latency);
    }

    let vif: (&str, fn(&Vif) -> &str) = ("vif", |v| v.name.as_str());
    let f = &s.vifs[..];
    w.family("ferrite_vif_info", Gauge, "A vif: its MAC, 1 while connected.");
    for x in f {
        w.sample("ferrite_vif_info", &[("vif", &x.name), ("mac", &x.mac)], u64::from(x.connected));
    }
    type Field = fn(&Vif) -> u64;
    let vif_counters: [(&str, &str, Field); 8] = [
        ("ferrite_vif_tx_packets_total", "Frames the guest sent.", |x| x.tx_packets),
        ("ferrite_vif_tx_bytes_total", "Bytes of the frames the guest sent.", |x| x.tx_bytes),
        ("ferrite_vif_tx_errors_total", "Malformed packets the guest sent.", |x| x.tx_errors),
        ("ferrite_vif_tx_drops_total", "Packets the guest sent that were dropped.", |x| x.tx_drops),
        ("ferrite_vif_rx_packets_total", "Frames delivered to the guest.", |x| x.rx_packets),
        ("ferrite_vif_rx_bytes_total", "Bytes of the frames delivered to the guest.", |x| x.rx_bytes),
        ("ferrite_vif_rx_errors_total", "Deliveries that failed on the guest's side.", |x| x.rx_errors),
        ("ferrite_vif_rx_drops_total", "Frames for the guest that were dropped.", |x| x.rx_drops),
    ];
    for (name, help, get) in vif_counters {
        each(&mut w, f, name, Counter, help, vif, get);
    }

    let ctl: (&str, fn(&Nvme) -> &str) = ("controller", |n| n.name.as_str());
    let n = &s.nvme[..];
    each(&mut w, n, "ferrite_nvme_resets_total", Counter, "NVMe controller resets.", ctl, |x| x.resets);
    each(&mut w, n, "ferrite_nvme_timeouts_total", Counter, "NVMe commands that timed out.", ctl, |x| x.timeouts);
    each(&mut w, n, "ferrite_nvme_errors_total", Counter, "NVMe completions naming no command.", ctl, |x| x.spurious);

    let nic: &[Nic] = s.nic.as_slice();
    let dev: (&str, fn(&Nic) -> &str) = ("device", |x| x.name.as_str());
    type NicField = fn(&Nic) -> u64;
    let nic_counters: [(&str, &str, NicField); 7] = [
        ("ferrite_nic_rx_packets_total", "Frames the NIC received.", |x| x.rx_packets),
        ("ferrite_nic_rx_bytes_total", "Bytes the NIC received.", |x| x.rx_bytes),
        ("ferrite_nic_rx_drops_total", "Received frames dropped.", |x| x.rx_drops),
        ("ferrite_nic_tx_packets_total", "Frames handed to the NIC.", |x| x.tx_packets),
        ("ferrite_nic_tx_bytes_total", "Bytes handed to the NIC.", |x| x.tx_bytes),
        ("ferrite_nic_tx_drops_total", "Frames for the NIC that could not be sent.", |x| x.tx_drops),
        ("ferrite_nic_device_errors_total", "Contract violations seen from the NIC.", |x| x.device_errors),
    ];
    for (name, help, get) in nic_counters {
        each(&mut w, nic, name, Counter, help, dev, get);
    }

    let name = "ferrite_switch_drops_total";
    w.family(name, Counter, "Frames the switch dropped, by reason.");
    let d = s.switch;
    for (reason, n) in [
        ("spoofed", d.spoofed),
        ("runt", d.runt),
        ("flood", d.flood),
        ("no_egress", d.no_egress),
        ("local_denied", d.local_denied),
    ] {
        w.sample(name, &[("reason", reason)], n);
    }
    w.family("ferrite_switch_learned_macs", Gauge, "MACs the switch learned on the uplink.");
    w.sample("ferrite_switch_learned_macs", &[], s.switch_learned);
    w.family("ferrite_heap_used_bytes", Gauge, "Heap bytes in use.");
    w.sample("ferrite_heap_used_bytes", &[], s.heap_used);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label(&mut s, "a\\b\"c\nd");
        assert_eq!(s, "a\\\\b\\\"c\\nd");
        let mut w = Writer::new();
        w.sample("x", &[("vbd", "evil\"} 1\nfake_metric 999")], 3);
        assert_eq!(w.finish(), "x{vbd=\"evil\\\"} 1\\nfake_metric 999\"} 3\n");
    }

    #[test]
    fn help_escapes_backslash_and_newline_only() {
        let mut w = Writer::new();
        w.family("m", Kind::Gauge, "a \"quoted\" \\ text\n# TYPE m counter");
        assert_eq!(w.finish(), "# HELP m a \"quoted\" \\\\ text\\n# TYPE m counter\n# TYPE m gauge\n");
    }

    #[test]
    fn seconds_are_exact() {
        let f = |ns| {
            let mut s = String::new();
            write_secs(&mut s, ns);
            s
        };
        assert_eq!(f(0), "0");
        assert_eq!(f(50_000), "0.00005");
        assert_eq!(f(1_500_000), "0.0015");
        assert_eq!(f(2_000_000_000), "2");
        assert_eq!(f(1), "0.000000001");
        assert_eq!(f(u64::MAX), "18446744073.709551615");
    }

    #[test]
    fn histogram_golden() {
        let h = Histogram { bounds: vec![100_000, 1_000_000], counts: vec![2, 1, 4], sum_ns: 3_250_000 };
        let mut w = Writer::new();
        w.histogram("lat", &[("vbd", "a")], &h);
        assert_eq!(
            w.finish(),
            "lat_bucket{vbd=\"a\",le=\"0.0001\"} 2\n\
             lat_bucket{vbd=\"a\",le=\"0.001\"} 3\n\
             lat_bucket{vbd=\"a\",le=\"+Inf\"} 7\n\
             lat_sum{vbd=\"a\"} 0.00325\n\
             lat_count{vbd=\"a\"} 7\n"
        );
        // Short counts are zeros; no labels, no braces except le.
        let h = Histogram { bounds: vec![1_000], counts: vec![], sum_ns: 0 };
        let mut w = Writer::new();
        w.histogram("h", &[], &h);
        assert_eq!(w.finish(), "h_bucket{le=\"0.000001\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            vbds: vec![Vbd {
                name: "backend/vbd/3/51712".to_string(),
                requests: 10,
                read_bytes: 4096,
                write_bytes: 8192,
                errors: 1,
                in_flight: 2,
                queued: 0,
                latency: Histogram { bounds: vec![1_000_000], counts: vec![9, 1], sum_ns: 5_000_000 },
            }],
            vifs: vec![Vif {
                name: "backend/vif/3/0".to_string(),
                mac: "00:16:3e:00:00:01".to_string(),
                connected: true,
                tx_packets: 5,
                rx_packets: 6,
                ..Vif::default()
            }],
            nvme: vec![Nvme { name: "nvme0".to_string(), resets: 1, ..Nvme::default() }],
            nic: Some(Nic { name: "eth0".to_string(), rx_packets: 7, ..Nic::default() }),
            switch: SwitchDrops { spoofed: 2, ..SwitchDrops::default() },
            switch_learned: 1,
            heap_used: 12345,
        }
    }

    #[test]
    fn snapshot_golden_excerpts() {
        let t = render(&snapshot());
        let expect = "# HELP ferrite_vbd_requests_total Requests taken from the vbd's rings.\n\
# TYPE ferrite_vbd_requests_total counter\n\
ferrite_vbd_requests_total{vbd=\"backend/vbd/3/51712\"} 10\n\
# HELP ferrite_vbd_read_bytes_total Bytes read from the disk for the vbd.\n\
# TYPE ferrite_vbd_read_bytes_total counter\n\
ferrite_vbd_read_bytes_total{vbd=\"backend/vbd/3/51712\"} 4096\n";
        assert!(t.starts_with(expect), "{t}");
        for line in [
            "ferrite_vbd_latency_seconds_bucket{vbd=\"backend/vbd/3/51712\",le=\"0.001\"} 9\n",
            "ferrite_vbd_latency_seconds_bucket{vbd=\"backend/vbd/3/51712\",le=\"+Inf\"} 10\n",
            "ferrite_vbd_latency_seconds_sum{vbd=\"backend/vbd/3/51712\"} 0.005\n",
            "ferrite_vbd_latency_seconds_count{vbd=\"backend/vbd/3/51712\"} 10\n",
            "# TYPE ferrite_vbd_latency_seconds histogram\n",
            "# TYPE ferrite_vbd_in_flight gauge\nferrite_vbd_in_flight{vbd=\"backend/vbd/3/51712\"} 2\n",
            "ferrite_vif_info{vif=\"backend/vif/3/0\",mac=\"00:16:3e:00:00:01\"} 1\n",
            "ferrite_vif_tx_packets_total{vif=\"backend/vif/3/0\"} 5\n",
            "ferrite_vif_rx_packets_total{vif=\"backend/vif/3/0\"} 6\n",
            "ferrite_nvme_resets_total{controller=\"nvme0\"} 1\n",
            "ferrite_nic_rx_packets_total{device=\"eth0\"} 7\n",
            "ferrite_switch_drops_total{reason=\"spoofed\"} 2\n",
            "ferrite_switch_drops_total{reason=\"local_denied\"} 0\n",
            "# TYPE ferrite_switch_learned_macs gauge\nferrite_switch_learned_macs 1\n",
            "ferrite_heap_used_bytes 12345\n",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
    }

    /// Every line is a comment or `name[{labels}] value`; every family is
    /// described once, before its samples; the text ends with a newline.
    #[test]
    fn well_formed_even_empty() {
        for s in [Snapshot::default(), snapshot()] {
            let t = render(&s);
            assert!(t.ends_with('\n'));
            let mut typed: Vec<String> = Vec::new();
            for line in t.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let name = rest.split(' ').next().unwrap().to_string();
                    assert!(!typed.contains(&name), "{name} typed twice");
                    typed.push(name);
                    continue;
                }
                if line.starts_with("# HELP ") {
                    continue;
                }
                let name_end = line.find(['{', ' ']).unwrap();
                let name = &line[..name_end];
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                let family = typed.last().expect("sample before any TYPE");
                assert!(name.starts_with(family.as_str()), "{name} outside {family}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        // No vbds: the families are still there.
        assert!(render(&Snapshot::default()).contains("# TYPE ferrite_vbd_latency_seconds histogram\n"));
    }
}
