//! Builds the application: Redis handles, the directory whose facility actors live on the
//! HTTP workers (each with its writer), the readiness probe and the HTTP server bound to its
//! listener (port 0 works, so tests run many instances side by side).
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::facility::actor::Deps;
use crate::facility::directory::{Home, MakeHome};
use crate::facility::lease::{Heartbeat, Node};
use crate::facility::patient_keys::PatientHasher;
use crate::facility::Directory;
use crate::ingress::{self, auth::digest, AppState};
use crate::persistence::{writer, Store};
use crate::telemetry::metrics::{self, Metrics};

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    grace: Duration,
    heartbeat: Option<Heartbeat>,
}

/// A running application (tests): stop it gracefully with [`RunningApp::stop`].
pub struct RunningApp {
    pub port: u16,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    state: web::Data<AppState>,
    heartbeat: Option<Heartbeat>,
}

impl Application {
    /// Must be called inside an actix system.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        // TLS for outbound calls (the national switch); a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prometheus = metrics::install();
        let m = Metrics::new();
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let target = settings.redis_target().context("SCANGW_REDIS_URL")?;
        let store = Store::open(&target, timeout).context("SCANGW_REDIS_URL")?;
        // Bound first: with `SCANGW_ADVERTISE_URL=auto` the advertised URL names the port.
        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("SCANGW_LISTEN: cannot bind {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let node = settings
            .advertised_url(port)
            .map(|url| Arc::new(Node::new(url, Duration::from_millis(settings.node_lease_ms))));
        let n = settings.worker_count();
        let touched = writer::Touched::default();
        // Each HTTP worker is a home of facility actors, with its own writer and its own
        // connections, opened lazily on that thread so their replies wake it (see
        // `Directory`); flushes of different workers overlap.
        let make_home: MakeHome = {
            let (target, store, touched, m) = (target.clone(), store.clone(), touched.clone(), m.clone());
            let (batch_max, wait_replicas) = (settings.batch_max, settings.redis_wait_replicas);
            let linger = Duration::from_micros(settings.write_linger_us);
            Box::new(move || {
                // The URL opened above already, so this cannot fail; the shared handle would do.
                let open = || Store::open(&target, timeout).unwrap_or_else(|_| store.clone());
                let (tx, rx) = mpsc::channel(batch_max * 8);
                let conn = open().connection();
                let shape = writer::Shape { batch_max, linger, wait_replicas };
                actix_rt::spawn(writer::run(rx, conn, timeout, shape, touched.clone(), m.clone()));
                Home::here(tx, open())
            })
        };
        let tz = jiff::tz::TimeZone::get(&settings.default_timezone).context("SCANGW_DEFAULT_TIMEZONE")?;
        let deps = Arc::new(Deps {
            store: store.clone(),
            clock,
            hasher: PatientHasher::new(&settings.patient_key_secret),
            metrics: m,
            max_priority_streak: settings.max_priority_streak,
            default_service_s: settings.default_service_s,
            idle_timeout: Duration::from_secs(settings.idle_timeout_s),
            max_active: settings.max_active_facilities,
            pressure_idle: Duration::from_secs(settings.pressure_idle_s),
            active: Default::default(),
            mailbox_capacity: settings.mailbox_capacity,
            day_retention_s: settings.day_retention_s as i64,
            default_tz: tz.clone(),
            node: node.clone(),
        });
        let clock = deps.clock.clone();
        let deps_clock = deps.clock.clone();
        let metrics_handles = deps.metrics.clone();
        let directory = Arc::new(Directory::new(deps, n, make_home));
        let redis_up = Arc::new(AtomicBool::new(store.ping().await));
        let shutting_down = Arc::new(AtomicBool::new(false));
        let feed = crate::leaderboard::feed::Feed::spawn(
            store.clone(),
            clock,
            tz,
            Duration::from_millis(settings.leaderboard_refresh_ms),
            settings.leaderboard_top_n,
            shutting_down.clone(),
        );
        let protocol = if settings.protocol_enabled() {
            Some(crate::protocol::build(&settings, deps_clock.clone(), Duration::from_secs(600)).await?)
        } else {
            None
        };
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            directory,
            store: store.clone(),
            admin_digest: digest(&settings.admin_token),
            platform_digest: digest(&settings.platform_token),
            monitor_digest: (!settings.monitor_token.is_empty()).then(|| digest(&settings.monitor_token)),
            prometheus,
            redis_up: redis_up.clone(),
            shutting_down,
            in_flight: AtomicUsize::new(0),
            limits: ingress::limits::Limits::from_settings(&settings),
            feed,
            boards: Arc::new(ingress::pages::Boards::new(Duration::from_millis(settings.board_refresh_ms))),
            sse_clients: Arc::new(AtomicUsize::new(0)),
            protocol,
        });
        if state.protocol.is_some() {
            crate::protocol::worker::spawn(state.clone());
        }
        crate::leaderboard::applier::Applier {
            store: store.clone(),
            directory: state.directory.clone(),
            touched,
            clock: state.directory.deps().clock.clone(),
            metrics: state.directory.deps().metrics.clone(),
            every: Duration::from_millis(settings.leaderboard_apply_ms),
            retention_days: settings.leaderboard_retention_days as i64,
            stop: state.shutting_down.clone(),
        }
        .spawn();
        spawn_health_probe(store.clone(), redis_up, metrics_handles);
        spawn_limit_sweeper(state.clone(), Duration::from_secs(settings.limits_sweep_s));

        let heartbeat = match &node {
            Some(n) => {
                // The lease exists before the first activation names this node in a fence
                // (if Redis is down, the heartbeat keeps trying).
                let _ = store.renew_lease(&n.id, &n.url, n.lease).await;
                let dir = state.directory.clone();
                tracing::info!(node = %n.id, url = %n.url, lease_ms = n.lease.as_millis() as u64, "ownership leases on");
                Some(Heartbeat::spawn(store.clone(), n.clone(), move || dir.prune_owners()))
            }
            None => None,
        };
        // Every answer names the node that produced it (a forwarded one keeps its owner's).
        let node_header = node.as_ref().map(|n| n.id.clone());
        let app_state = state.clone();
        let grace = Duration::from_secs(settings.shutdown_grace_s);
        let server = HttpServer::new(move || {
            // Runs on each worker thread as it starts (and again if the server restarts it).
            app_state.directory.adopt_current_thread();
            App::new()
                .app_data(app_state.clone())
                .wrap(match &node_header {
                    Some(id) => middleware::DefaultHeaders::new().add((ingress::forward::NODE_HEADER, id.as_str())),
                    None => middleware::DefaultHeaders::new(),
                })
                .wrap(middleware::from_fn(ingress::observe))
                .configure(ingress::routes)
                .default_service(web::to(ingress::not_found))
        })
        .workers(n)
        .backlog(4096)
        .max_connection_rate(1024)
        .disable_signals()
        .shutdown_timeout(grace.as_secs())
        .listen(listener)?
        .run();
        tracing::info!(port, workers = n, "gateway built");
        Ok(Self { port, server, state, grace, heartbeat })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then drains (see [`crate::shutdown`]).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let grace = self.grace;
        let server = self.server;
        let drain = crate::shutdown::on_signal(handle, state.shutting_down.clone(), grace);
        let (served, _) = tokio::join!(server, drain);
        if let Some(h) = self.heartbeat {
            h.stop().await;
        }
        served?;
        tracing::info!("gateway stopped");
        Ok(())
    }

    /// Runs in the background (tests).
    pub fn spawn(self) -> RunningApp {
        let handle = self.server.handle();
        let task = actix_rt::spawn(self.server);
        RunningApp { port: self.port, handle, task, state: self.state, heartbeat: self.heartbeat }
    }
}

