//! PostgreSQL backend: one catalog shared by hosts on several machines and sites.
//!
//! - Placeholders: the named queries use `?`; they are rewritten to `$1, $2, …` once per
//!   statement text and the prepared statement is cached per connection.
//! - Values: PostgreSQL types every parameter from its context, so [`Value`] adapts to the
//!   type the server inferred (an integer bound where text is expected is sent as text; NULL
//!   fits any type), and columns of any numeric type (`SUM(bigint)` is `numeric`) read back
//!   as integers or reals.
//! - Isolation: write transactions are `SERIALIZABLE`, so the archive-copies check of a
//!   release (invariant 3) and the claiming of a request (invariant 4) hold across hosts; a
//!   serialization failure or deadlock is reported busy and [`crate::Catalog`] runs the whole
//!   transaction again. Read transactions are `REPEATABLE READ`: one consistent snapshot.
//! - Connection loss: a dropped connection is reopened with backoff at the next transaction.
//!   A commit whose answer never arrived is looked up after reconnecting (`txid_status` of the
//!   transaction id taken at `BEGIN`), so a completion is neither lost nor applied twice: it
//!   is reported committed, or rolled back and retried as a whole. A write transaction left
//!   running on the server by a connection it never saw drop (a network partition) is ended on
//!   reconnecting, so that its locks do not block the rerun.
//! - Passwords come from the URL, `PGPASSWORD`, or the password file (`PGPASSFILE`, default
//!   `~/.pgpass`), like libpq; URLs are printed with the password replaced by `***`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, Config, Statement};

use super::tls::{self, Connector};
use super::{Backend, DbError, Dialect, Patience, Row, TxMode, Value};

/// The channel cairnd listens on; the catalog's triggers notify it when work is requested.
pub const WAKE_CHANNEL: &str = "cairn_wake";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection.
const MAX_CACHED_STATEMENTS: usize = 512;

/// Whether `url` names a PostgreSQL catalog.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let auth = match auth.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:***@{host}"),
            None => auth.to_owned(),
        },
        None => auth.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.starts_with("password=") {
                        "password=***".to_owned()
                    } else {
                        kv.to_owned()
                    }
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{auth}{tail}")
}

/// Parses `url` into a connection config, filling in the password as libpq would, and the TLS
/// connector its `sslmode` and `sslrootcert` ask for.
fn connection_config(url: &str) -> Result<(Config, Connector), DbError> {
    let refused = |reason: String| DbError::Open {
        url: redact(url),
        reason,
    };
    let (rest, tls) = tls::split_url(url).map_err(refused)?;
    let connector = Connector::new(&tls).map_err(refused)?;
    let mut config = Config::from_str(&rest).map_err(|e| DbError::Open {
        url: redact(url),
        reason: format!("not a valid PostgreSQL URL: {e}"),
    })?;
    config.ssl_mode(tls.mode.client_mode());
    if config.get_password().is_none()
        && let Some(pw) = password_from_env_or_file(&config)
    {
        config.password(pw);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("cairn");
    }
    // Notice a dead server or link within about a minute instead of the kernel's two hours,
    // so a silently dropped connection does not hang a daemon.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        // …and a write the server never acknowledges.
        .tcp_user_timeout(Duration::from_secs(60));
    Ok((config, connector))
}

fn password_from_env_or_file(config: &Config) -> Option<String> {
    if let Ok(pw) = std::env::var("PGPASSWORD")
        && !pw.is_empty()
    {
        return Some(pw);
    }
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => PathBuf::from(f),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_owned();
    let db = config.get_dbname().unwrap_or(&user).to_owned();
    pgpass_lookup(&text, &host, &port, &db, &user)
}

/// The password for (host, port, database, user) in a `.pgpass` text: lines of
/// `host:port:database:user:password`, `*` matching anything, `\` escaping `:` and `\`.
fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pat: &str, v: &str| pat == "*" || pat == v;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return fields.pop();
        }
    }
    None
}

/// Rewrites `?` placeholders (outside quoted strings and identifiers) to `$1, $2, …`.
fn rewrite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push(c);
                }
                '?' => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                c => out.push(c),
            },
        }
    }
    out
}

pub struct PostgresBackend {
    url: String,
    config: Config,
    tls: Connector,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// The transaction id of the open write transaction and the server process running it,
    /// to look up its outcome if the connection drops during COMMIT.
    txid: Option<(i64, i32)>,
    /// A write transaction whose connection was lost: in a network partition the server may
    /// not notice for a long time, and the transaction keeps its locks until it does. It is
    /// ended on reconnecting, so that its rerun does not wait for those locks.
    stale: Option<(i64, i32)>,
    patience: Patience,
    /// Where the write-ahead log stood after the last write transaction committed here.
    commit_lsn: Option<u64>,
}

