//! The files a configuration names, checked where the configuration is loaded (`foobar
//! check-config`, start, every reload) so that each problem is reported at the key naming the
//! file: certificates and keys that do not load or do not belong together, private keys and
//! credentials that others may read, credentials that do not parse, document roots that are
//! not directories, a push CA bundle that cannot be read.

use super::{file::Config, CheckKind, Range};
use crate::{
    mysql::monitor::Credentials,
    web::tls::{self, PemFile},
};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};
use toml::Spanned;

/// Reports every file problem of `c`.
pub fn check(c: &Config, report: &mut dyn FnMut(&Range<usize>, String)) {
    // The user the daemon switches to serves the document roots.
    let mut account = None;
    if let Some(user) = &c.node.user {
        match nix::unistd::User::from_name(user.get_ref()) {
            Ok(Some(a)) if a.uid.is_root() => report(&user.span(), "user is root: name an unprivileged user".into()),
            Ok(Some(a)) => account = Some(a),
            Ok(None) => report(
                &user.span(),
                format!(
                    "no such user {:?} (create it: adduser --system --group {0}, or install the package)",
                    user.get_ref()
                ),
            ),
            Err(e) => report(&user.span(), format!("looking up user {:?}: {e}", user.get_ref())),
        }
    }
    if let Some(w) = &c.web {
        let provider = tls::provider();
        for cert in &w.certificates {
            check_pair(&cert.chain, &cert.key, &provider, report);
        }
        if let Some(keys) = &w.ticket_keys {
            let path = keys.get_ref();
            if let Some(problem) = readable_by_others(path) {
                report(&keys.span(), format!("ticket keys {}: {problem}", path.display()));
            }
            if let Err(e) = crate::web::tickets::read_keys(path) {
                report(&keys.span(), format!("{e:#}"));
            }
        }
        for site in w.sites.get_ref() {
            let root = site.root.get_ref();
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => {
                    if let Some(problem) = account.as_ref().and_then(|a| unreadable_by(root, a)) {
                        report(
                            &site.root.span(),
                            format!("document root {}: {problem}", root.display()),
                        );
                    }
                }
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
        if let Some(f) = &db.failover {
            let path = f.replication_credentials.get_ref();
            if let Err(e) = crate::mysql::failover::replication_credentials(path) {
                report(&f.replication_credentials.span(), format!("{e:#}"));
            }
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
    if let Some(tls) = c.monitoring.as_ref().and_then(|m| m.tls_server_config.as_ref()) {
        check_pair(&tls.cert_file, &tls.key_file, &tls::provider(), report);
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

/// Reports a certificate chain and key that do not load or do not belong together, and a key
/// others may read.
fn check_pair(
    chain: &Spanned<PathBuf>,
    key: &Spanned<PathBuf>,
    provider: &rustls::crypto::CryptoProvider,
    report: &mut dyn FnMut(&Range<usize>, String),
) {
    let key_path = key.get_ref();
    if let Some(problem) = readable_by_others(key_path) {
        report(&key.span(), format!("private key {}: {problem}", key_path.display()));
    }
    if let Err((file, e)) = tls::load_pair(chain.get_ref(), key_path, provider) {
        let span = match file {
            PemFile::Chain => chain.span(),
            PemFile::Key => key.span(),
        };
        report(&span, format!("{e:#}"));
    }
}

/// Why `user` (by mode bits, owner and group) cannot list the directory `dir` or enter it and
/// each directory above it, if it cannot.
fn unreadable_by(dir: &Path, user: &nix::unistd::User) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let allows = |m: &std::fs::Metadata, bits: u32| {
        let shift = if m.uid() == user.uid.as_raw() {
            6
        } else if m.gid() == user.gid.as_raw() {
            3
        } else {
            0
        };
        (m.mode() >> shift) & bits == bits
    };
    let mut wanted = 0o5; // list and enter the root itself
    for step in dir.ancestors() {
        let m = std::fs::metadata(step).ok()?;
        if !allows(&m, wanted) {
            let what = if wanted == 0o5 { "list" } else { "enter" };
            return Some(format!(
                "user {} may not {what} {} (mode {:03o}, owner {}:{}); the threads serving files run as that user",
                user.name,
                step.display(),
                m.mode() & 0o777,
                m.uid(),
                m.gid()
            ));
        }
        wanted = 0o1;
    }
    None
}

/// Why a file that must stay private is not (others may read or write it), if it is not.
fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then(|| format!("others may read or write it (mode {mode:03o}); chmod o-rwx it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_root_the_user_cannot_list_or_reach_is_named() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let top = std::env::temp_dir().join(format!("foobar-files-test-{}", std::process::id()));
        let root = top.join("www");
        std::fs::create_dir_all(&root).unwrap();
        let chmod = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(&top, 0o755);
        chmod(&root, 0o755);
        assert_eq!(unreadable_by(&root, &nobody), None);
        chmod(&root, 0o711);
        let listed = unreadable_by(&root, &nobody).unwrap();
        assert!(
            listed.contains("may not list") && listed.contains("mode 711"),
            "{listed}"
        );
        chmod(&root, 0o755);
        chmod(&top, 0o700);
        let entered = unreadable_by(&root, &nobody).unwrap();
        assert!(
            entered.contains(&format!("may not enter {}", top.display())),
            "{entered}"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }
}
