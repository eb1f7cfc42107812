//! `foobar run`: load and attach the data plane, keep its maps in step with the configuration
//! and with health, own the VIPs (elected with VRRP, or announced through the BGP daemon),
//! answer the control socket, reload on SIGHUP, and leave forwarding running on exit.
//!
//! Stopping: SIGTERM or SIGINT withdraws a node's announcements and keeps serving for
//! `[announce] drain_ms` first; SIGUSR2 (the unit's `RestartKillSignal`) stops for a restart
//! and leaves them, since the pinned data plane keeps forwarding until the next run adopts it.

use crate::{
    announce::{self, Announcer},
    config::{self, Config},
    ctl,
    dataplane::Dataplane,
    health::{self, Health},
    metrics,
    mysql::DatabaseRouter,
    notify,
    operate::{self, Answer, Operation, Overrides},
    push,
    reload::{self, Outcome},
    track::{self, Fault},
    vrrp::{
        election::Reason,
        instance::{Claim, Handle, Spec, Stop},
    },
    web::WebTier,
};
use anyhow::{Context, Result};
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot, watch},
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
    crate::fdlimit::fit(&config)?;
    let mut dataplane = Dataplane::load(&config)?;
    let resumed = resume_held_claims(&config, &mut dataplane);
    let (health_tx, mut health_rx) = watch::channel(Health::default());
    dataplane
        .sync(&config, &Health::default())
        .context("writing the data-plane maps")?;
    dataplane.attach(&config)?;
    let mut checks = health::spawn_checks(&config, &health_tx);
    // The VIP claim is a lease this process renews on every tracking tick: three of the
    // fastest advert intervals, so that a dead control plane's node stops answering ARP / ND
    // before a peer takes over (its master-down interval is three intervals and a skew).
    let lease = claim_lease(&config);
    dataplane.renew_claim(lease).context("writing the claim lease")?;

    let (claims_tx, mut claims_rx) = mpsc::channel::<Claim>(16);
    let mut instances = Vec::new();
    for (i, v) in config.vrrp.iter().enumerate() {
        let spec = Spec::resolve(v, &config.node.name)
            .await
            .with_context(|| format!("vrrp instance {}", v.name))?;
        instances.push(Handle::start(i, spec, claims_tx.clone(), resumed.contains(&i))?);
    }
    let claimed_now: Vec<String> = if dataplane.claims_every_vip() {
        config.services.iter().map(|s| s.vip.to_string()).collect()
    } else {
        resumed
            .iter()
            .flat_map(|i| config.vrrp[*i].vips.iter().map(IpAddr::to_string))
            .collect()
    };
    let mut ownership = Ownership {
        vips: instances.iter().map(|h| h.spec.vips.clone()).collect(),
        masters: resumed,
        shared: Arc::new(Mutex::new((dataplane.forwarding(), claimed_now))),
    };
    let web = match &config.web {
        Some(w) => Some(WebTier::start(w).await.context("starting the web tier")?),
        None => None,
    };
    let databases = DatabaseRouter::start(&config.databases).context("starting database routing")?;
    let mut announcer = match &config.announce {
        Some(a) => Some(Announcer::start(a).context("opening the announcement table")?),
        None => None,
    };
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let status = ctl::source(ctl::Parts {
        node: config.node.name.clone(),
        ownership: ownership.shared.clone(),
        vrrp: instances.iter().map(|h| h.status.clone()).collect(),
        announce: announcer.as_ref().map(Announcer::status_source),
        web: web.as_ref().map(WebTier::summary_source),
        databases: databases.status_source(),
        config: config_rx.clone(),
        health: health_tx.subscribe(),
    });
    if let Some(a) = &announcer {
        announce::spawn_session_reader(a.status_source(), config_rx.clone());
    }
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<Outcome>>(4);
    let (operations_tx, mut operations_rx) = mpsc::channel::<(Operation, oneshot::Sender<Answer>)>(4);
    let requests = ctl::Requests {
        reloads: reload_tx,
        operations: operations_tx,
    };
    let _control = ctl::serve(&config.node.control_socket, status.clone(), requests)?;
    // VRRP instances an operator stepped down, and whether the node drains.
    let mut overrides = Overrides::default();
    let exporter: Arc<OnceLock<Arc<push::Exporter>>> = Arc::default();
    let sources = metrics::Sources {
        status,
        config: config_rx,
        extra: {
            let exporter = exporter.clone();
            Arc::new(move || exporter.get().map(|e| e.families()).unwrap_or_default())
        },
        counters: crate::stats::CounterMaps::open(&config.node.pin_dir)
            .map(Arc::new)
            .map_err(|e| warn!("the data plane's counters will be missing from the metrics: {e:#}"))
            .ok(),
        management: Arc::default(),
    };
    let mut management = Vec::new();
    if let Some(m) = &config.monitoring {
        management.push(metrics::serve(m, sources.clone()).await?);
        if let Some(p) = &m.push {
            let gather = sources.clone();
            let (started, task) =
                push::start(p, &config.node.name, move || gather.families()).context("starting the push exporter")?;
            let _ = exporter.set(started);
            management.push(task);
        }
    }
    // Every listener is bound: a socket kept from the previous run that none took is closed.
    crate::listen::release_unadopted();
    // Everything privileged is open: run as the configured user from here on.
    let also: &[crate::privileges::Capability] = if announcer.is_some() {
        &[crate::privileges::ANNOUNCING]
    } else {
        &[]
    };
    crate::privileges::switch_to(config.node.user.as_deref(), also)?;
    let mut track = tokio::time::interval(TRACK_INTERVAL);
    track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        node = config.node.name,
        services = config.services.len(),
        vrrp_instances = instances.len(),
        forwarding = dataplane.forwarding(),
        "foobar is running"
    );
    notify::ready("running");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut restart = signal(SignalKind::user_defined2())?;
    // Whether the loop ended for a restart (announcements stay) or a stop.
    let for_restart;
    loop {
        // Who asked for a reload, and where the outcome goes.
        let mut reload_request: Option<(&str, Option<oneshot::Sender<Outcome>>)> = None;
        tokio::select! {
            _ = hangup.recv() => reload_request = Some(("SIGHUP", None)),
            Some(reply) = reload_rx.recv() => reload_request = Some(("foobar reload", Some(reply))),
            Ok(()) = health_rx.changed() => {
                let health = health_rx.borrow_and_update().clone();
                if let Err(e) = dataplane.sync(&config, &health) {
                    error!("updating the data plane after a health change failed: {e:#}");
                }
                let mut owners = Owners { instances: &instances, announcer: announcer.as_mut() };
                owners.track(&config, &health, &overrides, &mut dataplane);
            }
            Some((op, reply)) = operations_rx.recv() => {
                if let Operation::Switchover { database, to } = op {
                    // It takes seconds: its own task answers, the loop goes on.
                    let switchover = databases.switchover(&database, to);
                    tokio::spawn(async move {
                        let answer = switchover.await;
                        match &answer {
                            Ok(done) => info!("{done}"),
                            Err(why) => warn!(database, "switchover refused: {why}"),
                        }
                        let _ = reply.send(answer);
                    });
                    continue;
                }
                let answer = operate::apply(
                    &op,
                    &config,
                    &health_tx,
                    &mut checks,
                    web.as_ref(),
                    &instances,
                    &mut overrides,
                );
                match &answer {
                    Ok(done) => info!(operation = %op, "{done}"),
                    Err(why) => warn!(operation = %op, "refused: {why}"),
                }
                // The maps say what the operation asked before its answer goes out.
                let health = health_rx.borrow_and_update().clone();
                if let Err(e) = dataplane.sync(&config, &health) {
                    error!("updating the data plane after an operation failed: {e:#}");
                }
                let mut owners = Owners { instances: &instances, announcer: announcer.as_mut() };
                owners.track(&config, &health, &overrides, &mut dataplane);
                let _ = reply.send(answer);
            }
            Some(claim) = claims_rx.recv() => ownership.apply(claim, &config, &mut dataplane),
            _ = track.tick(), if !instances.is_empty() || announcer.is_some() => {
                if !instances.is_empty() {
                    if let Err(e) = dataplane.renew_claim(lease) {
                        error!("renewing the VIP claim lease failed: {e:#}");
                    }
                }
                let health = health_rx.borrow().clone();
                let mut owners = Owners { instances: &instances, announcer: announcer.as_mut() };
                owners.track(&config, &health, &overrides, &mut dataplane);
            }
            _ = terminate.recv() => { for_restart = false; break }
            _ = interrupt.recv() => { for_restart = false; break }
            _ = restart.recv() => { for_restart = true; break }
        }
        if let Some((asked_by, reply)) = reload_request {
            notify::reloading();
            let mut running = Running {
                config: &mut config,
                dataplane: &mut dataplane,
                health: &health_tx,
                checks: &mut checks,
                web: web.as_ref(),
                databases: &databases,
                published: &config_tx,
            };
            let outcome = running.reload(path);
            log_outcome(asked_by, &outcome);
            notify::ready(outcome.summary());
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        }
    }
    notify::stopping();
    if let (Some(a), Some(settings)) = (announcer.as_mut(), &config.announce) {
        if for_restart {
            info!("stopping for a restart: the announcements stay, the pinned data plane keeps forwarding");
        } else {
            let withdrawn = a.withdraw_all(&config, &health_rx.borrow().clone());
            let drain = settings.drain;
            info!(
                withdrawn,
                drain_ms = settings.drain.as_millis() as u64,
                "announcements withdrawn; serving on while the routers move flows away (a second signal cuts it short)"
            );
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
    }
    let names: Vec<String> = instances.iter().map(|h| h.spec.name.clone()).collect();
    // Checks in flight finish first: one cut off mid-login would count against this host.
    let drain_tiers = async move {
        checks.stop().await;
        if let Some(web) = web {
            web.shutdown().await;
        }
        databases.shutdown().await;
    };
    if for_restart && !instances.is_empty() {
        // A restart keeps the VIPs: the tiers drain while the masters go on advertising and the
        // lease is renewed; then each master advertises once more and leaves its claim to the
        // next process, which resumes it if it starts before the backups would take over.
        tokio::pin!(drain_tiers);
        loop {
            tokio::select! {
                _ = &mut drain_tiers => break,
                Some(claim) = claims_rx.recv() => ownership.apply(claim, &config, &mut dataplane),
                _ = track.tick() => {
                    if let Err(e) = dataplane.renew_claim(lease) {
                        error!("renewing the VIP claim lease failed: {e:#}");
                    }
                }
            }
        }
        stop_instances(
            instances,
            Stop::HandOver,
            &mut claims_rx,
            &mut ownership,
            &config,
            &mut dataplane,
        )
        .await;
        if let Some(lease) = lease.filter(|_| dataplane.forwarding()) {
            match dataplane.hand_over(lease) {
                Ok(()) => info!(
                    instances = ?names,
                    within_ms = lease.as_millis() as u64,
                    "vrrp claims handed over to the next process"
                ),
                Err(e) => error!("handing the VIP claims over failed: {e:#}"),
            }
        }
    } else {
        // Masters send their priority-0 adverts and release their VIPs, then the tiers drain.
        stop_instances(
            instances,
            Stop::Release,
            &mut claims_rx,
            &mut ownership,
            &config,
            &mut dataplane,
        )
        .await;
        if !names.is_empty() {
            info!(instances = ?names, "vrrp instances stopped");
        }
        drain_tiers.await;
    }
    let _ = std::fs::remove_file(&config.node.control_socket);
    info!("stopping; the pinned data plane keeps forwarding (foobar detach removes it)");
    Ok(())
}

