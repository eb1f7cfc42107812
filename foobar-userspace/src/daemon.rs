//! `foobar run`: load and attach the data plane, keep its maps in step with the configuration
//! and with health, elect the VIP owner with VRRP, answer the control socket, reload on
//! SIGHUP, and leave forwarding running on exit.

use crate::{
    config::{self, Config},
    ctl,
    dataplane::Dataplane,
    health::{self, Health},
    metrics,
    mysql::DatabaseRouter,
    push,
    vrrp::{
        election::Reason,
        instance::{Claim, Handle, Spec},
    },
    web::WebTier,
};
use anyhow::{Context, Result};
use nix::net::if_::InterfaceFlags;
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

/// How often tracked conditions (interface state, XDP attachment) are polled.
const TRACK_INTERVAL: Duration = Duration::from_millis(100);

/// The node's VIP ownership as the VRRP instances decided it.
struct Ownership {
    /// The VIPs of each instance, by index.
    vips: Vec<Vec<IpAddr>>,
    /// Indexes of the instances that are master.
    masters: BTreeSet<usize>,
    /// What `foobar status` reads: forwarding, and the claimed VIPs.
    shared: Arc<Mutex<(bool, Vec<String>)>>,
}

impl Ownership {
    /// Applies one instance's claim or release to the data plane, then acknowledges it.
    fn apply(&mut self, claim: Claim, c: &Config, dp: &mut Dataplane) {
        if claim.master {
            self.masters.insert(claim.instance);
        } else {
            self.masters.remove(&claim.instance);
        }
        let claimed: Vec<IpAddr> = self
            .masters
            .iter()
            .filter_map(|i| self.vips.get(*i))
            .flat_map(|vips| vips.iter().copied())
            .collect();
        let forwarding = !self.masters.is_empty();
        // Forward before claiming the VIPs; stop claiming before no longer forwarding. A node
        // shutting down keeps forwarding: clients still sending to it reach the same backends
        // the peer picks, until the peer's announcements move them.
        let shutting_down = claim.reason == Reason::Shutdown;
        let mut update = || -> Result<()> {
            if forwarding {
                dp.set_forwarding(true)?;
            }
            dp.set_claimed(c, Some(claimed.iter().copied().collect()))?;
            if !forwarding && !shutting_down {
                dp.set_forwarding(false)?;
            }
            Ok(())
        };
        if let Err(e) = update() {
            error!("updating VIP ownership in the data plane failed: {e:#}");
        }
        if let Ok(mut shared) = self.shared.lock() {
            *shared = (dp.forwarding(), claimed.iter().map(|a| a.to_string()).collect());
        }
        let _ = claim.done.send(());
    }
}

/// Runs the control plane until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> Result<()> {
    let mut config = config::load(path)?;
    let mut dataplane = Dataplane::load(&config)?;
    let (health_tx, mut health_rx) = watch::channel(Health::default());
    dataplane
        .sync(&config, &Health::default())
        .context("writing the data-plane maps")?;
    dataplane.attach(&config)?;
    let mut checks = health::spawn_checks(&config, &health_tx);

    let (claims_tx, mut claims_rx) = mpsc::channel::<Claim>(16);
    let mut instances = Vec::new();
    for (i, v) in config.vrrp.iter().enumerate() {
        let spec = Spec::resolve(v)
            .await
            .with_context(|| format!("vrrp instance {}", v.name.get_ref()))?;
        instances.push(Handle::start(i, spec, claims_tx.clone())?);
    }
    let claimed_now: Vec<String> = if config.vrrp.is_empty() {
        config.services.iter().map(|s| s.vip.get_ref().to_string()).collect()
    } else {
        Vec::new()
    };
    let mut ownership = Ownership {
        vips: instances.iter().map(|h| h.spec.vips.clone()).collect(),
        masters: BTreeSet::new(),
        shared: Arc::new(Mutex::new((dataplane.forwarding(), claimed_now))),
    };
    let web = match &config.web {
        Some(w) => Some(WebTier::start(w).await.context("starting the web tier")?),
        None => None,
    };
    let databases = DatabaseRouter::start(&config.databases).context("starting database routing")?;
    let status = ctl::source(
        config.node.name.clone(),
        ownership.shared.clone(),
        instances.iter().map(|h| h.status.clone()).collect(),
        web.as_ref().map(WebTier::summary_source),
        databases.status_source(),
    );
    let _control = ctl::serve(&config.node.control_socket, status.clone())?;
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let exporter: Arc<OnceLock<Arc<push::Exporter>>> = Arc::default();
    let sources = metrics::Sources {
        status,
        config: config_rx,
        health: health_tx.subscribe(),
        extra: {
            let exporter = exporter.clone();
            Arc::new(move || exporter.get().map(|e| e.families()).unwrap_or_default())
        },
    };
    let mut management = Vec::new();
    if let Some(m) = &config.monitoring {
        management.push(metrics::serve(*m.listen.get_ref(), sources.clone()).await?);
        if let Some(p) = &m.push {
            let gather = sources.clone();
            let (started, task) =
                push::start(p, &config.node.name, move || gather.families()).context("starting the push exporter")?;
            let _ = exporter.set(started);
            management.push(task);
        }
    }
    let mut track = tokio::time::interval(TRACK_INTERVAL);
    track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        node = config.node.name,
        services = config.services.len(),
        vrrp_instances = instances.len(),
        "foobar is forwarding"
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                match reload(path, &config, &mut dataplane, &health_tx, web.as_ref(), &databases) {
                    Ok(new) => {
                        config = new;
                        config_tx.send_replace(Arc::new(config.clone()));
                        // The old checks finish what they are doing in the background.
                        let old = std::mem::replace(&mut checks, health::spawn_checks(&config, &health_tx));
                        tokio::spawn(old.stop());
                        info!("configuration reloaded");
                    }
                    Err(e) => error!("reload refused, keeping the running configuration: {e:#}"),
                }
            }
            Ok(()) = health_rx.changed() => {
                let health = health_rx.borrow_and_update().clone();
                if let Err(e) = dataplane.sync(&config, &health) {
                    error!("updating the data plane after a health change failed: {e:#}");
                }
                update_faults(&config, &instances, &health, &mut dataplane);
            }
            Some(claim) = claims_rx.recv() => ownership.apply(claim, &config, &mut dataplane),
            _ = track.tick(), if !instances.is_empty() => {
                let health = health_rx.borrow().clone();
                update_faults(&config, &instances, &health, &mut dataplane);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    // Masters send their priority-0 adverts and release their VIPs; the claims they make on
    // the way out are applied while they stop.
    let names: Vec<String> = instances.iter().map(|h| h.spec.name.clone()).collect();
    for handle in &instances {
        handle.request_stop();
    }
    let stopping = join_in_turn(instances);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => break,
            Some(claim) = claims_rx.recv() => ownership.apply(claim, &config, &mut dataplane),
        }
    }
    if !names.is_empty() {
        info!(instances = ?names, "vrrp instances stopped");
    }
    // Checks in flight finish first: one cut off mid-login would count against this host.
    checks.stop().await;
    if let Some(web) = web {
        web.shutdown().await;
    }
    databases.shutdown().await;
    let _ = std::fs::remove_file(&config.node.control_socket);
    info!("stopping; the pinned data plane keeps forwarding (foobar detach removes it)");
    Ok(())
}

