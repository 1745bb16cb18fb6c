//! Drives the real netback through the simulated netfront and toolstack
//! (`netback::testing`) with an operation sequence decoded from the input:
//! connects with odd queue counts, split or shared event channels and
//! feature sets; well-formed and raw tx slots, bogus `req_prod` values;
//! rx buffers (some naming bogus grants) and deliveries of plain, partial
//! and GSO frames; control-ring requests of any type; frontend state changes, detach, directory removal,
//! rescans and the passing of time.
//!
//! Checked after every operation: nothing panics; the backend never
//! answers more than was published nor writes the frontend's header fields
//! (`xen_ring::mock::FrontRing`); rx responses name posted ids, write
//! nothing past their size and never cut a packet (`Netfront::take_rx`);
//! frames taken from the guest are at most 64 KiB with offload offsets
//! inside them; rx backlogs stay bounded; mappings stay at two per queue plus the control ring. At the end, closing the
//! vif gives every grant back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::{Csum, Frame, Gso, GsoKind, Meta};
use netback::abi::{CtrlRequest, ExtraInfo, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED};
use netback::testing::{tcp4, tcp6, udp4, world, FrontOpts, TxPkt, World};
use netback::NetConfig;

const MAX_OPS: usize = 32;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fn check(w: &mut World, max_queues: u32) {
    for (_, f) in w.got.drain(..) {
        assert!(f.data.len() <= net::MAX_FRAME);
        if let Csum::Partial { start, offset } = f.meta.csum {
            assert!(usize::from(start) + usize::from(offset) + 2 <= f.data.len());
        }
        assert!(f.meta.gso.is_none() || matches!(f.meta.csum, Csum::Partial { .. }));
    }
    let fr = &mut w.fronts[0];
    let _ = fr.ctrl_take();
    if let Some((r, _)) = fr.ctrl.as_ref() {
        r.check_frontend_fields();
    }
    for q in 0..fr.queues.len() {
        let _ = fr.take_tx(q);
        fr.queues[q].tx.check_frontend_fields();
        let _ = fr.take_rx(q);
        fr.queues[q].rx.check_frontend_fields();
    }
    assert!(w.nb.mappings() <= 2 * max_queues as usize + 1);
    assert!(w.nb.backlog() <= netback::RX_BACKLOG_FRAMES * max_queues as usize);
    assert!(w.nb.vifs().count() <= 1);
}

fn frame(b: &mut Bytes) -> Frame {
    let len = usize::from(b.u16()) % 20000;
    let fill = b.u8();
    let payload = vec![fill; len];
    let mut data = match b.u8() % 4 {
        0 => tcp4(&payload),
        1 => tcp6(&payload),
        2 => udp4(&payload[..len.min(1400)]),
        _ => payload.clone(),
    };
    let sel = b.u8();
    let mut meta = Meta::default();
    if sel & 1 != 0 {
        if let Ok(c) = net::csum::prepare_partial(&mut data) {
            meta.csum = c;
            if sel & 2 != 0 {
                let kind = if sel & 4 == 0 { GsoKind::TcpV4 } else { GsoKind::TcpV6 };
                meta.gso = Some(Gso { kind, mss: b.u16().max(88) });
            }
        }
    } else if sel & 8 != 0 {
        meta.csum = Csum::Validated;
    }
    data.truncate(net::MAX_FRAME);
    Frame { data, meta }
}

