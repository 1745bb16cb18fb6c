//! Hostile argument bytes for every sub-op: `decode` must never panic, and
//! whatever it accepts must re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_iommu_abi::{decode, Op};

fuzz_target!(|data: &[u8]| {
    let Some((head, arg)) = data.split_first_chunk::<4>() else { return };
    let subop = u32::from_le_bytes(*head) % 16;
    let Ok(op) = decode(subop, arg) else { return };
    let (enc, n): ([u8; 40], usize) = match op {
        Op::Init(x) => pad(&x.to_bytes()),
        Op::AllocContext(x) => pad(&x.to_bytes()),
        Op::FreeContext(x) => pad(&x.to_bytes()),
        Op::ReattachDevice(x) => pad(&x.to_bytes()),
        Op::MapPages(x) => pad(&x.to_bytes()),
        Op::UnmapPages(x) => pad(&x.to_bytes()),
        Op::RemoteCmd(x) => pad(&x.to_bytes()),
        Op::Noop | Op::QueryCapabilities | Op::Unsupported(_) => return,
    };
    assert_eq!(&enc[..n], &arg[..n]);
});

fn pad(b: &[u8]) -> ([u8; 40], usize) {
    let mut out = [0u8; 40];
    out[..b.len()].copy_from_slice(b);
    (out, b.len())
}
