//! The control ring's protocol core: hash algorithm, hash types, key and
//! mapping table a frontend sets to steer received packets to its queues
//! (netif.h "Control messages"), and the Toeplitz hash.
//!
//! A request that names a grant (the key, a mapping sub-table) is answered
//! after its bytes were fetched by the shell; everything is checked against
//! our limits ([`MAX_KEY`], [`MAX_MAPPING`]) and the queue count.

use crate::abi::*;
use alloc::vec;
use alloc::vec::Vec;
use net::packet::{self, L4};

/// Largest key we keep (bytes; Linux's `XEN_NETBK_MAX_HASH_KEY_SIZE`).
pub const MAX_KEY: usize = 40;
/// Largest mapping table (entries; Linux's `XEN_NETBK_MAX_HASH_MAPPING_SIZE`).
pub const MAX_MAPPING: usize = 128;
/// Hash types we compute.
pub const SUPPORTED_FLAGS: u32 = XEN_NETIF_CTRL_HASH_TYPE_IPV4
    | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
    | XEN_NETIF_CTRL_HASH_TYPE_IPV6
    | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP;

/// The Toeplitz hash of `buf` under `key` (missing key bytes are zero):
/// for each bit of `buf`, MSB first, XOR in the 32 key bits starting at
/// that bit position when it is set.
pub fn toeplitz(key: &[u8], buf: &[u8]) -> u32 {
    let kb = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    // A 64-bit window on the key: its top 32 bits are the key bits at the
    // current position.
    let mut window = (0..8).fold(0u64, |w, i| (w << 8) | kb(i));
    let mut hash = 0u64;
    for (i, &byte) in buf.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window <<= 1;
        }
        window |= kb(i + 8);
    }
    (hash >> 32) as u32
}

/// A grant to fetch before a request can be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The grant (data starts at its beginning).
    pub gref: u32,
    /// Bytes wanted (at most a page).
    pub len: usize,
}

/// One vif's hash settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashState {
    alg: u32,
    flags: u32,
    key: Vec<u8>,
    mapping: Vec<u32>,
}

fn rsp(req: &CtrlRequest, status: u32, data: u32) -> CtrlResponse {
    CtrlResponse { id: req.id, ty: req.ty, status, data }
}

