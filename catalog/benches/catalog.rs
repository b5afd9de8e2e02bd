//! Catalog benchmarks: bulk registration, path lookup, listing a 10,000-entry directory and
//! `node stats`, each next to a baseline measured in the same run on the same machine.
//!
//! Our rule is no timed assertions: this prints numbers and ratios, it never fails on a time.
//! See `BENCHMARKING.md` at the workspace root for what each workload measures and how to run
//! it, and `BENCHMARKS.md` for the latest results.
//!
//! The catalog (default 1,000,000 files, `CAIRN_BENCH_FILES`) is built once, in batches of
//! `CAIRN_BENCH_BATCH` files per write transaction, and that build is the registration
//! measurement (timed with `Instant`, as is its raw-SQLite baseline). Criterion then measures
//! lookup, listing and node stats on the finished catalog. A summary table with the ratios and
//! the targets is printed at the end.
//!
//! Without `--bench` (`cargo test --benches`, `--list`) the default size is 20,000 files so
//! that a smoke run stays quick.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_catalog::Catalog;
use cairn_catalog::catalog::{NewFile, NewNode};
use cairn_catalog::db::Dialect;
use cairn_catalog::model::{Dir, DirId, File, Has, IoClass, NodeId};
use cairn_catalog::schema::{MIGRATIONS, render};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, params};

/// Files per hourly directory: one every 10 s.
const FILES_PER_HOUR: usize = 360;
/// Files in the one big directory (fewer if the whole catalog is smaller).
const BIG_DIR_FILES: usize = 10_000;
/// 2025-01-01T00:00:00Z, where the synthetic acquisitions start.
const EPOCH_2025: i64 = 1_735_689_600;
/// The registration time recorded in every row.
const NOW: i64 = 1_760_000_000;
/// Hourly directories mirrored in the native tree used by the lookup baseline: a `stat` costs
/// what the path's depth costs, not what the tree's size does, and creating files is slow.
const NATIVE_HOURS: usize = 8;
/// Distinct paths the lookup benchmarks cycle through.
const LOOKUP_SAMPLES: usize = 4096;

const TARGET_FILES_PER_S: f64 = 50_000.0;
const TARGET_LOOKUP: Duration = Duration::from_micros(50);
const TARGET_STATS: Duration = Duration::from_secs(1);

/// (workload, benchmark id, [(baseline, benchmark id)], target) of one summary line.
type SummaryRow<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], String);

/// A file row as the raw baselines read it: the columns of `File::COLUMNS`.
type RawFile = (i64, i64, String, String, String, i64, String, i64, i64);

// ---- the synthetic archive ----

/// The shape of the archive: `files` files, the last `big` of them in one directory.
#[derive(Clone, Copy)]
struct Shape {
    files: usize,
    big: usize,
    batch: usize,
}

/// One synthetic file, owning its strings.
struct Gen {
    path: String,
    acq: String,
    size: u64,
    md5: String,
    mtime: i64,
}

