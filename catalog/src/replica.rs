//! Reading from a hot standby at this site, writing to the primary.
//!
//! A site far from the catalog's primary (`catalog.url`) keeps a PostgreSQL hot standby of it
//! (`catalog.replica`), fed by physical streaming replication. A [`Routing`] sends a
//! process's reads there ([`crate::Catalog::read`]) and its writes to the primary
//! ([`crate::Catalog::write`]), so a lookup costs a round trip on the site's LAN, not across
//! the link between sites.
//!
//! - **Read your own writes.** Each write transaction brings back, with its commit, where the
//!   primary's write-ahead log stood once it had committed (`pg_current_wal_lsn()`). The
//!   [`Routing`] keeps the newest such position of the process (all connections of a
//!   [`crate::Pool`] share one routing). Before a read goes to the replica, the replica must
//!   have replayed that far (`pg_last_wal_replay_lsn()`): the read waits for it up to
//!   `catalog.replica_wait` (the link's one-way delay, typically), and if it has not got
//!   there by then, the read goes to the primary, as do later reads until the replica has
//!   caught up. The position is checked before the read's transaction begins, so its
//!   snapshot includes the write. Once the replica is known to be past a position, reads pay
//!   nothing more for it. [`crate::Catalog::wait_replicated`] waits for the replica to reach a
//!   process's latest write, so that other processes of the site see it too (the CLI does
//!   this before it exits).
//! - **Lag is bounded.** At most once a second a read asks the replica where it stands
//!   (one local round trip): whether it is in recovery, what it has received and replayed,
//!   when it replayed its last transaction and whether it streams from the primary. Its lag is
//!   0 while it has replayed all it received and streams; when it is behind, the time since it
//!   was first seen behind (capped by the age of its last replayed transaction); when it does
//!   not stream, the time since it stopped. A replica lagging more than
//!   `catalog.replica_max_lag` or that cannot be reached is not read from; reads go to the
//!   primary, and the log says so once per change.
//! - **Never wait on another site when the site has an answer.** When a read must go to the
//!   primary and the primary cannot be reached (a cut link), the replica answers if it can
//!   be reached, however far behind (it is the best answer there is), and for the next 5 s
//!   reads go there directly instead of trying the primary again.
//! - **A replica that is not a standby is refused** (`pg_is_in_recovery()` false): opening
//!   the catalog fails with a message naming `catalog.replica`.
//!
//! With SQLite, or PostgreSQL without a replica, a [`Routing`] is just the URL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::config::CatalogConfig;
use crate::db::postgres::{self, PostgresBackend, format_lsn, parse_lsn};
use crate::db::{Backend, DbError, Patience};
use crate::error::{CatalogError, Result};

/// How often a replica in use is asked where it stands.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often one that could not be used is asked again.
const RECHECK_UNUSABLE: Duration = Duration::from_secs(2);
/// How long reads go straight to the replica after the primary could not be reached.
const PRIMARY_DOWN_FOR: Duration = Duration::from_secs(5);
/// The replica is at this site: one that does not answer within this is as good as down.
const REPLICA_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a read waiting for the replica to replay a write asks it again.
const POLL: Duration = Duration::from_millis(2);

/// What is asked of the replica to know where it stands.
const PROBE: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
    pg_last_wal_receive_lsn()::text, \
    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, \
    (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming')";

/// Where a process reads and writes the catalog: the primary (`catalog.url`) and, at a distant
/// site, the hot standby it reads from (`catalog.replica`). Clones share what is known of the
/// replica and the process's latest write, so give every connection of a process the same
/// routing (a [`crate::Pool`] does).
#[derive(Clone)]
pub struct Routing {
    url: String,
    replica: Option<Arc<Replica>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("url", &postgres::redact(&self.url))
            .field("replica", &self.replica.as_ref().map(|r| &r.shown))
            .finish()
    }
}

/// The replica of a [`Routing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaOptions {
    /// `catalog.replica`.
    pub url: String,
    /// `catalog.replica_max_lag`.
    pub max_lag: Duration,
    /// `catalog.replica_wait`.
    pub wait: Duration,
}

impl Routing {
    /// Everything to and from the catalog at `url` (SQLite, or a PostgreSQL primary).
    pub fn primary(url: &str) -> Routing {
        Routing {
            url: url.to_owned(),
            replica: None,
        }
    }