/// The VRRP instances that start as master because the previous process held their claims
/// and no backup can have taken over yet (it handed them over on a restart, or died with most
/// of its lease left; every VIP of the instance claimed); the data plane goes on claiming their
/// VIPs from the first sync on.
fn resume_held_claims(c: &Config, dp: &mut Dataplane) -> BTreeSet<usize> {
    let Some(fastest) = fastest_advert(c) else {
        return BTreeSet::new();
    };
    let held = match dp.held_claims(fastest) {
        Ok(Some(held)) => held,
        Ok(None) => return BTreeSet::new(),
        Err(e) => {
            warn!("reading what the previous process handed over failed: {e:#}");
            return BTreeSet::new();
        }
    };
    let resumed: BTreeSet<usize> = c
        .vrrp
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.vips.is_empty() && v.vips.iter().all(|vip| held.contains(vip)))
        .map(|(i, _)| i)
        .collect();
    let vips: HashSet<IpAddr> = resumed.iter().flat_map(|i| c.vrrp[*i].vips.iter().copied()).collect();
    if !resumed.is_empty() {
        let names: Vec<&str> = resumed.iter().map(|i| c.vrrp[*i].name.as_str()).collect();
        info!(instances = ?names, "resuming the vrrp claims the previous process held");
        dp.resume_claims(vips);
    }
    resumed
}