impl HashState {
    /// What must be fetched for `req` (a key or a mapping sub-table), if
    /// anything and if its size is acceptable.
    pub fn fetch_for(&self, req: &CtrlRequest) -> Option<Fetch> {
        match req.ty {
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY if (1..=MAX_KEY as u32).contains(&req.data[1]) => {
                Some(Fetch { gref: req.data[0], len: req.data[1] as usize })
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING if self.mapping_args_ok(req) => {
                Some(Fetch { gref: req.data[0], len: req.data[1] as usize * 4 })
            }
            _ => None,
        }
    }

    fn mapping_args_ok(&self, req: &CtrlRequest) -> bool {
        let (len, off) = (req.data[1] as usize, req.data[2] as usize);
        len > 0 && len * 4 <= 4096 && off.checked_add(len).is_some_and(|end| end <= self.mapping.len())
    }

    /// Answers `req`; `fetched` holds the bytes of [`fetch_for`](Self::fetch_for)'s
    /// grant (`None` if the copy failed or nothing was needed); `queues` is
    /// the number of connected queues.
    pub fn handle(&mut self, req: &CtrlRequest, fetched: Option<&[u8]>, queues: usize) -> CtrlResponse {
        let ok = XEN_NETIF_CTRL_STATUS_SUCCESS;
        let inval = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;
        let toeplitz = self.alg == XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
        match req.ty {
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => match req.data[0] {
                a @ (XEN_NETIF_CTRL_HASH_ALGORITHM_NONE | XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ) => {
                    self.alg = a;
                    rsp(req, ok, 0)
                }
                _ => rsp(req, inval, 0),
            },
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS if toeplitz => rsp(req, ok, SUPPORTED_FLAGS),
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS if toeplitz => {
                if req.data[0] & !SUPPORTED_FLAGS != 0 {
                    return rsp(req, inval, 0);
                }
                self.flags = req.data[0];
                rsp(req, ok, 0)
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY if toeplitz => {
                let len = req.data[1] as usize;
                if len > MAX_KEY {
                    return rsp(req, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, 0);
                }
                if len == 0 {
                    self.key.clear();
                    return rsp(req, ok, 0);
                }
                match fetched {
                    Some(k) if k.len() == len => {
                        self.key = k.to_vec();
                        rsp(req, ok, 0)
                    }
                    _ => rsp(req, inval, 0),
                }
            }
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => rsp(req, ok, MAX_MAPPING as u32),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => {
                let n = req.data[0] as usize;
                if n > MAX_MAPPING {
                    return rsp(req, inval, 0);
                }
                self.mapping = vec![0; n];
                rsp(req, ok, 0)
            }
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => {
                let (len, off) = (req.data[1] as usize, req.data[2] as usize);
                if len * 4 > 4096 {
                    return rsp(req, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, 0);
                }
                if !self.mapping_args_ok(req) {
                    return rsp(req, inval, 0);
                }
                let Some(b) = fetched.filter(|b| b.len() == len * 4) else { return rsp(req, inval, 0) };
                let entries: Vec<u32> =
                    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                // Every entry must name a queue we have: the table is only
                // written when all do.
                if entries.iter().any(|&q| q as usize >= queues) {
                    return rsp(req, inval, 0);
                }
                self.mapping[off..off + len].copy_from_slice(&entries);
                rsp(req, ok, 0)
            }
            _ => rsp(req, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, 0),
        }
    }

    /// The queue the frontend wants `frame` on, if it set up hashing and
    /// the frame is of a type it hashes.
    pub fn queue_for(&self, frame: &[u8], queues: usize) -> Option<usize> {
        if self.alg != XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ || self.flags == 0 || queues == 0 {
            return None;
        }
        let h = packet::parse(frame).ok();
        let (l3_off, v6, tcp) = match h {
            Some(h) => (h.l3_off, h.is_v6(), matches!(h.l4, L4::Tcp { .. }).then_some(h.l4_off)),
            None => return None,
        };
        let mut buf = Vec::with_capacity(36);
        let addrs = if v6 { frame.get(l3_off + 8..l3_off + 40)? } else { frame.get(l3_off + 12..l3_off + 20)? };
        let (addr_flag, tcp_flag) = if v6 {
            (XEN_NETIF_CTRL_HASH_TYPE_IPV6, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP)
        } else {
            (XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP)
        };
        buf.extend_from_slice(addrs);
        // The maximal type the frontend asked for.
        match tcp {
            Some(l4) if self.flags & tcp_flag != 0 => buf.extend_from_slice(frame.get(l4..l4 + 4)?),
            _ if self.flags & addr_flag != 0 => {}
            _ => return None,
        }
        let hash = toeplitz(&self.key, &buf);
        let q = if self.mapping.is_empty() {
            hash as usize % queues
        } else {
            self.mapping[hash as usize % self.mapping.len()] as usize
        };
        (q < queues).then_some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key and values of Microsoft's "Verifying the RSS Hash
    /// Calculation" (source 66.9.149.187:2794, destination
    /// 161.142.100.80:1766).
    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn toeplitz_known_values() {
        let addrs = [66, 9, 149, 187, 161, 142, 100, 80];
        assert_eq!(toeplitz(&KEY, &addrs), 0x323e_8fc2);
        let mut with_ports = addrs.to_vec();
        with_ports.extend_from_slice(&2794u16.to_be_bytes());
        with_ports.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&KEY, &with_ports), 0x51cc_c178);
        assert_eq!(toeplitz(&[], &with_ports), 0);
    }

    fn req(ty: u16, data: [u32; 3]) -> CtrlRequest {
        CtrlRequest { id: 1, ty, data }
    }

    #[test]
    fn messages_checked() {
        let mut h = HashState::default();
        let st = |r: CtrlResponse| r.status;
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0; 3]), None, 4)), 1, "no algorithm yet");
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [9, 0, 0]), None, 4)), 2);
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [1, 0, 0]), None, 4)), 0);
        assert_eq!(h.handle(&req(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0; 3]), None, 4).data, SUPPORTED_FLAGS);
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [1 << 4, 0, 0]), None, 4)), 2);
        let key = req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [5, 41, 0]);
        assert_eq!(h.fetch_for(&key), None);
        assert_eq!(st(h.handle(&key, None, 4)), 3);
        let key = req(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [5, 40, 0]);
        assert_eq!(h.fetch_for(&key), Some(Fetch { gref: 5, len: 40 }));
        assert_eq!(st(h.handle(&key, None, 4)), 2, "fetch failed");
        assert_eq!(st(h.handle(&key, Some(&KEY), 4)), 0);
        // Mapping: size first, then entries within it naming real queues.
        let map = req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [6, 2, 0]);
        assert_eq!(h.fetch_for(&map), None, "no table yet");
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [129, 0, 0]), None, 4)), 2);
        assert_eq!(st(h.handle(&req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [2, 0, 0]), None, 4)), 0);
        assert_eq!(h.fetch_for(&map), Some(Fetch { gref: 6, len: 8 }));
        assert_eq!(st(h.handle(&map, Some(&[3, 0, 0, 0, 4, 0, 0, 0]), 4)), 2, "queue 4 of 4");
        assert_eq!(st(h.handle(&map, Some(&[3, 0, 0, 0, 1, 0, 0, 0]), 4)), 0);
        let off = req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [6, 2, u32::MAX]);
        assert_eq!(st(h.handle(&off, Some(&[0; 8]), 4)), 2, "offset past the table");
        assert_eq!(st(h.handle(&req(99, [0; 3]), None, 4)), 1);
    }
}
