//! `foobar run`: load and attach the data plane, keep its maps in step with the configuration
//! and with health, reload on SIGHUP, and leave forwarding running on exit.

use crate::{
    config::{self, Config},
    dataplane::Dataplane,
    health::{self, Health},
};
use anyhow::{Context, Result};
use std::path::Path;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info};

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
    info!(
        node = config.node.name,
        services = config.services.len(),
        "foobar is forwarding"
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                match reload(path, &config, &mut dataplane, &health_tx) {
                    Ok(new) => {
                        config = new;
                        checks.abort_all();
                        checks = health::spawn_checks(&config, &health_tx);
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
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping; the pinned data plane keeps forwarding (foobar detach removes it)");
    Ok(())
}

/// Validates the file again and applies it, or explains why not; the running state is kept
/// on any error.
fn reload(path: &Path, running: &Config, dataplane: &mut Dataplane, health: &watch::Sender<Health>) -> Result<Config> {
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
    ];
    if let Some((_, what)) = restart_only.iter().find(|(changed, _)| *changed) {
        anyhow::bail!(
            "{what} changed: that takes a restart (foobar run adopts the pinned state without a forwarding gap)"
        );
    }
    health.send_modify(|h| h.retain_configured(&new));
    let current = health.borrow().clone();
    dataplane.sync(&new, &current)?;
    Ok(new)
}