/// How long the data plane's VIP claim lasts without renewal: three of the fastest advert
/// intervals (at least three tracking ticks); none without VRRP (no peer to take over).
fn claim_lease(c: &Config) -> Option<Duration> {
    Some((3 * fastest_advert(c)?).max(3 * TRACK_INTERVAL))
}

/// The shortest advertisement interval of the VRRP instances; none without VRRP.
fn fastest_advert(c: &Config) -> Option<Duration> {
    c.vrrp.iter().map(|v| v.advert_interval).min()
}

/// Stops every instance as `how` says, applying the claims they make on the way out.
async fn stop_instances(
    instances: Vec<Handle>,
    how: Stop,
    claims: &mut mpsc::Receiver<Claim>,
    ownership: &mut Ownership,
    c: &Config,
    dp: &mut Dataplane,
) {
    for handle in &instances {
        handle.request_stop(how);
    }
    // They stop concurrently; this only collects them.
    let stopping = async {
        for handle in instances {
            handle.finished().await;
        }
    };
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => break,
            Some(claim) = claims.recv() => ownership.apply(claim, c, dp),
        }
    }
}

/// What owns the node's VIPs: VRRP instances, or the announcer.
struct Owners<'a> {
    instances: &'a [Handle],
    announcer: Option<&'a mut Announcer>,
}