impl Gen {
    fn as_new(&self) -> NewFile {
        NewFile {
            path: self.path.clone(),
            acq: self.acq.clone(),
            size: self.size,
            md5: self.md5.clone(),
            mtime: self.mtime,
            own: Default::default(),
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// (year, month, day) of a day number counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY/MM/DD/HH/mmss.dat`, one acquisition per day, for hourly file `i`.
fn hourly_path(i: usize) -> (String, String, i64) {
    let hour = (i / FILES_PER_HOUR) as i64;
    let secs = (i % FILES_PER_HOUR) as i64 * 10;
    let t = EPOCH_2025 + hour * 3600 + secs;
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let h = hour % 24;
    let path = format!(
        "{y:04}/{m:02}/{d:02}/{h:02}/{:02}{:02}.dat",
        secs / 60,
        secs % 60
    );
    (path, format!("day-{y:04}-{m:02}-{d:02}"), t)
}

/// The one directory holding the big directory's files.
const BIG_DIR: &str = "2025/01/01/frames";

fn big_name(j: usize) -> String {
    format!("{j:05}.dat")
}

impl Shape {
    fn hourly(&self) -> usize {
        self.files - self.big
    }

    fn file(&self, i: usize) -> Gen {
        let (path, acq, mtime) = if i < self.hourly() {
            hourly_path(i)
        } else {
            let j = i - self.hourly();
            (
                format!("{BIG_DIR}/{}", big_name(j)),
                "frames-2025-01-01".to_owned(),
                EPOCH_2025 + j as i64,
            )
        };
        let r = splitmix(i as u64);
        Gen {
            path,
            acq,
            size: 1_000_000 + r % 4_000_000,
            md5: format!("{:016x}{:016x}", r, splitmix(r)),
            mtime,
        }
    }

    fn batches(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.files)
            .step_by(self.batch)
            .map(|s| s..(s + self.batch).min(self.files))
    }
}

// ---- registration ----

/// Seconds spent registering, batch by batch (generation of the rows is not timed).
struct Registration {
    files: usize,
    batches: Vec<(usize, Duration)>,
}

impl Registration {
    fn total(&self) -> Duration {
        self.batches.iter().map(|b| b.1).sum()
    }

    fn rate(&self) -> f64 {
        self.files as f64 / self.total().as_secs_f64()
    }

    /// Files per second over the first and the last tenth of the batches.
    fn rate_first_last(&self) -> (f64, f64) {
        let tenth = (self.batches.len() / 10).max(1);
        let rate = |b: &[(usize, Duration)]| {
            let n: usize = b.iter().map(|x| x.0).sum();
            let t: Duration = b.iter().map(|x| x.1).sum();
            n as f64 / t.as_secs_f64()
        };
        (
            rate(&self.batches[..tenth]),
            rate(&self.batches[self.batches.len() - tenth..]),
        )
    }
}

/// Builds the catalog: every file registered, with a `has = yes` copy on node `store1`.
fn build_catalog(url: &str, shape: Shape) -> (Catalog, NodeId, Registration) {
    let mut cat = Catalog::init(url).expect("init catalog");
    let node_id = cat
        .write(|tx| {
            tx.create_group("archive", IoClass::Default, None)?;
            let (node, _) = tx.create_node(&NewNode {
                name: "store1".into(),
                group: "archive".into(),
                host: Some("host1".into()),
                root: Some("/data".into()),
                ..Default::default()
            })?;
            Ok(node.id)
        })
        .expect("create node");
    let mut reg = Registration {
        files: shape.files,
        batches: Vec::new(),
    };
    let step = (shape.files / 10).max(1);
    for range in shape.batches() {
        let gens: Vec<Gen> = range.clone().map(|i| shape.file(i)).collect();
        let files: Vec<NewFile> = gens.iter().map(Gen::as_new).collect();
        let start = Instant::now();
        cat.write(|tx| {
            for id in tx.register_files(&files, NOW)? {
                tx.record_copy(id, node_id, Has::Yes, None, NOW)?;
            }
            Ok(())
        })
        .expect("register batch");
        reg.batches.push((files.len(), start.elapsed()));
        if range.end / step != range.start / step {
            eprintln!(
                "  registered {:>9} files, {:>8.0} files/s so far",
                range.end,
                range.end as f64 / reg.total().as_secs_f64()
            );
        }
    }
    (cat, node_id, reg)
}

/// Opens a raw SQLite database with the pragmas the catalog uses (WAL, synchronous = FULL,
/// foreign keys on), so that the baselines pay for the same durability.
fn raw_open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open raw db");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("wal");
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .expect("pragmas");
    conn
}

/// Baseline: the same rows into one plain table (no secondary index), one INSERT per row,
/// one transaction per batch.
fn raw_plain(path: &Path, shape: Shape) -> Registration {
    let mut conn = raw_open(path);
    conn.execute_batch(
        "CREATE TABLE file (id INTEGER PRIMARY KEY, path TEXT NOT NULL, acq TEXT NOT NULL, \
         size INTEGER NOT NULL, md5 TEXT NOT NULL, mtime INTEGER NOT NULL)",
    )
    .expect("create");
    let mut reg = Registration {
        files: shape.files,
        batches: Vec::new(),
    };
    for range in shape.batches() {
        let gens: Vec<Gen> = range.map(|i| shape.file(i)).collect();
        let start = Instant::now();
        let tx = conn.transaction().expect("begin");
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO file (path, acq, size, md5, mtime) VALUES (?, ?, ?, ?, ?)",
                )
                .expect("prepare");
            for g in &gens {
                ins.execute(params![g.path, g.acq, g.size as i64, g.md5, g.mtime])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        reg.batches.push((gens.len(), start.elapsed()));
    }
    reg
}

/// Baseline: the catalog's own schema and indexes filled by hand-written rusqlite code (dirs
/// and acquisitions cached in memory, a file row and a copy row per file). The gap between
/// this and the catalog is the cost of the catalog's code rather than of its schema.
fn raw_schema(path: &Path, shape: Shape) -> Registration {
    let mut conn = raw_open(path);
    for m in MIGRATIONS {
        conn.execute_batch(&render(m, Dialect::Sqlite))
            .expect("schema");
    }
    conn.execute_batch(
        "INSERT INTO storage_group (name) VALUES ('archive'); \
         INSERT INTO node (name, group_id) VALUES ('store1', 1);",
    )
    .expect("node");
    let mut dirs: HashMap<String, i64> = HashMap::from([(String::new(), 1)]);
    let mut acqs: HashMap<String, i64> = HashMap::new();
    let mut reg = Registration {
        files: shape.files,
        batches: Vec::new(),
    };
    for range in shape.batches() {
        let gens: Vec<Gen> = range.map(|i| shape.file(i)).collect();
        let start = Instant::now();
        let tx = conn.transaction().expect("begin");
        {
            let mut ins_dir = tx
                .prepare_cached(
                    "INSERT INTO dir (parent_id, name, path, created_at) VALUES (?, ?, ?, ?)",
                )
                .expect("prepare");
            let mut ins_acq = tx
                .prepare_cached("INSERT INTO acq (name, created_at) VALUES (?, ?)")
                .expect("prepare");
            let mut ins_file = tx
                .prepare_cached(
                    "INSERT INTO file (dir_id, name, acq_id, size, md5, mtime, registered_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .expect("prepare");
            let mut ins_copy = tx
                .prepare_cached(
                    "INSERT INTO copy (file_id, node_id, has, wants, added_at, verified_at, \
                     updated_at) VALUES (?, 1, 'yes', 'keep', ?, ?, ?)",
                )
                .expect("prepare");
            for g in &gens {
                let (dir, name) = g.path.rsplit_once('/').unwrap_or(("", &g.path));
                let dir_id = match dirs.get(dir) {
                    Some(id) => *id,
                    None => {
                        // Parents first: walk the components, inserting the missing ones.
                        let mut parent = 1;
                        let mut end = 0;
                        for part in dir.split('/') {
                            end += part.len();
                            let p = &dir[..end];
                            parent = match dirs.get(p) {
                                Some(id) => *id,
                                None => {
                                    let id =
                                        ins_dir.insert(params![parent, part, p, NOW]).expect("dir");
                                    dirs.insert(p.to_owned(), id);
                                    id
                                }
                            };
                            end += 1;
                        }
                        parent
                    }
                };
                let acq_id = match acqs.get(&g.acq) {
                    Some(id) => *id,
                    None => {
                        let id = ins_acq.insert(params![g.acq, NOW]).expect("acq");
                        acqs.insert(g.acq.clone(), id);
                        id
                    }
                };
                let file_id = ins_file
                    .insert(params![
                        dir_id,
                        name,
                        acq_id,
                        g.size as i64,
                        g.md5,
                        g.mtime,
                        NOW
                    ])
                    .expect("file");
                ins_copy
                    .execute(params![file_id, NOW, NOW, NOW])
                    .expect("copy");
            }
        }
        tx.commit().expect("commit");
        reg.batches.push((gens.len(), start.elapsed()));
    }
    reg
}

// ---- native trees for the filesystem baselines ----

/// Creates `root/YYYY/MM/DD/HH/mmss.dat` for the first `NATIVE_HOURS` hours (empty files) and
/// `root/<BIG_DIR>/` with the big directory's files. Returns (hourly file paths, big dir).
fn native_tree(root: &Path, shape: Shape) -> (Vec<PathBuf>, PathBuf) {
    let hourly = shape.hourly().min(NATIVE_HOURS * FILES_PER_HOUR);
    let mut paths = Vec::with_capacity(hourly);
    for i in 0..hourly {
        let p = root.join(hourly_path(i).0);
        if i % FILES_PER_HOUR == 0 {
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        }
        fs::File::create(&p).expect("create");
        paths.push(p);
    }
    let big = root.join(BIG_DIR);
    fs::create_dir_all(&big).expect("mkdir big");
    for j in 0..shape.big {
        fs::File::create(big.join(big_name(j))).expect("create");
    }
    (paths, big)
}

// ---- criterion, with the per-iteration times kept for the summary ----

/// Per-iteration times of every sample criterion took (warm-up included), per benchmark.
#[derive(Default)]
struct Samples(RefCell<HashMap<String, Vec<f64>>>);

impl Samples {
    fn record(&self, id: &str, iters: u64, elapsed: Duration) {
        if iters > 0 {
            self.0
                .borrow_mut()
                .entry(id.to_owned())
                .or_default()
                .push(elapsed.as_secs_f64() / iters as f64);
        }
    }

    /// The median per-iteration time, if the benchmark ran.
    fn median(&self, id: &str) -> Option<Duration> {
        let map = self.0.borrow();
        let mut v = map.get(id)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Duration::from_secs_f64(v[v.len() / 2]))
    }
}

/// A criterion group whose benchmarks record their samples in [`Samples`].
struct Group<'c, 's> {
    g: BenchmarkGroup<'c, WallTime>,
    name: &'static str,
    samples: &'s Samples,
}

impl<'c, 's> Group<'c, 's> {
    fn new(c: &'c mut Criterion, name: &'static str, samples: &'s Samples) -> Self {
        Group {
            g: c.benchmark_group(name),
            name,
            samples,
        }
    }