    /// Writes to the primary at `url`, reads from the replica.
    pub fn with_replica(url: &str, replica: ReplicaOptions) -> Routing {
        Routing {
            url: url.to_owned(),
            replica: Some(Arc::new(Replica::new(replica))),
        }
    }

    /// The routing `[catalog]` describes.
    pub fn from_config(c: &CatalogConfig) -> Routing {
        match &c.replica {
            None => Routing::primary(&c.url),
            Some(r) => Routing::with_replica(
                &c.url,
                ReplicaOptions {
                    url: r.clone(),
                    max_lag: c.replica_max_lag.0,
                    wait: c.replica_wait.0,
                },
            ),
        }
    }

    /// The primary's URL (`catalog.url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Whether reads are answered at this site, as far as the process can tell without a
    /// query: by a SQLite catalog, or by a replica in use. A PostgreSQL primary without a
    /// replica may be across a link; so is the primary a lagging or unreachable replica
    /// leaves reads to. Decides what is worth a read each time instead of being kept for a
    /// while (a directory's listing version at every `opendir`).
    pub fn reads_here(&self) -> bool {
        match &self.replica {
            Some(r) => r.health() == ReplicaState::InUse,
            None => !postgres::is_postgres_url(&self.url),
        }
    }

    /// What the last check of the replica found (no query is made); `None` without one.
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        self.replica.as_ref().map(|r| r.status())
    }

    /// Makes the process's reads see the primary as it was at log position `lsn` at least
    /// (as after a write of its own): for news heard from the primary, e.g. a notification of
    /// a request made elsewhere, which the replica may not have replayed yet. No-op without a
    /// replica.
    pub fn read_at_least(&self, lsn: u64) {
        if let Some(r) = &self.replica {
            r.note_written(lsn);
        }
    }

    /// Whether a write of this process has committed on the primary.
    pub fn has_written(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|r| r.written.load(Ordering::SeqCst) > 0)
    }

    pub(crate) fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }
}

/// How a replica was found at its last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Not checked yet.
    #[default]
    Unknown,
    /// Reads go to it.
    InUse,
    /// It lags more than `catalog.replica_max_lag`: reads go to the primary.
    Lagging,
    /// It cannot be reached: reads go to the primary.
    Unreachable,
    /// It is not in recovery (not a standby): never read from.
    NotStandby,
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaState::Unknown => "not checked yet",
            ReplicaState::InUse => "in use",
            ReplicaState::Lagging => "lagging, not used",
            ReplicaState::Unreachable => "unreachable, not used",
            ReplicaState::NotStandby => "not a standby, not used",
        })
    }
}

/// What is known of a replica: for `cairn status` and cairnd's `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaStatus {
    /// The URL, password hidden.
    pub url: String,
    pub state: ReplicaState,
    /// Why it cannot be reached, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How far behind the primary it is (seconds); unknown when unreachable.
    pub lag_seconds: Option<f64>,
    /// Whether it streams from the primary (false: cut off, and falling behind).
    pub streaming: bool,
    /// How far it has replayed the primary's log.
    pub replayed: Option<String>,
    /// `catalog.replica_max_lag`, seconds.
    pub max_lag_seconds: f64,
}

/// A standby streaming from the primary, as the primary sees it (`pg_stat_replication`): what
/// `cairn status` lists, whichever site it runs at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standby {
    /// The standby's `application_name` (its `cluster_name`, or `walreceiver`).
    pub name: String,
    /// Where it connects from (through the link, for a distant site).
    pub address: Option<String>,
    /// `streaming`, `catchup`, `startup`…; `None` when the catalog's role may not see it
    /// (grant it `pg_monitor`).
    pub state: Option<String>,
    /// Bytes of the primary's log it has not replayed yet.
    pub behind_bytes: Option<u64>,
    /// How long its last replayed change took to get there (`replay_lag`; none while idle).
    pub lag_seconds: Option<f64>,
}

impl Standby {
    pub(crate) const QUERY: &'static str = "SELECT COALESCE(application_name, ''), \
        client_addr::text, state, \
        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
        EXTRACT(EPOCH FROM replay_lag)::float8 \
        FROM pg_stat_replication ORDER BY application_name, client_addr";

