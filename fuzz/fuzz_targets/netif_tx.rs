//! Fuzzes the netif transmit parser: a sequence of tx slots (raw bytes)
//! delimited, validated and turned into a frame over fuzzed packet bytes,
//! then through checksum completion and software segmentation.
//! `cargo fuzz run netif_tx` from the repository root (see run.sh).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::Csum;
use netback::abi::TxSlot;
use netback::tx::{answers, finish, plan, scan, Scan, MAX_DATA_SLOTS, MAX_PACKET_SLOTS};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n) % (MAX_PACKET_SLOTS + 4);
    let mut slots: Vec<TxSlot> = Vec::new();
    let mut it = rest.chunks_exact(12);
    for c in it.by_ref().take(n) {
        let mut s = [0u8; 12];
        s.copy_from_slice(c);
        slots.push(s);
    }
    let payload: Vec<u8> = it.flat_map(|c| c.iter().copied()).collect();
    match scan(&slots) {
        Scan::Incomplete | Scan::Fatal => {}
        Scan::Complete(k) => {
            assert!(k >= 1 && k <= slots.len() && k <= MAX_PACKET_SLOTS);
            let pkt = &slots[..k];
            assert_eq!(answers(pkt).len(), k, "one answer per slot");
            if let Ok(p) = plan(pkt) {
                assert!(p.frags.len() <= MAX_DATA_SLOTS);
                let total: usize = p.frags.iter().map(|f| usize::from(f.len)).sum();
                assert_eq!(total, usize::from(p.len), "fragments add up to the packet");
                assert!(p.frags.iter().all(|f| f.len > 0 && usize::from(f.offset) + usize::from(f.len) <= 4096));
                let mut bytes = payload.clone();
                bytes.resize(usize::from(p.len), 0);
                if let Ok(mut frame) = finish(&p, bytes) {
                    assert_eq!(frame.data.len(), usize::from(p.len));
                    if let Csum::Partial { start, offset } = frame.meta.csum {
                        assert!(usize::from(start) + usize::from(offset) + 2 <= frame.data.len());
                    }
                    if frame.meta.gso.is_some() {
                        assert!(matches!(frame.meta.csum, Csum::Partial { .. }));
                        let segs = net::segment(&frame).expect("a validated GSO frame segments");
                        assert!(segs.iter().all(|s| net::csum::l4_csum_ok(&s.data)));
                    }
                    net::complete_csum(&mut frame).expect("validated offsets complete");
                }
            }
        }
    }
});