    /// Benchmarks `op` (given the iteration number) as `group/id` with `iter_custom`.
    fn bench<O>(&mut self, id: &str, mut op: impl FnMut(u64) -> O) {
        let key = format!("{}/{id}", self.name);
        let samples = self.samples;
        self.g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(op(i));
                }
                let elapsed = start.elapsed();
                samples.record(&key, iters, elapsed);
                elapsed
            })
        });
    }
}

/// How long one call of `op` takes, roughly (best of three), to size slow benchmarks.
fn probe<O>(mut op: impl FnMut() -> O) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            black_box(op());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

// ---- the summary ----

fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn main() {
    // Parse criterion's arguments first, so that a bad one fails before the long build.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let args: Vec<String> = std::env::args().collect();
    let bench_mode = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list");
    let files = env_usize(
        "CAIRN_BENCH_FILES",
        if bench_mode { 1_000_000 } else { 20_000 },
    )
    .max(1);
    let shape = Shape {
        files,
        big: BIG_DIR_FILES.min(files),
        batch: env_usize("CAIRN_BENCH_BATCH", 10_000).max(1),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir()
        .expect("temp dir");
    // CAIRN_BENCH_KEEP=1 keeps the catalog (and the native tree) for EXPLAIN QUERY PLAN.
    let keep = std::env::var_os("CAIRN_BENCH_KEEP").is_some_and(|v| v != "0");
    tmp.disable_cleanup(keep);
    eprintln!(
        "cairn catalog bench: {} files ({} in {BIG_DIR}), batches of {}, in {}",
        shape.files,
        shape.big,
        shape.batch,
        tmp.path().display()
    );

    // Registration baselines first, each database deleted once measured.
    eprintln!("baseline: raw SQLite, plain table");
    let plain_db = tmp.path().join("raw-plain.db");
    let plain = raw_plain(&plain_db, shape);
    eprintln!("  {:.0} rows/s", plain.rate());
    let schema_db = tmp.path().join("raw-schema.db");
    eprintln!("baseline: raw SQLite, catalog schema");
    let schema = raw_schema(&schema_db, shape);
    eprintln!("  {:.0} files/s", schema.rate());
    for db in [&plain_db, &schema_db] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }

    eprintln!("catalog: registering");
    let db_path = tmp.path().join("catalog.db");
    let url = format!("sqlite://{}", db_path.display());
    let (mut cat, _node_id, reg) = build_catalog(&url, shape);
    let db_bytes: u64 = ["", "-wal"]
        .iter()
        .map(|suffix| fs::metadata(format!("{}{suffix}", db_path.display())).map_or(0, |m| m.len()))
        .sum();

    let native = tmp.path().join("native");
    let start = Instant::now();
    let (native_paths, native_big) = native_tree(&native, shape);
    eprintln!(
        "native tree: {} + {} empty files in {}",
        native_paths.len(),
        shape.big,
        fmt_dur(start.elapsed())
    );

    // Lookup samples: random registered paths, and random native paths of the same depth.
    let picks: Vec<usize> = (0..LOOKUP_SAMPLES)
        .map(|k| (splitmix(0xC0FFEE ^ k as u64) % shape.files as u64) as usize)
        .collect();
    let cat_paths: Vec<String> = picks.iter().map(|&i| shape.file(i).path).collect();
    // (dir id, name) of each sample, for the single-component `lookup`.
    let cat_entries: Vec<(DirId, String)> = cat
        .read(|tx| {
            cat_paths
                .iter()
                .map(|p| {
                    let f = tx.file(p)?;
                    Ok((f.dir_id, f.name))
                })
                .collect()
        })
        .expect("samples exist");
    // A catalog of at most BIG_DIR_FILES files has no hourly files: stat the big dir's then.
    let nat_pool: Vec<PathBuf> = if native_paths.is_empty() {
        (0..shape.big)
            .map(|j| native_big.join(big_name(j)))
            .collect()
    } else {
        native_paths.clone()
    };
    let nat_paths: Vec<&PathBuf> = (0..LOOKUP_SAMPLES)
        .map(|k| &nat_pool[(splitmix(0xBEEF ^ k as u64) % nat_pool.len() as u64) as usize])
        .collect();
    let big_id = cat
        .read(|tx| tx.dir_by_path(BIG_DIR))
        .expect("read")
        .expect("big dir exists")
        .id;

    // A plain read-only rusqlite connection to the same catalog file, for the raw baselines.
    // `raw` turns on SQLite's query-planner stability guarantee (QPSG): without it SQLite
    // re-prepares a join whose WHERE binds a parameter each time rusqlite's statement cache
    // clears the bindings, i.e. on every `prepare_cached` use. `raw_as_catalog` keeps the
    // default, as the catalog's own connection does today, to show what that costs.
    let raw_open_ro = |qpsg: bool| {
        let conn =
            Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open catalog read-only");
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, qpsg)
            .expect("qpsg");
        conn
    };
    let raw = raw_open_ro(true);
    let raw_as_catalog = raw_open_ro(false);
    let file_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<RawFile> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    };
    let raw_by_path = format!(
        "SELECT {} FROM {} WHERE d.path = ? AND f.name = ?",
        File::COLUMNS,
        File::FROM
    );
    let raw_list_dirs = format!(
        "SELECT {} FROM dir d WHERE d.parent_id = ? ORDER BY d.name",
        Dir::COLUMNS
    );
    let raw_list_files = format!(
        "SELECT {} FROM {} WHERE f.dir_id = ? ORDER BY f.name",
        File::COLUMNS,
        File::FROM
    );

    let samples = Samples::default();

    {
        let mut g = Group::new(&mut c, "lookup", &samples);
        g.g.sample_size(50);
        let n = LOOKUP_SAMPLES as u64;
        g.bench("catalog_file_by_path", |i| {
            let p = &cat_paths[(i % n) as usize];
            cat.read(|tx| tx.file_by_path(p)).expect("lookup")
        });
        g.bench("catalog_lookup_in_dir", |i| {
            let (dir, name) = &cat_entries[(i % n) as usize];
            cat.read(|tx| tx.lookup(*dir, name)).expect("lookup")
        });
        g.bench("raw_sqlite_same_query", |i| {
            let (dir, name) = cat_paths[(i % n) as usize]
                .rsplit_once('/')
                .expect("a path with a directory");
            raw.prepare_cached(&raw_by_path)
                .expect("prepare")
                .query_row(params![dir, name], file_row)
                .expect("lookup")
        });
        g.bench("raw_sqlite_same_query_no_qpsg", |i| {
            let (dir, name) = cat_paths[(i % n) as usize]
                .rsplit_once('/')
                .expect("a path with a directory");
            raw_as_catalog
                .prepare_cached(&raw_by_path)
                .expect("prepare")
                .query_row(params![dir, name], file_row)
                .expect("lookup")
        });
        g.bench("native_metadata", |i| {
            fs::metadata(nat_paths[(i % n) as usize]).expect("stat")
        });
        g.g.finish();
    }
    {
        let mut g = Group::new(&mut c, "list_10k", &samples);
        g.g.sample_size(20).measurement_time(Duration::from_secs(5));
        g.bench("catalog_list_dir", |_| {
            cat.read(|tx| tx.list_dir(big_id)).expect("list")
        });
        g.bench("raw_sqlite_same_query", |_| {
            let dirs = raw
                .prepare_cached(&raw_list_dirs)
                .expect("prepare")
                .query_map([big_id.0], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .expect("query")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("dirs");
            let files = raw
                .prepare_cached(&raw_list_files)
                .expect("prepare")
                .query_map([big_id.0], file_row)
                .expect("query")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("files");
            (dirs, files)
        });
        g.bench("native_read_dir", |_| {
            fs::read_dir(&native_big)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect::<Vec<_>>()
        });
        g.bench("native_read_dir_stat", |_| {
            fs::read_dir(&native_big)
                .expect("read_dir")
                .map(|e| {
                    let e = e.expect("entry");
                    let m = e.metadata().expect("stat");
                    (e.file_name(), m.len(), m.modified().ok())
                })
                .collect::<Vec<_>>()
        });
        g.g.finish();
    }
    {
        let raw_count = |sql: &str| -> (i64, i64) {
            raw.prepare_cached(sql)
                .expect("prepare")
                .query_row([], |r| {
                    Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0)))
                })
                .expect("count")
        };
        const COUNT_FILE: &str = "SELECT COUNT(*), SUM(size) FROM file";
        const COUNT_JOIN: &str =
            "SELECT COUNT(*), SUM(f.size) FROM copy c JOIN file f ON f.id = c.file_id";
        let one_call = probe(|| cat.read(|tx| tx.node_stats(None)).expect("stats"));
        let mut g = Group::new(&mut c, "node_stats", &samples);
        g.g.sampling_mode(SamplingMode::Flat).sample_size(10);
        // Ten samples of at least one call each, with room to spare.
        g.g.measurement_time(Duration::from_secs(3).max(one_call * 15));
        g.bench("catalog_node_stats", |_| {
            cat.read(|tx| tx.node_stats(None)).expect("stats")
        });
        g.bench("raw_count_sum_file", |_| raw_count(COUNT_FILE));
        g.bench("raw_count_sum_copy_join", |_| raw_count(COUNT_JOIN));
        g.g.finish();
    }
    c.final_summary();

    // ---- summary ----
    let m = |id: &str| samples.median(id);
    let show = |d: Option<Duration>| d.map_or_else(|| "not run".into(), fmt_dur);
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    let under = |d: Option<Duration>, target: Duration, label: &str| {
        format!("{label}: {}", d.map_or("-", |d| met(d < target)))
    };
    println!();
    println!(
        "## Summary: {} files ({} in one directory), batches of {}, catalog {:.0} MiB (with its WAL)",
        shape.files,
        shape.big,
        shape.batch,
        db_bytes as f64 / (1 << 20) as f64
    );
    if !bench_mode {
        println!();
        println!(
            "**Not a benchmark run** (no `--bench`: a smoke run, maybe of a debug build); \
             these numbers mean nothing."
        );
    }
    println!();
    println!("ratio = catalog time ÷ baseline time (above 1: the catalog is slower)");
    println!();
    println!("| workload | catalog | baseline | baseline's number | ratio | target |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let reg_target = format!(
        "≥ {TARGET_FILES_PER_S:.0} files/s: {}",
        met(reg.rate() >= TARGET_FILES_PER_S)
    );
    for (label, base) in [
        ("raw SQLite, plain table", &plain),
        ("raw SQLite, catalog schema", &schema),
    ] {
        println!(
            "| register {} files + a copy each | {:.0} files/s ({}) | {label} | {:.0} rows/s ({}) \
             | {:.1}× | {reg_target} |",
            shape.files,
            reg.rate(),
            fmt_dur(reg.total()),
            base.rate(),
            fmt_dur(base.total()),
            reg.total().as_secs_f64() / base.total().as_secs_f64(),
        );
    }
    let rows: [SummaryRow<'_>; 4] = [
        (
            "`file_by_path` (own read tx)",
            "lookup/catalog_file_by_path",
            &[
                ("`fs::metadata`, depth 5", "lookup/native_metadata"),
                ("raw SQLite, same SQL", "lookup/raw_sqlite_same_query"),
                (
                    "raw SQLite, same SQL, QPSG off",
                    "lookup/raw_sqlite_same_query_no_qpsg",
                ),
            ],
            under(m("lookup/catalog_file_by_path"), TARGET_LOOKUP, "< 50 µs"),
        ),
        (
            "`lookup(dir, name)` (own read tx)",
            "lookup/catalog_lookup_in_dir",
            &[("`fs::metadata`, depth 5", "lookup/native_metadata")],
            under(m("lookup/catalog_lookup_in_dir"), TARGET_LOOKUP, "< 50 µs"),
        ),
        (
            "`list_dir`, big directory",
            "list_10k/catalog_list_dir",
            &[
                ("`read_dir`, names", "list_10k/native_read_dir"),
                ("`read_dir` + stat each", "list_10k/native_read_dir_stat"),
                ("raw SQLite, same SQL", "list_10k/raw_sqlite_same_query"),
            ],
            "none".into(),
        ),
        (
            "`node_stats(None)`",
            "node_stats/catalog_node_stats",
            &[
                (
                    "`COUNT(*), SUM(size)` over file",
                    "node_stats/raw_count_sum_file",
                ),
                (
                    "same over copy ⋈ file",
                    "node_stats/raw_count_sum_copy_join",
                ),
            ],
            under(m("node_stats/catalog_node_stats"), TARGET_STATS, "< 1 s"),
        ),
    ];
    for (label, id, baselines, target) in rows {
        let ours = m(id);
        for (base_label, base_id) in baselines {
            let base = m(base_id);
            println!(
                "| {label} | {} | {base_label} | {} | {} | {target} |",
                show(ours),
                show(base),
                ratio(ours, base)
            );
        }
    }
    let (first, last) = reg.rate_first_last();
    println!();
    println!(
        "Registration over the first / last tenth of the batches: {first:.0} / {last:.0} files/s. \
         Other times are medians of criterion's per-iteration samples."
    );
    if keep {
        println!("Kept {} (CAIRN_BENCH_KEEP).", tmp.path().display());
    }
}