    pub(crate) fn from_row(r: &crate::db::Row) -> std::result::Result<Standby, DbError> {
        Ok(Standby {
            name: r.get(0)?,
            address: r.get(1)?,
            state: r.get(2)?,
            behind_bytes: r.get::<Option<i64>>(3)?.map(|b| b.max(0) as u64),
            lag_seconds: r.get(4)?,
        })
    }
}

/// What is known of the replica, shared by every connection of a routing.
pub(crate) struct Replica {
    pub(crate) options: ReplicaOptions,
    /// The URL, password hidden.
    pub(crate) shown: String,
    /// The end of the newest write of this process on the primary (a log position; 0: none).
    written: AtomicU64,
    /// The furthest the replica has been seen to have replayed.
    replayed: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the replica was last checked, or a check of it began.
    checked: Option<Instant>,
    /// When the replica last answered a check (or failed to).
    probed: Option<Instant>,
    health: ReplicaState,
    reason: Option<String>,
    lag: Option<Duration>,
    streaming: bool,
    /// Since when it has been seen behind what it received.
    behind_since: Option<Instant>,
    /// Since when it has been seen not streaming.
    cut_since: Option<Instant>,
    /// The newest write position a read waited for in vain: reads needing it go to the
    /// primary without waiting again, until the replica is past it.
    waited_in_vain: u64,
    /// The primary could not be reached: until then, reads go to the replica whatever its lag.
    primary_down_until: Option<Instant>,
    /// What the log last said of the replica, so it says each change once.
    reported: Option<String>,
}

/// Where the replica stands, as it says.
struct Probe {
    in_recovery: bool,
    replay: Option<u64>,
    receive: Option<u64>,
    /// Seconds since the last transaction it replayed was committed on the primary.
    replay_age: Option<f64>,
    streaming: bool,
}

impl Probe {
    /// It has received more of the log than it has replayed.
    fn behind(&self) -> bool {
        matches!((self.replay, self.receive), (Some(a), Some(b)) if a < b)
    }
}

