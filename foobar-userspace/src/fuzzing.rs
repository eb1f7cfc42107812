//! Entry points for the fuzz targets (`foobar-userspace/fuzz`, run by `cargo xtask fuzz`):
//! each feeds arbitrary bytes to one parser of input foobar does not control, and checks what
//! must hold of what it accepts. A panic, an assertion failing or a sanitizer report is a
//! finding. Built only with the `fuzzing` feature.

use crate::{
    announce::{bird, frr, routes},
    operate::Operation,
    vrrp::{seal, Advert, Ipv4Checksum},
    web::files,
};
use hyper::{header, HeaderMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A request path (client input) as the file server maps it beneath the document root: what it
/// accepts is relative, has no empty, `.` or `..` segment, no backslash or NUL, and (without
/// dotfiles) no segment starting with a dot except a leading `.well-known`.
pub fn request_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for dotfiles in [false, true] {
        let Ok(relative) = files::normalise(raw, dotfiles) else {
            continue;
        };
        assert!(!relative.contains(['\\', '\0']), "{raw:?} -> {relative:?}");
        if relative.is_empty() {
            continue; // the root itself
        }
        for (i, segment) in relative.split('/').enumerate() {
            assert!(!matches!(segment, "" | "." | ".."), "{raw:?} -> {relative:?}");
            let may_start_with_a_dot = dotfiles || (i == 0 && segment == ".well-known");
            assert!(
                may_start_with_a_dot || !segment.starts_with('.'),
                "{raw:?} -> {relative:?}"
            );
        }
    }
}

/// A `Range` header (client input) against a file of a length taken from the input: a range it
/// grants lies inside the file.
pub fn byte_range(data: &[u8]) {
    let Some((len, spec)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = u64::from_le_bytes(*len) % (1 << 40);
    let Ok(value) = header::HeaderValue::from_bytes(spec) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, value);
    if let Ok(Some((start, end))) = files::requested_range(&headers, "\"etag\"", "date", len) {
        assert!(start <= end && end < len, "{spec:?} of {len}: {start}-{end}");
    }
}

/// A VRRP advert (anyone on the link can send one), checksummed first so that the checks past
/// the checksum are reached: decoding never panics, and what it accepts encodes back to an
/// advert that decodes the same.
pub fn vrrp_advert(data: &[u8]) {
    let Some((&family, message)) = data.split_first() else {
        return;
    };
    let (src, dst): (IpAddr, IpAddr) = if family & 1 == 0 {
        (Ipv4Addr::new(10, 0, 0, 1).into(), Ipv4Addr::new(224, 0, 0, 18).into())
    } else {
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12).into(),
        )
    };
    let mut message = message.to_vec();
    if family & 2 == 0 && message.len() >= 8 {
        seal(&mut message, src, dst, Ipv4Checksum::PseudoHeader);
    }
    if let Ok((advert, convention)) = Advert::decode(&message, 255, src, dst) {
        let again = advert.encode(src, dst, convention);
        let (decoded, _) = Advert::decode(&again, 255, src, dst).expect("an accepted advert re-encodes");
        assert_eq!(decoded, advert);
    }
}

/// The BGP daemons' answers (BIRD's `show protocols`, FRR's `show bgp summary json`): read
/// without panicking whatever they say.
pub fn bgp_daemon_answers(data: &[u8]) {
    let lines: Vec<String> = String::from_utf8_lossy(data).lines().map(str::to_owned).collect();
    for session in bird::parse(&lines) {
        assert!(!session.name.is_empty());
    }
    let _ = frr::parse(data);
}

/// rtnetlink datagrams (the kernel's answers about the announcement table): split into
/// messages and attributes that stay inside the datagram.
pub fn netlink(data: &[u8]) {
    if let Ok(messages) = routes::messages(data, 1) {
        for (_, payload) in messages {
            for (_, value) in routes::attributes(payload) {
                assert!(value.len() <= payload.len());
            }
        }
    }
}

/// A configuration file: every problem is reported, nothing panics.
pub fn configuration(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse(text);
    }
}

/// A control socket request's operation (JSON after `op `).
pub fn control_request(data: &[u8]) {
    if let Ok(op) = serde_json::from_slice::<Operation>(data) {
        let again = serde_json::to_string(&op).expect("an operation serialises");
        assert_eq!(serde_json::from_str::<Operation>(&again).ok(), Some(op));
    }
}

/// GTID text a database server reports (its positions, sets and replica status): what parses
/// prints back as text that parses to the same, and comparing it with itself finds nothing
/// missing and its own history complete.
pub fn gtids(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = text.parse::<crate::mysql::gtid::Gtids>() else {
        return;
    };
    let printed = parsed.to_string();
    let again: crate::mysql::gtid::Gtids = printed
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} -> {printed:?}: {e}"));
    assert_eq!(again, parsed, "{text:?} -> {printed:?}");
    assert_eq!(parsed.missing_from(&parsed), 0, "{text:?}");
    assert!(parsed.contains_history_of(&parsed), "{text:?}");
    let _ = parsed.union(&again).progress();
}
