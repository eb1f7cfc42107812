//! Internet checksums (RFC 1071) over fixed-size data, so every loop has a constant bound.

use crate::parse::Ipv4Hdr;

/// Adds `bytes` as big-endian 16-bit words to `sum`.
#[inline(always)]
pub fn add_bytes<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    if N % 2 == 1 {
        sum += (bytes[N - 1] as u32) << 8;
    }
    sum
}

/// Adds the `N` bytes at `p` (inside the packet, bounds already checked) to `sum`.
#[inline(always)]
pub fn add_packet_bytes<const N: usize>(mut sum: u32, p: *const [u8; N]) -> u32 {
    let p = p as *const [u8; 2];
    let mut i = 0;
    while i < N / 2 {
        let word = unsafe { core::ptr::read_unaligned(p.add(i)) };
        sum += u16::from_be_bytes(word) as u32;
        i += 1;
    }
    sum
}

/// Folds a 32-bit sum to 16 bits and complements it.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of an IPv4 header without options (its `check` field must be zero).
#[inline(always)]
pub fn ipv4_header(h: &Ipv4Hdr) -> u16 {
    let mut sum = ((h.ver_ihl as u32) << 8) | h.tos as u32;
    sum += u16::from_be_bytes(h.tot_len) as u32;
    sum += u16::from_be_bytes(h.id) as u32;
    sum += u16::from_be_bytes(h.frag_off) as u32;
    sum += ((h.ttl as u32) << 8) | h.proto as u32;
    sum = add_bytes(sum, &h.src);
    sum = add_bytes(sum, &h.dst);
    finish(sum)
}