impl Replica {
    fn new(options: ReplicaOptions) -> Replica {
        Replica {
            shown: postgres::redact(&options.url),
            options,
            written: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Where the last check left it (no query, nothing copied).
    fn health(&self) -> ReplicaState {
        self.lock().health
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of this process committed on the primary with the log at `lsn`.
    pub(crate) fn note_written(&self, lsn: u64) {
        self.written.fetch_max(lsn, Ordering::SeqCst);
        self.lock().primary_down_until = None;
    }

    pub(crate) fn status(&self) -> ReplicaStatus {
        let st = self.lock();
        let replayed = self.replayed.load(Ordering::SeqCst);
        ReplicaStatus {
            url: self.shown.clone(),
            state: st.health,
            reason: st.reason.clone(),
            lag_seconds: st.lag.map(|l| l.as_secs_f64()),
            streaming: st.streaming,
            replayed: (replayed > 0).then(|| format_lsn(replayed)),
            max_lag_seconds: self.options.max_lag.as_secs_f64(),
        }
    }

    /// Records what a check found, and logs a change of state once.
    fn update(&self, probe: std::result::Result<Probe, DbError>) {
        self.record(probe, false);
        self.report(&mut self.lock());
    }

    /// Records what a check found. `replaying`: the replica was just seen replaying past what
    /// it had received at the check before, so a lag starts now if at all. Returns true when
    /// the replica was seen behind for the first time and that already makes it lag more than
    /// allowed, which a second look should confirm.
    fn record(&self, probe: std::result::Result<Probe, DbError>, replaying: bool) -> bool {
        let now = Instant::now();
        let mut st = self.lock();
        st.checked = Some(now);
        let previous = st.probed.replace(now);
        match probe {
            Err(e) => {
                st.health = ReplicaState::Unreachable;
                st.reason = Some(e.to_string());
                st.lag = None;
                st.streaming = false;
                false
            }
            Ok(p) if !p.in_recovery => {
                st.health = ReplicaState::NotStandby;
                st.reason = None;
                st.lag = None;
                st.streaming = false;
                false
            }
            Ok(p) => {
                if let Some(r) = p.replay {
                    self.replayed.fetch_max(r, Ordering::SeqCst);
                }
                let age = p.replay_age.map(|s| Duration::from_secs_f64(s.max(0.0)));
                // When did it start? After the last check that saw it fine, and no earlier than
                // the last transaction it replayed was committed (at a process's first check,
                // that age is all there is to go by).
                let started = match (previous, replaying) {
                    (_, true) => now,
                    (Some(t), false) => t,
                    (None, false) => now.checked_sub(age.unwrap_or_default()).unwrap_or(now),
                };
                let behind = p.behind();
                let newly_behind = behind && st.behind_since.is_none();
                if replaying {
                    st.behind_since = behind.then_some(now);
                } else if behind {
                    st.behind_since.get_or_insert(started);
                } else {
                    st.behind_since = None;
                }
                if p.streaming {
                    st.cut_since = None;
                } else {
                    st.cut_since.get_or_insert(started);
                }
                let since = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| now - t);
                let capped = |d: Duration| age.map_or(d, |a| a.min(d));
                let lag = if !p.streaming {
                    since(st.cut_since)
                } else if behind {
                    capped(since(st.behind_since))
                } else {
                    Duration::ZERO
                };
                st.lag = Some(lag);
                st.streaming = p.streaming;
                st.reason = None;
                let lagging = lag > self.options.max_lag;
                st.health = if lagging {
                    ReplicaState::Lagging
                } else {
                    ReplicaState::InUse
                };
                lagging && newly_behind && p.streaming
            }
        }
    }

    fn report(&self, st: &mut State) {
        let said = match st.health {
            ReplicaState::Unknown => return,
            ReplicaState::InUse => format!("Reading the catalog from the replica {}.", self.shown),
            ReplicaState::Lagging => format!(
                "The catalog replica {} lags more than catalog.replica_max_lag ({}s): reading \
                 from the primary until it catches up.",
                self.shown,
                self.options.max_lag.as_secs()
            ),
            ReplicaState::Unreachable => format!(
                "Cannot reach the catalog replica {}: reading from the primary until it is back \
                 ({}).",
                self.shown,
                st.reason.as_deref().unwrap_or("no reason given")
            ),
            ReplicaState::NotStandby => format!(
                "catalog.replica {} is not a hot standby (it is not in recovery): reading from \
                 the primary.",
                self.shown
            ),
        };
        if st.reported.as_deref() != Some(said.as_str()) {
            match st.health {
                ReplicaState::InUse => info!("{said}"),
                _ => warn!("{said}"),
            }
            st.reported = Some(said);
        }
    }

    /// A read met an error on the replica: it is not used until the next check finds it.
    pub(crate) fn unreachable(&self, e: &dyn std::fmt::Display) {
        self.update(Err(DbError::Disconnected(e.to_string())));
    }

    /// The primary could not be reached: reads use the replica for a while, whatever its lag.
    pub(crate) fn primary_unreachable(&self, e: &DbError) {
        let mut st = self.lock();
        st.primary_down_until = Some(Instant::now() + PRIMARY_DOWN_FOR);
        let said = format!(
            "Cannot reach the catalog's primary ({e}): reading from the replica {} (lag {}).",
            self.shown,
            st.lag.map_or_else(
                || "unknown".to_owned(),
                |l| format!("{:.1}s", l.as_secs_f64())
            )
        );
        if st.reported.as_deref() != Some(said.as_str()) {
            warn!("{said}");
            st.reported = Some(said);
        }
    }
}

/// Where one read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    Replica,
    /// The primary; `fallback`: the replica can be reached, and answers if the primary cannot.
    Primary {
        fallback: bool,
    },
}

/// One connection's link to the replica.
pub(crate) struct ReplicaLink {
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) replica: Arc<Replica>,
}

impl ReplicaLink {
    /// A link that connects when first used; a replica that does not answer fails at once
    /// (the reads go to the primary), never waits.
    pub(crate) fn new(replica: Arc<Replica>) -> Result<ReplicaLink> {
        let mut backend =
            PostgresBackend::unconnected(&replica.options.url, Some(REPLICA_CONNECT_TIMEOUT))
                .map_err(|e| match e {
                    DbError::Open { url, reason } => {
                        CatalogError::Invalid(format!("invalid catalog.replica {url}: {reason}"))
                    }
                    e => e.into(),
                })?;
        backend.set_patience(Self::no_patience());
        Ok(ReplicaLink {
            backend: Box::new(backend),
            replica,
        })
    }

