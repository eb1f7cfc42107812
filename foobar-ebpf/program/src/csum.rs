//! Internet checksums (RFC 1071) over native 16-bit loads. The one's-complement sum does not
//! depend on byte order, so a sum of natively loaded words, folded and stored natively, is the
//! right network-order checksum. Every loop has a constant bound.

use crate::parse::Ipv4Hdr;
use foobar_common::Addr;

/// Adds `N` 16-bit words to `sum`.
#[inline(always)]
pub fn add_words<const N: usize>(sum: u32, words: &[u16; N]) -> u32 {
    words.iter().fold(sum, |s, w| s + *w as u32)
}

/// Adds an address (as stored in maps and headers) to `sum`.
#[inline(always)]
pub fn add_addr(sum: u32, addr: &Addr) -> u32 {
    addr.iter().fold(sum, |s, w| s + (w & 0xffff) + (w >> 16))
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
    let mut sum = (h.ver_ihl as u32) | (h.tos as u32) << 8;
    sum += h.tot_len as u32 + h.id as u32 + h.frag_off as u32;
    sum += (h.ttl as u32) | (h.proto as u32) << 8;
    sum += (h.src & 0xffff) + (h.src >> 16) + (h.dst & 0xffff) + (h.dst >> 16);
    finish(sum)
}
