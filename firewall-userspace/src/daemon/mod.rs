//! `apifw run`: load or adopt, fill, pin, attach, serve the control API, and keep bans and
//! runtime entries current until SIGINT/SIGTERM. SIGHUP reloads.

pub mod crowdsec;
pub mod crowdsec_push;
pub mod metrics;
pub mod request;
pub mod server;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};
use tracing::{error, info, warn};

use crate::{
    control::socket_path,
    daemon::metrics::Exporter,
    daemon::server::Access,
    dataplane::events,
    dataplane::firewall::{Firewall, FirewallError},
    dataplane::interfaces::{self, Change, InterfaceWatch},
    dataplane::pins::{self, Pinned},
    engine::{Engine, EngineError, EngineParts, Overrides, read_feeds},
    paths::{LAYOUT_VERSION, PinLayout},
    policy::Policy,
    store::audit::{AuditError, AuditLog},
    store::lock::{InstanceLock, LockError},
    store::state::{self, RuntimeState, StateError},
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No interface to protect.
    #[error("no interfaces configured: set `interfaces` in the policy or pass --interface")]
    NoInterfaces,
    /// The instance lock is taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Loading, attaching or pinning failed.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// The state file is unreadable; pinned enforcement (if any) keeps running.
    #[error("{0} (enforcement pinned by a previous daemon, if any, keeps running)")]
    State(#[source] StateError),
    /// A feed is unreadable or has bad lines.
    #[error("{0}")]
    Feeds(String),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The policy could not be installed.
    #[error("cannot install the policy: {0}")]
    Install(#[source] EngineError),
    /// Stale pins could not be removed.
    #[error("cannot remove stale pins at {}", path.display())]
    Stale {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot create the control socket {}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be given to `daemon.control_group`.
    #[error(
        "cannot give the control socket {} to group `{group}`: the daemon must be a member of \
         that group (systemd: `SupplementaryGroups={group}`) or hold CAP_CHOWN",
        path.display()
    )]
    SocketGroup {
        /// The socket path.
        path: PathBuf,
        /// The group's name.
        group: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The pin directory is not on bpffs.
    #[error(
        "{} is not on a BPF filesystem, so nothing can be pinned there: mount bpffs \
         (`mount -t bpf bpf /sys/fs/bpf`; systemd does at boot) or choose another \
         `daemon.pin_dir` (the daemon does not mount it: that would need CAP_SYS_ADMIN)",
        path.display()
    )]
    NotBpffs {
        /// The pin directory (or its nearest existing ancestor).
        path: PathBuf,
    },
    /// The metrics endpoint cannot listen.
    #[error("cannot serve metrics on {address}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The control group does not exist.
    #[error("`daemon.control_group` names an unknown group `{0}`")]
    UnknownGroup(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The policy file.
    pub policy_path: PathBuf,
    /// Command-line overrides.
    pub overrides: Overrides,
    /// Replace a foreign XDP program found on a configured interface.
    pub replace: bool,
}

/// Detaches pinned links of interfaces the policy no longer lists, and removes the pins of
/// other layout versions once their links were adopted.
fn tidy_pins(policy: &Policy, layout: &PinLayout) {
    if let Ok(entries) = std::fs::read_dir(layout.links_dir()) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !policy.interfaces.contains(&name) {
                info!(
                    interface = name,
                    "detaching from an interface the policy no longer lists"
                );
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for dir in pins::other_layouts(layout) {
        warn!(
            path = %dir.display(),
            current = LAYOUT_VERSION,
            "removing pins of an incompatible apifw layout version (its links were taken over)"
        );
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            error!(path = %dir.display(), %err, "cannot remove old pins");
        }
    }
}

/// Checks that the pin root is (or will be created) on bpffs, whose mount the daemon leaves to
/// the system: pinning anywhere else fails with an error that does not say why.
fn check_bpffs(pin_root: &Path) -> Result<(), DaemonError> {
    // The root may not exist yet (the daemon creates it): its nearest existing ancestor decides
    // which filesystem it will be on.
    let existing = pin_root
        .ancestors()
        .find(|path| path.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statfs::statfs(existing) {
        Ok(fs) if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC => {
            Err(DaemonError::NotBpffs {
                path: existing.to_owned(),
            })
        }
        // An unreadable ancestor: creating the directory will report the real problem.
        _ => Ok(()),
    }
}

/// Creates the control socket with owner-only (or owner+group) permissions.
fn bind_socket(
    run_dir: &Path,
    group: Option<(u32, &str)>,
) -> Result<tokio::net::UnixListener, DaemonError> {
    let path = socket_path(run_dir);
    let socket_err = |source| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    // We hold the instance lock, so a socket file here is a dead daemon's.
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(socket_err(err)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(socket_err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(socket_err)?;
    if let Some((gid, name)) = group {
        // Without CAP_CHOWN (which the daemon does not need otherwise) the kernel only lets
        // the socket's owner hand it to a group the owner belongs to.
        std::os::unix::fs::chown(&path, None, Some(gid)).map_err(|source| {
            DaemonError::SocketGroup {
                path: path.clone(),
                group: name.to_owned(),
                source,
            }
        })?;
    }
    Ok(listener)
}

/// Runs the firewall until SIGINT or SIGTERM.
pub async fn run(mut policy: Policy, options: RunOptions) -> Result<(), DaemonError> {
    options.overrides.apply(&mut policy);
    if policy.interfaces.is_empty() {
        return Err(DaemonError::NoInterfaces);
    }
    let _lock = InstanceLock::acquire(&policy.daemon.run_dir)?;
    let group = match &policy.daemon.control_group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| DaemonError::UnknownGroup(name.clone()))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    let state_path = policy
        .daemon
        .state_file
        .clone()
        .unwrap_or_else(|| state::state_path(&options.policy_path));
    let runtime = RuntimeState::load(&state_path).map_err(DaemonError::State)?;
    let feeds = read_feeds(&policy).map_err(DaemonError::Feeds)?;
    let audit = AuditLog::open(&policy.daemon.audit_log)?;

    let layout = PinLayout::new(&policy.daemon.pin_dir);
    check_bpffs(layout.root())?;
    match pins::inspect(&policy, &layout) {
        Pinned::Nothing => {}
        Pinned::Adoptable => info!(
            path = %layout.versioned().display(),
            "adopting the maps and links a previous daemon pinned (bans, counters and state kept)"
        ),
        Pinned::Incompatible(reason) => {
            warn!(
                %reason,
                "pinned maps are incompatible with this daemon; replacing them (bans, counters and \
                 rate-limit state start over); the running program keeps filtering until ours \
                 replaces it"
            );
            pins::remove_maps(&layout).map_err(|source| DaemonError::Stale {
                path: layout.maps_dir(),
                source,
            })?;
        }
    }
    std::fs::create_dir_all(layout.links_dir()).map_err(|source| DaemonError::Stale {
        path: layout.links_dir(),
        source,
    })?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let firewall = Firewall::load_pinned(&policy, &layout)?;
    let mut engine = Engine::new(EngineParts {
        policy_path: options.policy_path.clone(),
        overrides: options.overrides.clone(),
        policy: policy.clone(),
        feeds,
        runtime,
        state_path,
        dataplane: Box::new(firewall),
        clock: Arc::new(crate::engine::SystemClock),
        audit,
        policy_top: policy.events.top as usize,
    })
    .map_err(DaemonError::Install)?;
    if let Err(err) = engine.attach_all(&layout, options.replace) {
        engine.detach_all(&layout);
        return Err(err.into());
    }
    tidy_pins(&policy, &layout);
    let slots = engine.assign_counter_slots();
    let mut exporter = Exporter::new(layout.clone());
    exporter.shared = engine.shared();
    let metrics_server = match policy.metrics.address() {
        Ok(Some(address)) => match metrics::bind(address).await {
            Ok(listener) => {
                info!(%address, "serving /metrics");
                Some(tokio::spawn(metrics::serve(listener, exporter)))
            }
            // Enforcement matters more than its statistics: the firewall keeps running.
            Err(source) => {
                let err = DaemonError::Metrics { address, source };
                error!(err = %crate::errors::chain(&err), "metrics are NOT served");
                None
            }
        },
        _ => None,
    };
    let log_forwarder = engine
        .take_logger()
        .map(|logger| tokio::spawn(events::forward_logs(logger)));
    let events_reader = engine.take_events().map(|ring| {
        tokio::spawn(events::read(
            ring,
            engine.top_tracker(),
            policy.events.log,
            slots.by_ifindex.clone(),
        ))
    });
    let listener = bind_socket(
        &policy.daemon.run_dir,
        group.zip(policy.daemon.control_group.as_deref()),
    )?;
    info!(
        interfaces = ?policy.interfaces,
        pin_dir = %layout.root().display(),
        socket = %socket_path(&policy.daemon.run_dir).display(),
        "apifw running"
    );

    // Which device each protected name is attached to, to notice removals and renames.
    let mut watch = InterfaceWatch::new(
        engine
            .attachments()
            .iter()
            .map(|a| (a.interface.clone(), interfaces::index_of(&a.interface))),
    );
    let slot_of: std::collections::HashMap<String, u32> = slots
        .by_slot
        .iter()
        .map(|(slot, name)| (name.clone(), *slot))
        .collect();
    let mut attach_failures = std::collections::HashSet::new();
    let engine = Arc::new(Mutex::new(engine));
    let server = tokio::spawn(server::serve(listener, engine.clone(), Access { group }));
    // The CrowdSec bouncer (idle without a `[crowdsec]` section; a reload may add one).
    let bouncer = tokio::spawn(crowdsec::follow(engine.clone()));
    // Its agent side: this host's bans pushed to the LAPI (idle without machine credentials).
    let pusher = tokio::spawn(crowdsec_push::push(engine.clone()));
    // The one readiness point: attached on every interface and answering on the control socket.
    // systemd (`Type=notify`) learns it from READY=1; everything else polls `apifw status`.
    notify_service_manager(&[NotifyState::Ready, NotifyState::Status("enforcing")]);
    // Expired bans are already ignored by XDP; sweeping them frees their map slots.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                info!("SIGTERM received, stopping");
                break;
            }
            _ = sigint.recv() => {
                info!("SIGINT received, stopping");
                break;
            }
            _ = sighup.recv() => {
                info!("SIGHUP received, reloading");
                // Errors are logged and audited by the engine.
                let _ = engine.lock().await.reload("signal");
            }
            _ = tick.tick() => {
                let mut engine = engine.lock().await;
                engine.tick();
                follow_interfaces(
                    &mut engine,
                    &mut watch,
                    &InterfaceContext { policy: &policy, layout: &layout, slot_of: &slot_of },
                    &mut attach_failures,
                );
            }
        }
    }
    notify_service_manager(&[NotifyState::Stopping]);
    server.abort();
    bouncer.abort();
    pusher.abort();
    if let Some(task) = metrics_server {
        task.abort();
    }
    for task in [events_reader, log_forwarder].into_iter().flatten() {
        task.abort();
    }
    let _ = std::fs::remove_file(socket_path(&policy.daemon.run_dir));
    engine.lock().await.detach_all(&layout);
    info!("detached and unpinned");
    Ok(())
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET` set, as a `Type=notify` unit) how the
/// daemon is doing. Without a service manager this does nothing; a failed notification is logged
/// and never stops the firewall: enforcement matters more than the unit's state.
fn notify_service_manager(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!(%err, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// What [`follow_interfaces`] needs of the daemon's setup.
struct InterfaceContext<'a> {
    policy: &'a Policy,
    layout: &'a PinLayout,
    /// Counter slot of each protected interface.
    slot_of: &'a std::collections::HashMap<String, u32>,
}

/// Once a tick: drops the attachment of a protected interface whose device was removed or
/// renamed, and attaches to a device that (again) carries a protected name. Other interfaces are
/// not touched; a failed attach is logged once per device and retried every tick.
fn follow_interfaces(
    engine: &mut Engine,
    watch: &mut InterfaceWatch,
    context: &InterfaceContext<'_>,
    attach_failures: &mut std::collections::HashSet<(String, u32)>,
) {
    for change in watch.changes(interfaces::index_of, interfaces::name_of) {
        match change {
            Change::Removed { interface, ifindex } => {
                warn!(
                    interface,
                    ifindex,
                    "protected interface removed: nothing to filter there until a device with \
                     this name appears again, then apifw attaches to it"
                );
                engine.detach(&interface);
                watch.record(&interface, None);
            }
            Change::Renamed {
                interface,
                ifindex,
                now,
            } => {
                warn!(
                    interface,
                    ifindex,
                    renamed_to = now,
                    "protected interface renamed: the policy protects interfaces by name, so \
                     apifw detaches from it and attaches to whichever device takes the name"
                );
                engine.detach(&interface);
                watch.record(&interface, None);
            }
            Change::Appeared { interface, ifindex } => {
                if watch.is_attached(&interface) {
                    continue;
                }
                let pin = context.layout.link(&interface);
                let slot = context.slot_of.get(&interface).copied();
                match engine.reattach(&interface, ifindex, context.policy.xdp_mode, &pin, slot) {
                    Ok(attachment) => {
                        info!(
                            interface,
                            ifindex,
                            mode = attachment.mode_name(),
                            "protected interface is back: attached"
                        );
                        watch.record(&interface, Some(ifindex));
                        attach_failures.remove(&(interface, ifindex));
                    }
                    Err(err) => {
                        if attach_failures.insert((interface.clone(), ifindex)) {
                            error!(
                                interface,
                                ifindex,
                                err = %crate::errors::chain(&err),
                                "protected interface is back but attaching failed; retrying every second"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