    pub(crate) fn no_patience() -> Patience {
        Patience::new(Duration::ZERO)
    }

    fn probe(&mut self) -> std::result::Result<Probe, DbError> {
        self.backend.ensure_connected()?;
        let rows = self.backend.query(PROBE, &[])?;
        let r = rows
            .first()
            .ok_or_else(|| DbError::Decode("no row from the replica check".into()))?;
        let lsn = |i: usize| -> std::result::Result<Option<u64>, DbError> {
            Ok(r.get::<Option<String>>(i)?.as_deref().and_then(parse_lsn))
        };
        Ok(Probe {
            in_recovery: r.get(0)?,
            replay: lsn(1)?,
            receive: lsn(2)?,
            replay_age: r.get(3)?,
            streaming: r.get::<i64>(4)? > 0,
        })
    }

    /// Asks the replica where it stands, now.
    pub(crate) fn check_now(&mut self) -> ReplicaState {
        let probe = self.probe();
        let received = probe.as_ref().ok().and_then(|p| p.receive);
        if self.replica.record(probe, false) {
            // Seen behind for the first time since a quiet spell, it may only be replaying a
            // burst of writes: a second look tells a replica that replays from one that
            // does not.
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(50));
                let again = self.probe();
                let replaying = matches!((&again, received),
                    (Ok(p), Some(r)) if p.replay.is_some_and(|x| x >= r));
                if replaying || again.is_err() {
                    self.replica.record(again, replaying);
                    break;
                }
            }
        }
        let mut st = self.replica.lock();
        self.replica.report(&mut st);
        st.health
    }

    /// Asks the replica where it stands if the last check is old enough.
    fn check(&mut self) {
        {
            let mut st = self.replica.lock();
            let every = if st.health == ReplicaState::InUse {
                CHECK_EVERY
            } else {
                RECHECK_UNUSABLE
            };
            if st.checked.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            // Other threads go on with what is known meanwhile.
            st.checked = Some(Instant::now());
        }
        self.check_now();
    }

    /// Where the next read goes; see the module note.
    pub(crate) fn choose(&mut self) -> Choice {
        self.check();
        let replica = self.replica.clone();
        let need = replica.written.load(Ordering::SeqCst);
        {
            let st = replica.lock();
            let reachable = matches!(st.health, ReplicaState::InUse | ReplicaState::Lagging);
            if reachable && st.primary_down_until.is_some_and(|t| t > Instant::now()) {
                return Choice::Replica;
            }
            if st.health != ReplicaState::InUse {
                return Choice::Primary {
                    fallback: reachable,
                };
            }
            if replica.replayed.load(Ordering::SeqCst) >= need {
                return Choice::Replica;
            }
            if st.waited_in_vain >= need {
                return Choice::Primary { fallback: true };
            }
        }
        if self.wait_replayed(need, replica.options.wait) {
            Choice::Replica
        } else {
            let mut st = replica.lock();
            st.waited_in_vain = st.waited_in_vain.max(need);
            Choice::Primary { fallback: true }
        }
    }

    /// Waits up to `wait` for the replica to replay the log up to `need`; whether it did.
    pub(crate) fn wait_replayed(&mut self, need: u64, wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.replica.replayed.load(Ordering::SeqCst) >= need {
                return true;
            }
            let replay = self
                .backend
                .ensure_connected()
                .and_then(|()| {
                    self.backend
                        .query("SELECT pg_last_wal_replay_lsn()::text", &[])
                })
                .and_then(|rows| match rows.first() {
                    Some(r) => Ok(r.get::<Option<String>>(0)?),
                    None => Ok(None),
                });
            match replay {
                Ok(Some(text)) => {
                    if let Some(lsn) = parse_lsn(&text) {
                        self.replica.replayed.fetch_max(lsn, Ordering::SeqCst);
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    self.replica.unreachable(&e);
                    return false;
                }
            }
            if self.replica.replayed.load(Ordering::SeqCst) >= need {
                return true;
            }
            if start.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The newest write of this process.
    pub(crate) fn written(&self) -> u64 {
        self.replica.written.load(Ordering::SeqCst)
    }
}
