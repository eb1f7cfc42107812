//! The files a configuration names, checked where the configuration is loaded (`foobar
//! check-config`, start, every reload) so that each problem is reported at the key naming the
//! file: certificates and keys that do not load or do not belong together, private keys and
//! credentials that others may read, credentials that do not parse, document roots that are
//! not directories, a push CA bundle that cannot be read.

use super::{CheckKind, Config, Range};
use crate::{
    mysql::monitor::Credentials,
    web::tls::{self, PemFile},
};
use std::{os::unix::fs::PermissionsExt, path::Path};

/// Reports every file problem of `c`.
pub fn check(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
    if let Some(w) = &c.web {
        let provider = tls::provider();
        for cert in &w.certificates {
            let key = cert.key.get_ref();
            if let Some(problem) = readable_by_others(key) {
                report(&cert.key.span(), format!("private key {}: {problem}", key.display()));
            }
            if let Err((file, e)) = tls::load_pair(cert.chain.get_ref(), key, &provider) {
                let span = match file {
                    PemFile::Chain => cert.chain.span(),
                    PemFile::Key => cert.key.span(),
                };
                report(&span, format!("{e:#}"));
            }
        }
        for site in w.sites.get_ref() {
            let root = site.root.get_ref();
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => report(
                    &site.root.span(),
                    format!("document root {} is not a directory", root.display()),
                ),
                Err(e) => report(&site.root.span(), format!("document root {}: {e}", root.display())),
            }
        }
    }
    for db in &c.databases {
        if let Err(e) = Credentials::load(db.credentials.get_ref()) {
            report(&db.credentials.span(), format!("{e:#}"));
        }
    }
    for svc in &c.services {
        if let (CheckKind::Mysql, Some(path)) = (svc.health.kind, &svc.health.credentials) {
            if let Err(e) = Credentials::load(path) {
                report(
                    &svc.name.span(),
                    format!("service {:?}: health credentials: {e:#}", svc.name.get_ref()),
                );
            }
        }
    }
    if let Some(push) = c.monitoring.as_ref().and_then(|m| m.push.as_ref()) {
        if push.url.get_ref().starts_with("https://") {
            if let Err(e) = std::fs::read(&push.ca_file) {
                report(
                    &push.url.span(),
                    format!("an https collector needs ca_file {}: {e}", push.ca_file.display()),
                );
            }
        }
    }
}

/// Why a file that must stay private is not (others may read or write it), if it is not.
fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then(|| format!("others may read or write it (mode {mode:03o}); chmod o-rwx it"))
}