fuzz_target!(|data: &[u8]| {
    if std::env::var_os("NETBACK_FUZZ_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Off);
    }
    let mut b = Bytes(data);
    let max_queues = u32::from(b.u8() % 4) + 1;
    let mut w = world(NetConfig { max_queues }, &[5]);
    let rate = match b.u8() % 4 {
        0 => Some("20000,1000"),
        1 => Some("garbage"),
        _ => None,
    };
    w.attach(0, rate);
    for _ in 0..MAX_OPS {
        if b.0.is_empty() {
            break;
        }
        match b.u8() % 13 {
            0 => {
                let sel = b.u8();
                let o = FrontOpts {
                    queues: u32::from(b.u8() % 5) + 1,
                    split: sel & 1 != 0,
                    sg: sel & 2 != 0,
                    gso_v4: sel & 4 != 0,
                    gso_v6: sel & 8 != 0,
                    csum_v4: sel & 16 != 0,
                    csum_v6: sel & 32 != 0,
                    rx_copy: if sel & 64 == 0 { Some("1") } else { None },
                    ctrl: sel & 128 != 0,
                };
                w.connect(0, o);
            }
            1 | 2 => {
                // A packet, well-formed or bent.
                if w.fronts[0].queues.is_empty() {
                    continue;
                }
                let q = usize::from(b.u8()) % w.fronts[0].queues.len();
                let f = frame(&mut b);
                let sel = b.u8();
                let mut pkt = TxPkt::new(f.data.clone());
                let nfr = usize::from(b.u8() % 20);
                if nfr > 0 {
                    let mut left = f.data.len();
                    let mut frags = Vec::new();
                    for i in 0..nfr {
                        let n = if i + 1 == nfr { left } else { (usize::from(b.u16()) % 4097).min(left) };
                        frags.push(n);
                        left -= n;
                    }
                    pkt.frags = frags;
                }
                if sel & 1 != 0 {
                    pkt.flags |= NETTXF_CSUM_BLANK;
                }
                if sel & 2 != 0 {
                    pkt.flags |= NETTXF_DATA_VALIDATED;
                }
                if sel & 4 != 0 {
                    pkt.extras.push(ExtraInfo { ty: b.u8() % 6, flags: 0, u: [b.u8(), b.u8(), b.u8() % 4, 0, 0, 0] });
                }
                if sel & 8 != 0 {
                    pkt.offset = b.u16() % 4200;
                }
                if sel & 16 != 0 {
                    pkt.size = Some(b.u16());
                }
                let slots = w.fronts[0].tx_slots(q, &pkt);
                let free = w.fronts[0].queues[q].tx.free_slots() as usize;
                w.fronts[0].push_slots(q, &slots[..slots.len().min(free)]);
                if sel & 32 == 0 {
                    w.fronts[0].publish_tx(q);
                }
            }
            3 => {
                // Raw slot bytes.
                if w.fronts[0].queues.is_empty() {
                    continue;
                }
                let q = usize::from(b.u8()) % w.fronts[0].queues.len();
                let mut s = [0u8; 12];
                for x in s.iter_mut() {
                    *x = b.u8();
                }
                let n = usize::from(w.fronts[0].queues[q].tx.free_slots() > 0);
                w.fronts[0].push_slots(q, &[s][..n]);
                w.fronts[0].publish_tx(q);
            }
            4 => {
                // A bogus tx producer.
                if w.fronts[0].queues.is_empty() {
                    continue;
                }
                let q = usize::from(b.u8()) % w.fronts[0].queues.len();
                let v = w.fronts[0].queues[q].tx.rsp_cons().wrapping_add(b.u32() % 600);
                w.fronts[0].queues[q].tx.poke_req_prod(v);
            }
            5 => {
                if w.fronts[0].queues.is_empty() {
                    continue;
                }
                let q = usize::from(b.u8()) % w.fronts[0].queues.len();
                let n = usize::from(b.u8() % 24);
                let n = n.min(w.fronts[0].queues[q].rx.free_slots() as usize);
                if b.u8() & 7 == 0 {
                    w.fronts[0].post_rx_raw(q, u32::from(b.u16()));
                } else {
                    w.fronts[0].post_rx(q, n);
                }
            }
            6 | 7 => {
                let f = frame(&mut b);
                if w.info(0).is_some() {
                    let _ = w.deliver(0, &f);
                }
            }
            8 => {
                let s = match b.u8() % 10 {
                    9 => "x".to_string(),
                    n => n.to_string(),
                };
                w.fe_write(0, "state", &s);
            }
            9 => {
                let p = format!("{}/online", w.fronts[0].be_dir());
                w.xsd.external_write(&p, b"0");
            }
            10 => {
                let f = &w.fronts[0];
                let p = if b.u8() & 1 == 0 { f.fe_dir() } else { f.be_dir() };
                if w.xsd.value(&p).is_some() {
                    w.xsd.external_rm(&p);
                }
            }
            12 => {
                // A control request, any type and arguments (grants ours or not).
                if w.fronts[0].ctrl.as_ref().is_some_and(|(r, _)| r.free_slots() > 0) {
                    let ty = u16::from(b.u8() % 9);
                    let gref = if b.u8() & 1 == 0 {
                        let bytes: Vec<u8> = (0..64).map(|_| b.u8() % 4).collect();
                        w.fronts[0].grant_page(&bytes, 0, 0, true).gref.0
                    } else {
                        b.u32()
                    };
                    let data = [if ty == 3 || ty == 6 { gref } else { b.u32() % 4 }, b.u32() % 200, b.u32() % 200];
                    w.fronts[0].ctrl_send(&CtrlRequest { id: b.u16(), ty, data });
                }
            }
            _ => {
                w.advance(u64::from(b.u8()) * 1_000_000);
                w.nb.maintenance(&mut w.xs, &mut w.g, &mut w.e);
                if b.u8() & 1 == 1 {
                    w.nb.request_rescan();
                }
            }
        }
        assert!(w.pump(), "backend busy forever");
        check(&mut w, max_queues);
    }
    w.fe_write(0, "state", "5");
    assert!(w.pump());
    w.fe_write(0, "state", "6");
    assert!(w.pump());
    check(&mut w, max_queues);
    if w.info(0).map_or(true, |v| !v.connected) {
        assert_eq!(w.nb.mappings(), 0);
        assert_eq!(w.nb.backlog(), 0);
        let f = &mut w.fronts[0];
        let grants: Vec<u32> = f.granted.iter().copied().collect();
        for g in grants {
            f.end(xen::types::GrantRef(g));
        }
    }
});