impl RunningApp {
    /// Drains in-flight requests; the workers, and the facility actors on them, stop with it.
    pub async fn stop(self) {
        self.state.shutting_down.store(true, Ordering::Relaxed);
        self.handle.stop(true).await;
        let _ = self.task.await;
        if let Some(h) = self.heartbeat {
            h.stop().await;
        }
    }

    /// Facility actors alive now.
    pub fn active_facilities(&self) -> usize {
        self.state.directory.len()
    }

    /// A probe of [`Self::active_facilities`] that outlives `&self` (tests).
    pub fn active_facilities_probe(&self) -> impl Fn() -> usize + 'static {
        let state = self.state.clone();
        move || state.directory.len()
    }
}

/// Redis's SLOWLOG keeps the arguments of slow commands, and a token write's arguments
/// carry the patient's name, phone and ABHA address: anyone allowed `SLOWLOG GET` could
/// read them. The shipped redis.conf switches it off; say so loudly where it is on.
async fn warn_if_slowlog_on(store: &Store) {
    match store.slowlog_threshold().await {
        Some(us) if us >= 0 => tracing::warn!(
            slowlog_log_slower_than_us = us,
            "redis SLOWLOG is on: it keeps slow commands' arguments, which include patient fields \
             of token writes; set slowlog-log-slower-than -1 (deploy/redis/redis.conf does)"
        ),
        Some(_) => tracing::info!("redis SLOWLOG is off"),
        None => tracing::info!("redis does not report slowlog-log-slower-than; make sure SLOWLOG is off"),
    }
}

/// Forgets idle rate-limit keys now and then, so a long run of distinct patients and
/// clients cannot grow the limiters without bound.
fn spawn_limit_sweeper(state: web::Data<AppState>, every: Duration) {
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            state.limits.sweep();
            if state.shutting_down.load(Ordering::Relaxed) {
                return;
            }
        }
    });
}

/// Keeps `redis_up` current; scans fail fast with 503 while Redis is unreachable.
/// Each time Redis (re)appears it also checks that SLOWLOG is off (see [`warn_if_slowlog_on`]).
fn spawn_health_probe(store: Store, up: Arc<AtomicBool>, m: Metrics) {
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut audited = false;
        loop {
            tick.tick().await;
            let ok = store.ping().await;
            m.redis_up.set(if ok { 1.0 } else { 0.0 });
            if ok && !audited {
                warn_if_slowlog_on(&store).await;
            }
            // A Redis that went away may come back restarted with another config.
            audited = ok;
            if up.swap(ok, Ordering::Relaxed) != ok {
                if ok {
                    tracing::info!("redis reachable again");
                } else {
                    tracing::warn!("redis unreachable: scans answer 503 STORE_UNAVAILABLE");
                }
            }
            if Arc::strong_count(&up) == 1 {
                return;
            }
        }
    });
}
