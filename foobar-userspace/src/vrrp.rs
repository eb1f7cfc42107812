//! VRRPv3 advertisements (RFC 5798, as updated by RFC 9568): encoding, decoding and the
//! message-level checks every received advert must pass, each failure a distinct, countable
//! reason. The election state machine builds on this.
//!
//! Checksums: IPv6 always covers a pseudo-header. For IPv4, RFC 5798 is read two ways; keepalived
//! (2.2.7, the peer our users run) includes the pseudo-header (source, destination, zero, 112,
//! length) and treats a message-only checksum as invalid, so foobar sends whichever convention
//! is configured and accepts both.

use std::net::IpAddr;

pub mod election;
pub mod gratuitous;
pub mod instance;
pub mod socket;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// TTL / hop limit every VRRP packet must carry.
pub const VRRP_TTL: u8 = 255;
/// Length of the fixed VRRP header.
const HEADER_LEN: usize = 8;

/// How an IPv4 advert's checksum is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv4Checksum {
    /// Over a pseudo-header and the message (keepalived's convention; the default).
    PseudoHeader,
    /// Over the message only.
    MessageOnly,
}

/// A VRRPv3 advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id (1..=255).
    pub vrid: u8,
    /// Priority: 255 owner, 1..=254 backup, 0 master stepping down.
    pub priority: u8,
    /// Maximum advertisement interval in centiseconds (12 bits, > 0).
    pub interval_cs: u16,
    /// The virtual addresses, all of the family the packet travels in.
    pub addresses: Vec<IpAddr>,
}

/// Why a received advert was discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Discard {
    /// Shorter than its header or than its address count says.
    Truncated,
    /// Version is not 3.
    Version,
    /// Type is not 1 (advertisement).
    Type,
    /// TTL / hop limit is not 255: it crossed a router.
    Ttl,
    /// The checksum matches neither convention.
    Checksum,
    /// Maximum advertisement interval of zero.
    IntervalZero,
    /// An address family other than the packet's, or no addresses.
    Addresses,
    /// For another virtual router on this link.
    Vrid,
    /// Its address list differs from ours (a misconfigured peer).
    AddressMismatch,
    /// In unicast mode, from a source that is not a configured peer.
    UnknownPeer,
}

impl Discard {
    /// Every reason, for counters.
    pub const ALL: [Discard; 10] = [
        Discard::Truncated,
        Discard::Version,
        Discard::Type,
        Discard::Ttl,
        Discard::Checksum,
        Discard::IntervalZero,
        Discard::Addresses,
        Discard::Vrid,
        Discard::AddressMismatch,
        Discard::UnknownPeer,
    ];

    /// Stable snake_case name, for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Discard::Truncated => "truncated",
            Discard::Version => "version",
            Discard::Type => "type",
            Discard::Ttl => "ttl",
            Discard::Checksum => "checksum",
            Discard::IntervalZero => "interval_zero",
            Discard::Addresses => "addresses",
            Discard::Vrid => "vrid",
            Discard::AddressMismatch => "address_mismatch",
            Discard::UnknownPeer => "unknown_peer",
        }
    }
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `sum`.
pub(crate) fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        sum += u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u32;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits and complements it.
pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `message` (checksum field zero or not: it is skipped) sent from `src` to `dst`.
fn checksum(message: &[u8], src: IpAddr, dst: IpAddr, pseudo: bool) -> u16 {
    let mut sum = 0;
    if pseudo {
        sum = sum_words(sum, &octets(&src));
        sum = sum_words(sum, &octets(&dst));
        sum += message.len() as u32 + IPPROTO_VRRP as u32;
    }
    sum = sum_words(sum, &message[..6]);
    sum = sum_words(sum, &message[8..]);
    fold(sum)
}

impl Advert {
    /// The VRRP message (without IP header) sent from `src` to `dst` (the multicast group or a
    /// unicast peer).
    pub fn encode(&self, src: IpAddr, dst: IpAddr, v4: Ipv4Checksum) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEADER_LEN + self.addresses.len() * 16);
        m.push(0x31); // version 3, type 1
        m.push(self.vrid);
        m.push(self.priority);
        m.push(self.addresses.len() as u8);
        m.extend_from_slice(&(self.interval_cs & 0x0fff).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        for addr in &self.addresses {
            m.extend_from_slice(&octets(addr));
        }
        seal(&mut m, src, dst, v4);
        m
    }

    /// Decodes and checks a received message: `ttl` is the IP TTL / hop limit, `src` and `dst`
    /// the packet's addresses. Returns the advert and the IPv4 checksum convention it used.
    pub fn decode(message: &[u8], ttl: u8, src: IpAddr, dst: IpAddr) -> Result<(Advert, Ipv4Checksum), Discard> {
        if ttl != VRRP_TTL {
            return Err(Discard::Ttl);
        }
        if message.len() < HEADER_LEN {
            return Err(Discard::Truncated);
        }
        if message[0] >> 4 != 3 {
            return Err(Discard::Version);
        }
        if message[0] & 0x0f != 1 {
            return Err(Discard::Type);
        }
        let count = message[3] as usize;
        let width = if src.is_ipv4() { 4 } else { 16 };
        if message.len() < HEADER_LEN + count * width {
            return Err(Discard::Truncated);
        }
        let message = &message[..HEADER_LEN + count * width];
        let received = u16::from_be_bytes([message[6], message[7]]);
        let convention = if checksum(message, src, dst, true) == received {
            Ipv4Checksum::PseudoHeader
        } else if src.is_ipv4() && checksum(message, src, dst, false) == received {
            Ipv4Checksum::MessageOnly
        } else {
            return Err(Discard::Checksum);
        };
        let interval_cs = u16::from_be_bytes([message[4], message[5]]) & 0x0fff;
        if interval_cs == 0 {
            return Err(Discard::IntervalZero);
        }
        if count == 0 || src.is_ipv4() != dst.is_ipv4() {
            return Err(Discard::Addresses);
        }
        let addresses = message[HEADER_LEN..]
            .chunks_exact(width)
            .map(|a| {
                let mut v6 = [0u8; 16];
                if width == 4 {
                    IpAddr::from([a[0], a[1], a[2], a[3]])
                } else {
                    v6.copy_from_slice(a);
                    IpAddr::from(v6)
                }
            })
            .collect();
        Ok((
            Advert {
                vrid: message[1],
                priority: message[2],
                interval_cs,
                addresses,
            },
            convention,
        ))
    }
}

