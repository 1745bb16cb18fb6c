//! Test frames with right checksums.

use net::csum::{fill_ipv4_csum, fill_l4_csum};
use net::packet::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP};
use std::vec::Vec;

fn eth(ty: u16) -> Vec<u8> {
    let mut d = std::vec![0x00, 0x16, 0x3e, 0, 0, 2, 0x00, 0x16, 0x3e, 0, 0, 1];
    d.extend_from_slice(&ty.to_be_bytes());
    d
}

fn v4(d: &mut Vec<u8>, proto: u8, l4_len: usize) {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    fill_ipv4_csum(&mut ip);
    d.extend_from_slice(&ip);
}

fn v6(d: &mut Vec<u8>, proto: u8, l4_len: usize) {
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    ip[6] = proto;
    ip[7] = 64;
    ip[8] = 0xfd;
    ip[23] = 1;
    ip[24] = 0xfd;
    ip[39] = 2;
    d.extend_from_slice(&ip);
}

fn tcp(d: &mut Vec<u8>, payload: &[u8]) {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5001u16.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    d.extend_from_slice(&t);
    d.extend_from_slice(payload);
}

fn udp(d: &mut Vec<u8>, payload: &[u8]) {
    let mut u = [0u8; 8];
    u[0..2].copy_from_slice(&5353u16.to_be_bytes());
    u[2..4].copy_from_slice(&5354u16.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&u);
    d.extend_from_slice(payload);
}

/// Ethernet + IPv4 + TCP with `payload`, checksums right.
pub fn tcp4(payload: &[u8]) -> Vec<u8> {
    let mut d = eth(ETH_P_IPV4);
    v4(&mut d, IPPROTO_TCP, 20 + payload.len());
    tcp(&mut d, payload);
    fill_l4_csum(&mut d).expect("test frame parses");
    d
}

/// Ethernet + IPv6 + TCP with `payload`, checksum right.
pub fn tcp6(payload: &[u8]) -> Vec<u8> {
    let mut d = eth(ETH_P_IPV6);
    v6(&mut d, IPPROTO_TCP, 20 + payload.len());
    tcp(&mut d, payload);
    fill_l4_csum(&mut d).expect("test frame parses");
    d
}

/// Ethernet + IPv4 + UDP with `payload`, checksums right.
pub fn udp4(payload: &[u8]) -> Vec<u8> {
    let mut d = eth(ETH_P_IPV4);
    v4(&mut d, IPPROTO_UDP, 8 + payload.len());
    udp(&mut d, payload);
    fill_l4_csum(&mut d).expect("test frame parses");
    d
}

/// Ethernet + IPv6 + UDP with `payload`, checksum right.
pub fn udp6(payload: &[u8]) -> Vec<u8> {
    let mut d = eth(ETH_P_IPV6);
    v6(&mut d, IPPROTO_UDP, 8 + payload.len());
    udp(&mut d, payload);
    fill_l4_csum(&mut d).expect("test frame parses");
    d
}
