//! Property tests through the real backend: any packet cut into any legal
//! fragments arrives whole; any frame delivered arrives whole (or
//! segmented to the same payload).

use net::{Frame, Gso, GsoKind, Meta};
use netback::testing::{tcp4, tcp6, udp4, world, FrontOpts, TxPkt};
use netback::NetConfig;
use proptest::prelude::*;

fn cut(len: usize, cuts: &[usize]) -> Vec<usize> {
    // Fragments of at most a page, split where `cuts` say.
    let mut out = Vec::new();
    let mut left = len;
    for &c in cuts {
        if left == 0 {
            break;
        }
        let n = (c % 4097).min(left);
        out.push(n);
        left -= n;
    }
    while left > 0 {
        let n = left.min(4096);
        out.push(n);
        left -= n;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tx_any_fragmentation(kind in 0u8..3, len in 0usize..30000, cuts in proptest::collection::vec(0usize..5000, 0..17), off in 0u16..64) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        let frame = match kind { 0 => tcp4(&payload), 1 => tcp6(&payload), _ => udp4(&payload[..len.min(1400)]) };
        let mut frags = cut(frame.len(), &cuts);
        // Keep to 18 slots and to the page with the offset.
        prop_assume!(frags.len() <= 18);
        if frags.iter().any(|&f| f + usize::from(off) > 4096) {
            frags = cut(frame.len(), &[]).into_iter().flat_map(|f| if f + usize::from(off) > 4096 { vec![f / 2, f - f / 2] } else { vec![f] }).collect();
        }
        prop_assume!(frags.len() <= 18);
        let mut w = world(NetConfig::default(), &[5]);
        w.attach(0, None);
        w.connect(0, FrontOpts::default());
        let rsp = w.send(0, 0, &TxPkt { offset: off, ..TxPkt::new(frame.clone()).frags(&frags) });
        prop_assert!(rsp.iter().all(|r| r.status == 0), "{:?}", rsp);
        prop_assert_eq!(w.got.len(), 1);
        prop_assert_eq!(&w.got[0].1.data, &frame);
    }

    #[test]
    fn rx_any_frame(v6 in any::<bool>(), len in 1usize..40000, mss in 536u16..9000, gso in any::<bool>(), sg in any::<bool>(), guest_gso in any::<bool>()) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mut data = if v6 { tcp6(&payload) } else { tcp4(&payload) };
        let mut meta = Meta::default();
        if gso {
            meta.csum = net::csum::prepare_partial(&mut data).unwrap();
            meta.gso = Some(Gso { kind: if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 }, mss });
        }
        let frame = Frame { data, meta };
        let mut w = world(NetConfig::default(), &[5]);
        w.attach(0, None);
        w.connect(0, FrontOpts { sg, gso_v4: guest_gso, gso_v6: guest_gso, ..Default::default() });
        w.fronts[0].post_rx(0, 200);
        let r = w.deliver(0, &frame);
        let got = w.received(0);
        let hlen = if v6 { 74 } else { 54 };
        // Without sg, every frame (or segment) must fit one page.
        let largest = if gso { usize::from(mss).min(len) + hlen } else { frame.data.len() };
        if !sg && largest > 4096 {
            prop_assert!(r.is_err());
            prop_assert!(got.is_empty());
        } else {
            prop_assert_eq!(r, Ok(()));
            let back: Vec<u8> = got.iter().flat_map(|p| p.data[hlen..].to_vec()).collect();
            prop_assert_eq!(back, payload);
            for p in &got {
                prop_assert!(!p.error);
                if p.gso.is_none() && p.flags & netback::abi::NETRXF_CSUM_BLANK == 0 {
                    prop_assert!(net::csum::l4_csum_ok(&p.data));
                }
            }
        }
    }
}