impl PostgresBackend {
    /// Connects to the catalog database at `url`. Failing to reach the server is an error at
    /// once: a command should say so rather than wait.
    pub fn open(url: &str) -> Result<Self, DbError> {
        let mut backend = Self::unconnected(url, None)?;
        let shown = backend.url.clone();
        let client = backend.config.connect(backend.tls.clone()).map_err(|e| {
            let mut reason = cause(&e);
            if reason.contains("password missing") {
                reason = "the server asks for a password and none was found: set PGPASSWORD, \
                          or add it to the password file (PGPASSFILE, else ~/.pgpass)"
                    .into();
            }
            DbError::Open { url: shown, reason }
        })?;
        backend.client = Some(client);
        Ok(backend)
    }

    /// A backend for the catalog database at `url` that connects when first used (with
    /// `connect_timeout`, unless the URL sets one).
    pub fn unconnected(url: &str, connect_timeout: Option<Duration>) -> Result<Self, DbError> {
        let (mut config, tls) = connection_config(url)?;
        if let Some(t) = connect_timeout
            && !url.contains("connect_timeout=")
        {
            config.connect_timeout(t);
        }
        Ok(PostgresBackend {
            url: redact(url),
            config,
            tls,
            client: None,
            statements: HashMap::new(),
            txid: None,
            stale: None,
            patience: Patience::default(),
            commit_lsn: None,
        })
    }

