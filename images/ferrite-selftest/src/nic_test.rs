//! PVH self-test of the virtio-net driver against QEMU's user-mode network
//! (slirp: gateway 10.0.2.2, our address 10.0.2.15): bring-up, an ARP
//! request answered by the gateway, an ICMP echo answered by it, the
//! offload contract (a partial checksum is refused when the device does
//! not do it), and every transmit buffer back.

use alloc::vec;
use alloc::vec::Vec;
use drivers::nic::{LinkStatus, Nic, NicError};
use drivers::pci::{BarKind, PciDevice};
use log::{error, info};
use net::{Csum, Frame, MacAddr, Meta};
use runtime::dev::{HalClock, HalDma, PortPci, Translation};
use virtio_net::{NetConfig, VirtioNet};

const OUR_IP: [u8; 4] = [10, 0, 2, 15];
const GW_IP: [u8; 4] = [10, 0, 2, 2];

type PvhNet = VirtioNet<runtime::virtio::Hal, virtio_drivers::transport::pci::PciTransport>;

fn up(bdf: (u8, u8, u8)) -> Option<PvhNet> {
    let mut pci = PortPci::new(bdf.0, bdf.1, bdf.2);
    let mut i = 0u8;
    while i < 6 {
        let bar = pci.bar(i);
        if let Some(b) = bar {
            if b.kind != BarKind::Io && b.base != 0 {
                if b.base + b.size > 0x1_0000_0000 {
                    error!("virtio-net: BAR{i} at {:#x} is above the 4 GiB identity map", b.base);
                    return None;
                }
                info!("virtio-net: BAR{i} {:#x} ({} KiB)", b.base, b.size / 1024);
                runtime::virtio::register_bar(b.base, runtime::dev::mmio_identity(b.base, b.size as usize));
            }
        }
        i += if matches!(bar, Some(b) if b.kind == BarKind::Mem64) { 2 } else { 1 };
    }
    pci.enable_memory_and_bus_master();
    runtime::virtio::install_dma(HalDma::new(Translation::Identity));
    let transport = match virtio_net::pci_transport::<runtime::virtio::Hal, _>(pci) {
        Ok(t) => t,
        Err(e) => {
            error!("virtio-net: transport: {e:?}");
            return None;
        }
    };
    match VirtioNet::new(transport, NetConfig::default(), &HalClock) {
        Ok(n) => Some(n),
        Err(e) => {
            error!("virtio-net: bring-up: {e:?}");
            None
        }
    }
}

fn eth(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

fn arp_request(mac: MacAddr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&mac.0);
    a.extend_from_slice(&OUR_IP);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&GW_IP);
    eth(MacAddr::BROADCAST, mac, 0x0806, &a)
}

/// The gateway's MAC if `f` is its ARP reply to us.
fn arp_reply(f: &[u8], mac: MacAddr) -> Option<MacAddr> {
    let a = f.get(14..42)?;
    let ok = f.get(12..14)? == [8, 6]
        && a[6..8] == [0, 2]
        && a[14..18] == GW_IP
        && a[18..24] == mac.0
        && a[24..28] == OUR_IP
        && f.get(0..6)? == mac.0;
    ok.then(|| MacAddr([a[8], a[9], a[10], a[11], a[12], a[13]]))
}