impl Owners<'_> {
    /// Recomputes the tracked conditions: each VRRP instance is told when its faults changed
    /// (its interface, the program's attachment, its tracked services, operator step-downs
    /// and drains); the announcer withdraws the VIPs the node is no longer fit to serve.
    fn track(&mut self, c: &Config, health: &Health, overrides: &Overrides, dp: &mut Dataplane) {
        if self.instances.is_empty() && self.announcer.is_none() {
            return;
        }
        let flags = match track::interface_flags() {
            Ok(flags) => flags,
            Err(e) => {
                warn!("listing interfaces for tracking failed: {e}");
                return;
            }
        };
        let mut node = track::attachment_faults(c, dp);
        if overrides.draining {
            node.push(Fault::Draining);
        }
        for (handle, v) in self.instances.iter().zip(&c.vrrp) {
            let mut faults = node.clone();
            if overrides.stepped_down.contains(&handle.spec.name) {
                faults.push(Fault::SteppedDown);
            }
            faults.extend(track::interface_fault(&flags, &handle.spec.interface));
            for tracked in &v.track_services {
                if !track::service_up(c, health, tracked) {
                    faults.push(Fault::ServiceDown {
                        service: tracked.clone(),
                    });
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
        if let Some(announcer) = self.announcer.as_mut() {
            for interface in &c.node.interfaces {
                node.extend(track::interface_fault(&flags, interface));
            }
            announcer.update(c, health, &node);
        }
    }
}

/// Logs what became of a reload.
fn log_outcome(asked_by: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Applied { changes } => info!(asked_by, ?changes, "configuration reloaded"),
        Outcome::Refused { reasons } => error!(asked_by, ?reasons, "reload refused, the running configuration stays"),
        Outcome::NeedsRestart { keys } => error!(
            asked_by,
            ?keys,
            "reload refused: these keys take a restart, nothing was applied"
        ),
    }
}

/// The running subsystems a reload prepares and commits.
struct Running<'a> {
    config: &'a mut Config,
    dataplane: &'a mut Dataplane,
    health: &'a watch::Sender<Health>,
    checks: &'a mut health::Checks,
    web: Option<&'a WebTier>,
    databases: &'a DatabaseRouter,
    /// The configuration metrics read.
    published: &'a watch::Sender<Arc<Config>>,
}