/// Waits for every stopping instance (they stop concurrently; this only collects them).
async fn join_in_turn(instances: Vec<Handle>) {
    for handle in instances {
        handle.finished().await;
    }
}

/// Recomputes each instance's failing tracked conditions and tells it when they changed.
fn update_faults(c: &Config, instances: &[Handle], health: &Health, dp: &mut Dataplane) {
    if instances.is_empty() {
        return;
    }
    let flags: HashMap<String, InterfaceFlags> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs.map(|a| (a.interface_name, a.flags)).collect(),
        Err(e) => {
            warn!("listing interfaces for tracking failed: {e}");
            return;
        }
    };
    let mut detached = Vec::new();
    for interface in c.node.interfaces.get_ref() {
        match dp.attached(interface) {
            Ok(true) => {}
            Ok(false) => detached.push(format!("XDP program not attached to {interface}")),
            Err(e) => detached.push(format!("XDP attachment on {interface} unknown: {e:#}")),
        }
    }
    for (handle, v) in instances.iter().zip(&c.vrrp) {
        let mut faults = detached.clone();
        let interface = &handle.spec.interface;
        match flags.get(interface) {
            None => faults.push(format!("interface {interface} is missing")),
            Some(f) if !f.contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING) => {
                faults.push(format!("interface {interface} is down"))
            }
            Some(_) => {}
        }
        for tracked in &v.track_services {
            let name = tracked.get_ref();
            if let Some(svc) = c.services.iter().find(|s| s.name.get_ref() == name) {
                if svc.backends.iter().all(|b| !health.is_up(name, *b.address.get_ref())) {
                    faults.push(format!("every backend of service {name} is down"));
                }
            }
        }
        handle.faults.send_if_modified(|current| {
            let changed = *current != faults;
            if changed {
                *current = faults;
            }
            changed
        });
    }
}

/// Validates the file again and applies it, or explains why not; the running state is kept
/// on any error.
fn reload(
    path: &Path,
    running: &Config,
    dataplane: &mut Dataplane,
    health: &watch::Sender<Health>,
    web: Option<&WebTier>,
    databases: &DatabaseRouter,
) -> Result<Config> {
    let new = config::load(path)?;
    let restart_only = [
        (
            running.node.interfaces.get_ref() != new.node.interfaces.get_ref(),
            "[node] interfaces",
        ),
        (running.node.pin_dir != new.node.pin_dir, "[node] pin_dir"),
        (running.node.xdp_mode != new.node.xdp_mode, "[node] xdp_mode"),
        (
            running.dataplane.sizes() != new.dataplane.sizes(),
            "[dataplane] table sizes",
        ),
        (running.vrrp != new.vrrp, "[[vrrp]] instances"),
        (
            running.node.control_socket != new.node.control_socket,
            "[node] control_socket",
        ),
        (running.web.is_some() != new.web.is_some(), "[web] presence"),
        (running.databases != new.databases, "[[database]] sections"),
        (running.monitoring != new.monitoring, "[monitoring]"),
    ];
    if let Some((_, what)) = restart_only.iter().find(|(changed, _)| *changed) {
        anyhow::bail!(
            "{what} changed: that takes a restart (foobar run adopts the pinned state without a forwarding gap)"
        );
    }
    databases.reload_credentials(&new.databases)?;
    if let (Some(tier), Some(w)) = (web, &new.web) {
        tier.reload(w)?;
    }
    health.send_modify(|h| h.retain_configured(&new));
    let current = health.borrow().clone();
    dataplane.sync(&new, &current)?;
    Ok(new)
}