fn csum16(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4(proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&OUR_IP);
    ip.extend_from_slice(&GW_IP);
    let c = csum16(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn icmp_echo(mac: MacAddr, gw: MacAddr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x46, 0x45];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"ferrite virtio-net echo payload!");
    let c = csum16(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    eth(gw, mac, 0x0800, &ipv4(1, seq, &icmp))
}

fn is_echo_reply(f: &[u8], mac: MacAddr, seq: u16) -> bool {
    let ok = || -> Option<bool> {
        let ip = f.get(14..34)?;
        let icmp = f.get(34..)?;
        Some(
            f.get(0..6)? == mac.0
                && f.get(12..14)? == [8, 0]
                && ip[9] == 1
                && ip[12..16] == GW_IP
                && ip[16..20] == OUR_IP
                && icmp.first()? == &0
                && icmp.get(4..6)? == [0x46, 0x45]
                && icmp.get(6..8)? == seq.to_be_bytes()
                && icmp.get(8..40)? == b"ferrite virtio-net echo payload!",
        )
    };
    ok().unwrap_or(false)
}

/// Polls the NIC until `want` matches a received frame or `ms` pass.
fn wait_for<N: Nic>(nic: &mut N, ms: u64, mut want: impl FnMut(&Frame) -> bool) -> (bool, usize) {
    let deadline = runtime::time::now() + ms * 1_000_000;
    let mut seen = 0;
    let mut got = Vec::new();
    while runtime::time::now() < deadline {
        got.clear();
        nic.reclaim();
        seen += nic.receive(&mut got, 32);
        if got.iter().any(&mut want) {
            return (true, seen);
        }
    }
    (false, seen)
}

/// Runs the test on the virtio-net function at `bdf`; true if it passed.
pub fn run(bdf: (u8, u8, u8)) -> bool {
    let t0 = runtime::time::now();
    let Some(mut nic) = up(bdf) else { return false };
    let mac = nic.mac();
    let o = nic.offloads();
    info!(
        "virtio-net up in {} ms: MAC {mac}, features {:#x}, {} queue pair(s), offloads tx-csum {} tso4 {} tso6 {} rx-csum {}, link {:?}",
        (runtime::time::now() - t0) / 1_000_000,
        nic.features(),
        nic.queue_pairs(),
        o.tx_csum,
        o.tso4,
        o.tso6,
        o.rx_csum,
        nic.link()
    );
    let mut ok = true;
    let link = nic.link();
    if link == LinkStatus::Down {
        error!("virtio-net: link down");
        ok = false;
    }
    // The offload contract: a frame with a blank checksum goes out only if
    // the device completes it.
    let partial = Frame { data: vec![0; 60], meta: Meta { csum: Csum::Partial { start: 34, offset: 6 }, gso: None } };
    let refused = nic.transmit(&partial) == Err(NicError::Unsupported);
    if refused == o.tx_csum {
        error!(
            "virtio-net: partial-checksum frame {} with tx-csum {}",
            if refused { "refused" } else { "accepted" },
            o.tx_csum
        );
        ok = false;
    }
    // ARP: who has 10.0.2.2?
    let t = runtime::time::now();
    if let Err(e) = nic.transmit(&Frame::plain(arp_request(mac))) {
        error!("virtio-net: ARP transmit: {e:?}");
        return false;
    }
    let mut gw = None;
    let (found, seen) = wait_for(&mut nic, 3000, |f| {
        gw = gw.or(arp_reply(&f.data, mac));
        gw.is_some()
    });
    let Some(gw) = gw.filter(|_| found) else {
        error!("virtio-net: no ARP reply from 10.0.2.2 within 3 s ({seen} frame(s) received)");
        return false;
    };
    info!("virtio-net: ARP reply: 10.0.2.2 is at {gw} ({} us)", (runtime::time::now() - t) / 1000);
    // ICMP echo to the gateway, three times.
    let mut replies = 0;
    for seq in 1..=3u16 {
        let t = runtime::time::now();
        if let Err(e) = nic.transmit(&Frame::plain(icmp_echo(mac, gw, seq))) {
            error!("virtio-net: echo transmit: {e:?}");
            ok = false;
            continue;
        }
        let (found, _) = wait_for(&mut nic, 3000, |f| is_echo_reply(&f.data, mac, seq));
        if found {
            replies += 1;
            info!("virtio-net: echo reply seq {seq} from 10.0.2.2 in {} us", (runtime::time::now() - t) / 1000);
        } else {
            error!("virtio-net: no echo reply seq {seq} within 3 s");
        }
    }
    if replies != 3 {
        ok = false;
    }
    // Everything sent comes back to us.
    nic.reclaim();
    let s = nic.stats();
    info!(
        "virtio-net stats: tx {} frames {} bytes, completed {}, rx {} frames {} bytes, dropped {}, device errors {}, in flight {}",
        s.tx_frames,
        s.tx_bytes,
        s.tx_completed,
        s.rx_frames,
        s.rx_bytes,
        s.rx_dropped,
        s.device_errors,
        nic.tx_in_flight()
    );
    if let Some((h, regions, shares)) = runtime::virtio::stats() {
        info!(
            "virtio hal: {} allocs, {} shares, {} unshares, {} failures; {regions} regions, {shares} buffers shared",
            h.allocs, h.shares, h.unshares, h.failures
        );
        if h.failures != 0 {
            ok = false;
        }
    }
    if nic.tx_in_flight() != 0 || s.tx_completed != s.tx_frames || s.device_errors != 0 || nic.is_broken() {
        error!("virtio-net: transmit buffers not all back, or device errors");
        ok = false;
    }
    ok
}