impl Running<'_> {
    /// Applies the configuration file again, all or nothing. First every subsystem prepares
    /// what can fail (the file and the files it names are checked, the data-plane plan with its
    /// ids and Maglev tables is computed, certificates, sites and pools are built, credentials
    /// are read) without touching running state; a problem anywhere refuses the reload with
    /// every reason. Then all commit: the data plane first (only the kernel refusing a map
    /// update can fail it, and then the running configuration is written back), then health,
    /// the web tier, database credentials and the checks, which cannot fail.
    fn reload(&mut self, path: &Path) -> Outcome {
        let new = match config::load(path) {
            Ok(new) => new,
            Err(e) => {
                return Outcome::Refused {
                    reasons: e.to_string().lines().map(str::to_owned).collect(),
                }
            }
        };
        let keys = reload::restart_keys(self.config, &new);
        if !keys.is_empty() {
            return Outcome::NeedsRestart {
                keys: keys.into_iter().map(str::to_owned).collect(),
            };
        }
        let mut reasons = Vec::new();
        let mut health = self.health.borrow().clone();
        health.retain_configured(&new);
        let plan = self
            .dataplane
            .prepare(&new, &health)
            .map_err(|e| reasons.push(format!("data plane: {e:#}")))
            .ok();
        let web = match (self.web, &new.web) {
            (Some(tier), Some(w)) => tier
                .prepare(w)
                .map_err(|e| reasons.push(format!("web tier: {e:#}")))
                .ok(),
            _ => None,
        };
        let credentials = self
            .databases
            .prepare_credentials(&new.databases)
            .map_err(|e| reasons.push(format!("database routing: {e:#}")))
            .ok();
        let (Some(plan), Some(credentials), true) = (plan, credentials, reasons.is_empty()) else {
            return Outcome::Refused { reasons };
        };
        if let Err(e) = self.dataplane.commit(&plan) {
            let mut reasons = vec![format!("data plane: writing the maps failed: {e:#}")];
            let current = self.health.borrow().clone();
            if let Err(e) = self.dataplane.sync(self.config, &current) {
                reasons.push(format!(
                    "data plane: writing the running configuration back failed too: {e:#}"
                ));
            }
            return Outcome::Refused { reasons };
        }
        self.health.send_modify(|h| h.retain_configured(&new));
        if let (Some(tier), Some(prepared)) = (self.web, web) {
            tier.commit(prepared);
        }
        self.databases.commit_credentials(credentials);
        let checks = self.checks.update(&new, self.health);
        let mut changes = reload::changes(self.config, &new);
        if checks.started + checks.stopped > 0 {
            changes.push(format!(
                "health checks: {} kept, {} started, {} stopped",
                checks.kept, checks.started, checks.stopped
            ));
        }
        *self.config = new;
        self.published.send_replace(Arc::new(self.config.clone()));
        Outcome::Applied { changes }
    }
}