    fn connect(&mut self) -> Result<(), DbError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            close(self.client.take());
        }
        if self.client.is_none() {
            self.statements.clear();
            let mut client = self.config.connect(self.tls.clone()).map_err(|e| {
                DbError::Disconnected(format!("cannot connect to {}: {}", self.url, cause(&e)))
            })?;
            if let Some((txid, pid)) = self.stale.take() {
                end_stale_transaction(&mut client, txid, pid);
            }
            self.client = Some(client);
        }
        Ok(())
    }

    /// Like [`Self::connect`], retrying with backoff while the server cannot be reached, for as
    /// long as the patience allows.
    fn reconnect_patiently(&mut self) -> Result<&mut Client, DbError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let r = self.connect();
            match r {
                Ok(()) => break,
                Err(_) if start.elapsed() < self.patience.give_up && !self.patience.stopped() => {
                    // Not past the patience: the last try comes when it ends.
                    let left = self.patience.give_up.saturating_sub(start.elapsed());
                    std::thread::sleep(delay.min(left));
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Maps a client error; a lost connection is dropped so the next use reconnects.
    fn fail(&mut self, e: postgres::Error) -> DbError {
        let closed = e.is_closed() || self.client.as_ref().is_none_or(Client::is_closed);
        let err = map_err(&e, closed, &self.url);
        if err.is_disconnected() {
            close(self.client.take());
            self.statements.clear();
            self.stale = self.txid.take();
        }
        err
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let rewritten = rewrite_placeholders(sql);
        let client = self.connected()?;
        match client.prepare(&rewritten) {
            Ok(stmt) => {
                // Lists of `?` of every length make new statements: keep the cache bounded.
                if self.statements.len() >= MAX_CACHED_STATEMENTS {
                    self.statements.clear();
                }
                self.statements.insert(sql.to_owned(), stmt.clone());
                Ok(stmt)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The open connection; inside a transaction a lost one is not silently replaced.
    fn connected(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            close(self.client.take());
            return Err(DbError::Disconnected(format!(
                "the connection to {} was closed",
                self.url
            )));
        }
        Ok(self.client.as_mut().expect("checked above"))
    }

    /// After the connection dropped during COMMIT: reconnect and ask the server whether
    /// transaction `txid` committed.
    fn commit_outcome(&mut self, (txid, _): (i64, i32)) -> Result<(), DbError> {
        let start = Instant::now();
        loop {
            let client = self.reconnect_patiently()?;
            let status = client
                .query_one("SELECT txid_status($1)", &[&txid])
                .map(|r| r.get::<_, Option<String>>(0));
            match status {
                Ok(Some(s)) if s == "committed" => return Ok(()),
                Ok(Some(s)) if s == "aborted" => {
                    return Err(DbError::Disconnected(format!(
                        "the connection to {} was lost during COMMIT; the transaction was \
                         rolled back",
                        self.url
                    )));
                }
                // The old session has not ended yet on the server: wait for its outcome.
                Ok(Some(_)) if start.elapsed() < self.patience.give_up => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(_) => {
                    return Err(DbError::Other(format!(
                        "the connection to {} was lost during COMMIT and whether transaction \
                         {txid} committed cannot be told",
                        self.url
                    )));
                }
                Err(e) => {
                    let err = self.fail(e);
                    if !err.is_disconnected() {
                        return Err(err);
                    }
                }
            }
        }
    }
}

/// Ends the server session `pid` if it is still running write transaction `txid` (checked
/// against `backend_xid`, so a reused process id is never hit). Best effort: a session that
/// is gone, or that committed meanwhile, is left alone.
fn end_stale_transaction(client: &mut Client, txid: i64, pid: i32) {
    let _ = client.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid = $1 AND backend_xid::text = ($2::bigint % 4294967296)::text",
        &[&pid, &txid],
    );
}

/// Closes a connection on a thread of its own: the synchronous client blocks on its own
/// runtime to say goodbye, which panics on a thread that drives async tasks (cairnd drops
/// its catalog connections inside its runtime).
fn close(client: Option<Client>) {
    if let Some(client) = client {
        let _ = std::thread::spawn(move || drop(client)).join();
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.statements.clear();
        close(self.client.take());
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        close(self.client.take());
    }
}

/// The innermost reason of a client error, without the wrapping "error connecting to server".
fn cause(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    if s.contains("invalid peer certificate") {
        s.push_str(
            " (the server's certificate is refused: it must be signed by an authority in \
             sslrootcert and, with sslmode=verify-full, name the host in the URL)",
        );
    }
    s
}

fn map_err(e: &postgres::Error, closed: bool, url: &str) -> DbError {
    let Some(code) = e.code() else {
        return if closed {
            DbError::Disconnected(format!("{url}: {}", cause(e)))
        } else {
            DbError::Other(cause(e))
        };
    };
    let msg = cause(e);
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        DbError::Busy(msg)
    } else if *code == SqlState::UNIQUE_VIOLATION
        || *code == SqlState::FOREIGN_KEY_VIOLATION
        || *code == SqlState::NOT_NULL_VIOLATION
        || *code == SqlState::CHECK_VIOLATION
    {
        DbError::Constraint(msg)
    } else if code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || closed
    {
        DbError::Disconnected(format!("{url}: {msg}"))
    } else {
        DbError::Other(msg)
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let text_like = matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        );
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::NUMERIC => {
                    encode_numeric(*i, out);
                    Ok(IsNull::No)
                }
                _ if text_like => i.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer to a parameter of type {ty}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::INT8 if f.fract() == 0.0 => (*f as i64).to_sql(ty, out),
                _ if text_like => f.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind a real to a parameter of type {ty}").into()),
            },
            Value::Text(s) => {
                if text_like {
                    s.as_str().to_sql(ty, out)
                } else {
                    Err(format!("cannot bind text to a parameter of type {ty}").into())
                }
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A column read back as a [`Value`], whatever its PostgreSQL type.
struct Column(Value);

impl<'a> FromSql<'a> for Column {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Column(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f32::from_sql(ty, raw)?.into()),
            Type::NUMERIC => numeric(raw)?,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::Text(<&str>::from_sql(ty, raw)?.to_owned())
            }
            _ => return Err(format!("unsupported column type {ty}").into()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Encodes an integer as PostgreSQL's binary `numeric`: base-10000 digits, most significant
/// first, with the weight of the first.
fn encode_numeric(v: i64, out: &mut bytes::BytesMut) {
    let mut digits = Vec::new();
    let mut rest = v.unsigned_abs();
    while rest > 0 {
        digits.push((rest % 10_000) as u16);
        rest /= 10_000;
    }
    digits.reverse();
    let weight = digits.len().saturating_sub(1) as u16;
    let sign: u16 = if v < 0 { 0x4000 } else { 0 };
    for word in [digits.len() as u16, weight, sign, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

/// Decodes PostgreSQL's binary `numeric` (what `SUM` of a `bigint` column returns): an
/// integer when it has no fractional digits and fits, a real otherwise.
fn numeric(raw: &[u8]) -> Result<Value, Box<dyn StdError + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn StdError + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let negative = sign == 0x4000;
    let mut int: Option<i128> = Some(0);
    let mut real = 0f64;
    for i in 0..ndigits {
        let d = word(8 + 2 * i)?;
        let power = weight - i as i32;
        real += f64::from(d) * 10f64.powi(power * 4);
        int = match int {
            Some(acc) if power >= 0 => u32::try_from(power * 4)
                .ok()
                .and_then(|p| 10i128.checked_pow(p))
                .and_then(|m| i128::from(d).checked_mul(m))
                .and_then(|v| acc.checked_add(v)),
            _ if d == 0 => int,
            _ => None,
        };
    }
    if dscale == 0
        && let Some(v) = int.and_then(|v| i64::try_from(if negative { -v } else { v }).ok())
    {
        return Ok(Value::Int(v));
    }
    Ok(Value::Real(if negative { -real } else { real }))
}

impl Backend for PostgresBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let client = self.connected()?;
        client.execute(&stmt, &refs).map_err(|e| self.fail(e))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let client = self.connected()?;
        let rows = client.query(&stmt, &refs).map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<_, Column>(i)
                            .map(|c| c.0)
                            .map_err(|e| DbError::Decode(cause(&e)))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), DbError> {
        let client = self.connected()?;
        let r = client.batch_execute(sql).map_err(|e| self.fail(e));
        // DDL may change what a cached statement returns.
        self.statements.clear();
        r
    }

    fn begin(&mut self, mode: TxMode) -> Result<(), DbError> {
        self.txid = None;
        let client = self.reconnect_patiently()?;
        let r = match mode {
            TxMode::Read => client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .map(|()| None),
            TxMode::Write => client
                .simple_query(
                    "BEGIN ISOLATION LEVEL SERIALIZABLE; \
                     SELECT txid_current(), pg_backend_pid()",
                )
                .map(|msgs| {
                    msgs.iter().find_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => Some((
                            r.get(0)?.parse::<i64>().ok()?,
                            r.get(1)?.parse::<i32>().ok()?,
                        )),
                        _ => None,
                    })
                }),
        };
        match r {
            Ok(txid) => {
                self.txid = txid;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn commit(&mut self) -> Result<(), DbError> {
        let txid = self.txid;
        let client = self.connected()?;
        if txid.is_none() {
            return client.batch_execute("COMMIT").map_err(|e| self.fail(e));
        }
        // A write transaction: where the log stands once it committed comes back with the
        // commit's answer, in the same round trip (the SELECT runs after the COMMIT, in a
        // transaction of its own).
        match client.simple_query("COMMIT; SELECT pg_current_wal_lsn()::text") {
            Ok(msgs) => {
                self.txid = None;
                self.commit_lsn = msgs.iter().find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(parse_lsn),
                    _ => None,
                });
                Ok(())
            }
            Err(e) => {
                let err = self.fail(e);
                self.txid = None;
                match (err.is_disconnected(), txid) {
                    (true, Some(txid)) => {
                        self.commit_outcome(txid)?;
                        // Committed: the log is now at or past it.
                        self.commit_lsn = self
                            .client
                            .as_mut()
                            .and_then(|c| {
                                c.query_one("SELECT pg_current_wal_lsn()::text", &[]).ok()
                            })
                            .and_then(|r| r.get::<_, Option<String>>(0))
                            .and_then(|t| parse_lsn(&t));
                        Ok(())
                    }
                    _ => Err(err),
                }
            }
        }
    }

    fn rollback(&mut self) -> Result<(), DbError> {
        self.txid = None;
        match self.client.as_mut() {
            Some(c) if !c.is_closed() => c.batch_execute("ROLLBACK").map_err(|e| self.fail(e)),
            // A lost connection took its transaction with it.
            _ => Ok(()),
        }
    }

    fn set_patience(&mut self, patience: Patience) {
        self.patience = patience;
    }

    fn ensure_connected(&mut self) -> Result<(), DbError> {
        self.reconnect_patiently().map(|_| ())
    }

    fn last_commit_lsn(&self) -> Option<u64> {
        self.commit_lsn
    }
}

/// A write-ahead log position as PostgreSQL prints it (`16/B374D848`), as one number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A write-ahead log position printed as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A dedicated connection that LISTENs on [`WAKE_CHANNEL`], for cairnd to wake when another
/// process asks for work. It reconnects by itself after the server went away.
pub struct Listener {
    url: String,
    config: Config,
    tls: Connector,
    client: Option<Client>,
}

/// What [`Listener::wait`] heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Nothing within the timeout.
    Nothing,
    /// The payloads of the notifications received.
    Wake(Vec<String>),
    /// The connection was (re)made: notifications sent meanwhile were missed.
    Connected,
}

