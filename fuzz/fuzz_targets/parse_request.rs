//! Fuzzes request validation: one ring slot (either ABI) plus the bytes of
//! an indirect page. `cargo fuzz run parse_request` from the repository root (see run.sh).
#![no_main]

use blkback::abi::{Abi, RawRequest, MAX_REQUEST_SIZE};
use blkback::request::{parse, parse_indirect_segments, Request};
use blkback::{DiscardInfo, DiskInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let abi = if sel & 1 == 0 { Abi::X86_64 } else { Abi::X86_32 };
    let mut bytes = [0u8; MAX_REQUEST_SIZE];
    let n = rest.len().min(abi.request_size());
    bytes[..n].copy_from_slice(&rest[..n]);
    let page = &rest[n..];
    let disk = DiskInfo {
        sectors: if sel & 2 == 0 { 1 << 20 } else { u64::MAX },
        sector_size: if sel & 4 == 0 { 512 } else { 4096 },
        physical_sector_size: 4096,
        readonly: sel & 8 != 0,
        removable: false,
        cdrom: false,
        flush: sel & 16 != 0,
        barrier: sel & 32 != 0,
        discard: (sel & 64 != 0).then_some(DiscardInfo { granularity: 4096, alignment: 0, secure: sel & 128 != 0 }),
    };
    let raw = RawRequest { abi, bytes };
    match parse(&raw, &disk) {
        Ok(Request::Indirect(ind)) => {
            if let Ok(segs) = parse_indirect_segments(&ind, &[page], &disk) {
                assert_eq!(segs.len(), usize::from(ind.nr_segments));
                let total: u64 = segs.iter().map(|s| s.sectors()).sum();
                assert!(ind.sector + total <= disk.sectors);
                assert!(segs.iter().all(|s| s.offset() + s.len() <= 4096));
            }
        }
        Ok(req) => assert_eq!(req.id(), raw.id()),
        Err(rej) => assert_eq!(rej.id, raw.id()),
    }
});