/// Writes the checksum of a VRRP message (at least 8 bytes) sent from `src` to `dst`; IPv6
/// always uses the pseudo-header.
pub fn seal(message: &mut [u8], src: IpAddr, dst: IpAddr, v4: Ipv4Checksum) {
    let pseudo = src.is_ipv6() || v4 == Ipv4Checksum::PseudoHeader;
    let sum = checksum(message, src, dst, pseudo);
    message[6..8].copy_from_slice(&sum.to_be_bytes());
}

/// Skew_Time in centiseconds: ((256 − priority) × interval) / 256 (RFC 5798 §6.1).
pub fn skew_time_cs(priority: u8, interval_cs: u16) -> u32 {
    ((256 - priority as u32) * interval_cs as u32) / 256
}

/// Master_Down_Interval in centiseconds: 3 × interval + Skew_Time, with the master's advertised
/// interval and this node's priority.
pub fn master_down_interval_cs(priority: u8, master_interval_cs: u16) -> u32 {
    3 * master_interval_cs as u32 + skew_time_cs(priority, master_interval_cs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            interval_cs: 10,
            addresses: vec![ip("192.0.2.10")],
        }
    }

    #[test]
    fn round_trip_with_both_ipv4_conventions() {
        let (src, dst) = (ip("10.0.0.1"), ip("224.0.0.18"));
        for conv in [Ipv4Checksum::PseudoHeader, Ipv4Checksum::MessageOnly] {
            let m = advert().encode(src, dst, conv);
            assert_eq!(Advert::decode(&m, 255, src, dst), Ok((advert(), conv)));
        }
    }

    #[test]
    fn keepalived_style_checksum_by_hand() {
        // Version/type 0x31, VRID 51, priority 150, 1 address, interval 10 cs, 192.0.2.10,
        // from 10.0.0.1 to 224.0.0.18: pseudo-header words then message words.
        let m = advert().encode(ip("10.0.0.1"), ip("224.0.0.18"), Ipv4Checksum::PseudoHeader);
        let words: [u32; 12] = [
            0x0a00,
            0x0001,
            0xe000,
            0x0012,
            12 + 112,
            0x3133,
            0x9601,
            0x000a,
            0x0000,
            0xc000,
            0x020a,
            0,
        ];
        let mut sum: u32 = words.iter().sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), !(sum as u16));
        assert_eq!(m.len(), 12);
    }

    #[test]
    fn ipv6_round_trip_needs_the_pseudo_header() {
        let (src, dst) = (ip("fe80::1"), ip("ff02::12"));
        let a = Advert {
            vrid: 7,
            priority: 100,
            interval_cs: 100,
            addresses: vec![ip("2001:db8::10")],
        };
        let m = a.encode(src, dst, Ipv4Checksum::MessageOnly);
        assert_eq!(Advert::decode(&m, 255, src, dst), Ok((a, Ipv4Checksum::PseudoHeader)));
        // The same bytes from another source fail: the pseudo-header binds the addresses.
        assert_eq!(Advert::decode(&m, 255, ip("fe80::2"), dst), Err(Discard::Checksum));
    }

    #[test]
    fn hostile_adverts_are_discarded_with_their_reason() {
        let (src, dst) = (ip("10.0.0.1"), ip("224.0.0.18"));
        let good = advert().encode(src, dst, Ipv4Checksum::PseudoHeader);
        let reseal = |mut m: Vec<u8>| {
            seal(&mut m, src, dst, Ipv4Checksum::PseudoHeader);
            m
        };
        assert_eq!(Advert::decode(&good, 64, src, dst), Err(Discard::Ttl));
        for len in 0..good.len() {
            assert_eq!(
                Advert::decode(&good[..len], 255, src, dst),
                Err(Discard::Truncated),
                "len {len}"
            );
        }
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(Advert::decode(&reseal(v2), 255, src, dst), Err(Discard::Version));
        let mut t2 = good.clone();
        t2[0] = 0x32;
        assert_eq!(Advert::decode(&reseal(t2), 255, src, dst), Err(Discard::Type));
        let mut bad = good.clone();
        bad[7] ^= 0xff;
        assert_eq!(Advert::decode(&bad, 255, src, dst), Err(Discard::Checksum));
        let mut zero = good.clone();
        zero[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(Advert::decode(&reseal(zero), 255, src, dst), Err(Discard::IntervalZero));
        let mut none = good[..8].to_vec();
        none[3] = 0;
        assert_eq!(Advert::decode(&reseal(none), 255, src, dst), Err(Discard::Addresses));
    }

    #[test]
    fn timers_follow_the_rfc() {
        // 100 ms adverts, priority 100: skew (156 x 10) / 256 = 6 cs; down interval 36 cs.
        assert_eq!(skew_time_cs(100, 10), 6);
        assert_eq!(master_down_interval_cs(100, 10), 36);
        // Default 1 s interval, priority 255: skew 0.
        assert_eq!(master_down_interval_cs(255, 100), 300);
    }
}