impl Listener {
    pub fn new(url: &str) -> Result<Self, DbError> {
        let (config, tls) = connection_config(url)?;
        Ok(Listener {
            url: redact(url),
            config,
            tls,
            client: None,
        })
    }

    /// The catalog URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the primary's write-ahead log stands now: at or past every transaction whose
    /// notification was heard, since a notification is sent at commit. `None` if it cannot be
    /// asked (the next [`Listener::wait`] finds out why).
    pub fn position(&mut self) -> Option<u64> {
        let client = self.client.as_mut().filter(|c| !c.is_closed())?;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .ok()?;
        parse_lsn(&row.get::<_, String>(0))
    }

    /// Waits up to `timeout` for notifications. A connection error drops the connection;
    /// the next call connects again.
    pub fn wait(&mut self, timeout: Duration) -> Result<Heard, DbError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            close(self.client.take());
            let mut client = self.config.connect(self.tls.clone()).map_err(|e| {
                DbError::Disconnected(format!("cannot connect to {}: {}", self.url, cause(&e)))
            })?;
            client
                .batch_execute(&format!("LISTEN {WAKE_CHANNEL}"))
                .map_err(|e| map_err(&e, true, &self.url))?;
            self.client = Some(client);
            return Ok(Heard::Connected);
        }
        let client = self.client.as_mut().expect("connected above");
        let mut payloads = Vec::new();
        let mut failed = None;
        {
            use postgres::fallible_iterator::FallibleIterator;
            let mut notes = client.notifications();
            let first = notes.timeout_iter(timeout).next();
            match first {
                Ok(Some(n)) => {
                    payloads.push(n.payload().to_owned());
                    // Take whatever else already arrived, without waiting again.
                    let mut rest = notes.iter();
                    loop {
                        match rest.next() {
                            Ok(Some(n)) => payloads.push(n.payload().to_owned()),
                            Ok(None) => break,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            close(self.client.take());
            return Err(map_err(&e, true, &self.url));
        }
        if payloads.is_empty() {
            // timeout_iter also ends when the connection closed: find out which.
            if client.is_closed() {
                close(self.client.take());
                return Err(DbError::Disconnected(format!(
                    "the listening connection to {} was closed",
                    self.url
                )));
            }
            return Ok(Heard::Nothing);
        }
        Ok(Heard::Wake(payloads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            rewrite_placeholders(
                "SELECT a FROM t WHERE b = ? AND c LIKE ? ESCAPE '\\' AND d = '?'"
            ),
            "SELECT a FROM t WHERE b = $1 AND c LIKE $2 ESCAPE '\\' AND d = '?'"
        );
        assert_eq!(
            rewrite_placeholders("VALUES (?, ?, ?)"),
            "VALUES ($1, $2, $3)"
        );
    }

    #[test]
    fn wal_positions_parse_and_print_as_postgresql_does() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://cairn:s3cret@db.example:5432/cairn"),
            "postgres://cairn:***@db.example:5432/cairn"
        );
        assert_eq!(
            redact("postgres://cairn@db.example/cairn"),
            "postgres://cairn@db.example/cairn"
        );
        assert_eq!(
            redact("postgresql://db/cairn?user=cairn&password=s3cret"),
            "postgresql://db/cairn?user=cairn&password=***"
        );
    }

    #[test]
    fn pgpass_matches_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:cairn:cairn:nope\n\
                    db.example:*:cairn:cairn:pa\\:ss\\\\word\n";
        assert_eq!(
            pgpass_lookup(text, "db.example", "5433", "cairn", "cairn").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            pgpass_lookup(text, "db.example", "5432", "x", "cairn"),
            None
        );
    }

    #[test]
    fn numeric_decodes_integers_and_fractions() {
        // 123456789 = 1|2345|6789 base 10000, weight 2.
        let raw = [0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29, 0x1a, 0x85];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(123_456_789));
        // -1.5 = 1|5000, weight 0, negative, dscale 1.
        let raw = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(numeric(&raw).unwrap(), Value::Real(-1.5));
        // 0: no digits.
        let raw = [0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(0));
    }

    #[test]
    fn numeric_round_trips_integers() {
        for v in [
            0i64,
            1,
            -1,
            9_999,
            10_000,
            123_456_789,
            -987_654_321_012,
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = bytes::BytesMut::new();
            encode_numeric(v, &mut buf);
            assert_eq!(numeric(&buf).unwrap(), Value::Int(v), "{v}");
        }
    }

    #[test]
    fn bad_urls_name_the_problem() {
        let err = PostgresBackend::open("postgres://cairn@db.example:notaport/cairn")
            .err()
            .expect("an invalid port is refused");
        assert!(
            err.to_string().contains("not a valid PostgreSQL URL"),
            "{err}"
        );
    }
}
