//! cairnd's counters and gauges, served as Prometheus text at `/metrics` ([`crate::http`]).
//!
//! Counters and this host's nodes are cairnd's own. The archive-wide gauges (hosts last seen,
//! requests by state, files below the archive rule, the mounts' journals as their hosts report
//! them) are read from the catalog at most once a [`ARCHIVE_EVERY`], so that every cairnd can
//! be scraped for them without loading the catalog; alert rules take the `max` (or `min`) over
//! instances (`packaging/monitoring/`). The journals of this host's own nodes are read from
//! the nodes at each scrape instead: they are right even while the catalog cannot be reached
//! (a cut link), which is when they grow.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_catalog::Catalog;
use cairn_catalog::model::Node;

/// How often the archive-wide gauges are read from the catalog.
pub const ARCHIVE_EVERY: Duration = Duration::from_secs(60);

/// The archive as the catalog last showed it, for the gauges.
#[derive(Debug, Default)]
pub struct ArchiveGauges {
    /// The last read that succeeded, and the last one tried (a failing catalog is asked
    /// again a minute later, not at every pass).
    read_at: Option<Instant>,
    tried_at: Option<Instant>,
    /// Host name → last seen (Unix seconds).
    hosts: Vec<(String, i64)>,
    /// Copy request state → count.
    requests: Vec<(String, u64)>,
    files_below_rule: u64,
    /// This host's available nodes: name, free bytes, capacity.
    nodes: Vec<(String, u64, u64)>,
    /// The mounts' journals with files waiting, as each host's cairnd reports them into the
    /// catalog: node, files closed and not yet registered, when the oldest was closed.
    journals: Vec<(String, u64, Option<i64>)>,
    /// This host's nodes and their roots, whose journals are read at each scrape.
    local_roots: Vec<(String, std::path::PathBuf)>,
}

impl ArchiveGauges {
    /// The journals with files waiting: this host's as they are now, the others' as their
    /// hosts last reported them.
    fn journals_now(&self) -> Vec<(String, u64, Option<i64>)> {
        let mut out: Vec<(String, u64, Option<i64>)> = self
            .journals
            .iter()
            .filter(|(n, _, _)| !self.local_roots.iter().any(|(l, _)| l == n))
            .cloned()
            .collect();
        for (name, root) in &self.local_roots {
            if let Ok(Some(s)) = cairn_node::waiting::on_node(root)
                && s.files > 0
            {
                out.push((name.clone(), s.files, s.oldest));
            }
        }
        out.sort();
        out
    }
}

use cairn_catalog::replica::{ReplicaState, ReplicaStatus};

/// Counters for `/metrics`; names follow Prometheus conventions.
#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub pulls_ok: AtomicU64,
    pub pulls_failed: AtomicU64,
    pub md5_mismatches: AtomicU64,
    pub copies_served: AtomicU64,
    pub requests_refused: AtomicU64,
    /// Releases refused by the archive-copies rule, every attempt (one a pass while it lasts).
    pub release_refusals: AtomicU64,
    /// Work found by the last loop, by kind: copy, import, verify, release.
    pub queue_copy: AtomicU64,
    pub queue_import: AtomicU64,
    pub queue_verify: AtomicU64,
    pub queue_release: AtomicU64,
    pub archive: Mutex<ArchiveGauges>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records this host's available nodes' space, and, when the last read is older than
    /// [`ARCHIVE_EVERY`], the archive-wide gauges from the catalog.
    pub fn observe(
        &self,
        cat: &mut Catalog,
        nodes: &[Node],
        min_archive_copies: usize,
    ) -> anyhow::Result<()> {
        let mut node_rows: Vec<(String, u64, u64)> = nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.avail?, n.capacity?)))
            .collect();
        node_rows.sort();
        let due = {
            let mut a = self.archive.lock().expect("metrics lock");
            a.local_roots = nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.root.as_ref()?.into())))
                .collect();
            let due = a.tried_at.is_none_or(|t| t.elapsed() >= ARCHIVE_EVERY);
            if due {
                a.tried_at = Some(Instant::now());
            }
            due
        };
        let read = if due {
            Some(cat.read(|tx| {
                let hosts = tx
                    .hosts()?
                    .into_iter()
                    .filter_map(|h| Some((h.name, h.last_seen?)))
                    .collect::<Vec<_>>();
                let requests = tx
                    .copy_request_counts()?
                    .into_iter()
                    .map(|(s, n)| (s.to_string(), n))
                    .collect::<Vec<_>>();
                let below = tx.files_below_archive_rule(min_archive_copies as u64)?;
                let journals = tx
                    .journals_waiting()?
                    .into_iter()
                    .map(|j| (j.node, j.files, j.oldest))
                    .collect::<Vec<_>>();
                Ok((hosts, requests, below, journals))
            })?)
        } else {
            None
        };
        let mut a = self.archive.lock().expect("metrics lock");
        a.nodes = node_rows;
        if let Some((hosts, requests, below, journals)) = read {
            a.read_at = Some(Instant::now());
            a.hosts = hosts;
            a.requests = requests;
            a.files_below_rule = below;
            a.journals = journals;
        }
        Ok(())
    }

    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in rows {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "cairn_transfer_bytes_sent_total",
            "counter",
            "Bytes of copies served to other hosts.",
            &[("", g(&self.bytes_sent))],
        );
        metric(
            "cairn_transfer_bytes_received_total",
            "counter",
            "Bytes pulled from other hosts.",
            &[("", g(&self.bytes_received))],
        );
        metric(
            "cairn_transfers_total",
            "counter",
            "Pulls from other hosts by result.",
            &[
                ("{result=\"ok\"}", g(&self.pulls_ok)),
                ("{result=\"failed\"}", g(&self.pulls_failed)),
            ],
        );
        metric(
            "cairn_md5_mismatches_total",
            "counter",
            "Copies whose bytes did not match the catalog's md5 (source marked suspect).",
            &[("", g(&self.md5_mismatches))],
        );
        metric(
            "cairn_copies_served_total",
            "counter",
            "Copy downloads started by other hosts.",
            &[("", g(&self.copies_served))],
        );
        metric(
            "cairn_http_refused_total",
            "counter",
            "HTTP requests refused (bad token, unknown or unreachable path).",
            &[("", g(&self.requests_refused))],
        );
        metric(
            "cairn_release_refusals_total",
            "counter",
            "Releases the archive-copies rule refused, counting every retry (one a pass).",
            &[("", g(&self.release_refusals))],
        );
        metric(
            "cairn_queue_depth",
            "gauge",
            "Work found by cairnd's last loop, by kind.",
            &[
                ("{kind=\"copy\"}", g(&self.queue_copy)),
                ("{kind=\"import\"}", g(&self.queue_import)),
                ("{kind=\"verify\"}", g(&self.queue_verify)),
                ("{kind=\"release\"}", g(&self.queue_release)),
            ],
        );
        let a = self.archive.lock().expect("metrics lock");
        if a.read_at.is_some() {
            let hosts: Vec<(String, u64)> = a
                .hosts
                .iter()
                .map(|(h, t)| (format!("{{host=\"{}\"}}", label(h)), *t as u64))
                .collect();
            metric(
                "cairn_host_last_seen_timestamp_seconds",
                "gauge",
                "When each host's cairnd last made a pass, as the catalog has it (Unix time).",
                &hosts
                    .iter()
                    .map(|(l, v)| (l.as_str(), *v))
                    .collect::<Vec<_>>(),
            );
            let requests: Vec<(String, u64)> = a
                .requests
                .iter()
                .map(|(s, n)| (format!("{{state=\"{}\"}}", label(s)), *n))
                .collect();
            metric(
                "cairn_copy_requests",
                "gauge",
                "Copy requests in the catalog by state (all hosts).",
                &requests
                    .iter()
                    .map(|(l, v)| (l.as_str(), *v))
                    .collect::<Vec<_>>(),
            );
            metric(
                "cairn_files_below_archive_rule",
                "gauge",
                "Files with fewer healthy archive copies than daemon.min_archive_copies.",
                &[("", a.files_below_rule)],
            );
        }
        let journals = a.journals_now();
        let journal_files: Vec<(String, u64)> = journals
            .iter()
            .map(|(n, files, _)| (format!("{{node=\"{}\"}}", label(n)), *files))
            .collect();
        metric(
            "cairn_journal_files",
            "gauge",
            "Files closed on a mount and kept in its write node's journal, not yet in the \
             catalog (nodes with files waiting: this host's as they are now, others' as \
             their host last reported).",
            &journal_files
                .iter()
                .map(|(l, v)| (l.as_str(), *v))
                .collect::<Vec<_>>(),
        );
        let journal_oldest: Vec<(String, u64)> = journals
            .iter()
            .filter_map(|(n, _, oldest)| {
                Some((format!("{{node=\"{}\"}}", label(n)), (*oldest)? as u64))
            })
            .collect();
        metric(
            "cairn_journal_oldest_closed_timestamp_seconds",
            "gauge",
            "When the oldest file in the write node's journal was closed (Unix time).",
            &journal_oldest
                .iter()
                .map(|(l, v)| (l.as_str(), *v))
                .collect::<Vec<_>>(),
        );
        for (name, help, pick) in [
            (
                "cairn_node_avail_bytes",
                "Free bytes on each available node of this host.",
                (|r: &(String, u64, u64)| r.1) as fn(&(String, u64, u64)) -> u64,
            ),
            (
                "cairn_node_capacity_bytes",
                "Size of the file system of each available node of this host.",
                |r| r.2,
            ),
        ] {
            let rows: Vec<(String, u64)> = a
                .nodes
                .iter()
                .map(|r| (format!("{{node=\"{}\"}}", label(&r.0)), pick(r)))
                .collect();
            metric(
                name,
                "gauge",
                help,
                &rows
                    .iter()
                    .map(|(l, v)| (l.as_str(), *v))
                    .collect::<Vec<_>>(),
            );
        }
        out
    }

    /// The gauges of this site's catalog replica (`catalog.replica`), from what cairnd's last
    /// check of it found; nothing without one.
    pub fn render_replica(replica: Option<&ReplicaStatus>) -> String {
        let Some(r) = replica else {
            return String::new();
        };
        let label = format!("{{replica=\"{}\"}}", r.url.replace('"', "'"));
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {value}\n"
            ));
        };
        gauge(
            "cairn_catalog_replica_lag_seconds",
            "How far the catalog replica is behind the primary (NaN: unreachable).",
            r.lag_seconds
                .map_or_else(|| "NaN".to_owned(), |l| format!("{l:.3}")),
        );
        gauge(
            "cairn_catalog_replica_in_use",
            "1 while reads go to the catalog replica, 0 while they go to the primary.",
            u8::from(r.state == ReplicaState::InUse).to_string(),
        );
        gauge(
            "cairn_catalog_replica_streaming",
            "1 while the catalog replica streams from the primary.",
            u8::from(r.streaming).to_string(),
        );
        out
    }
}

/// A label value in the Prometheus text format: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alert rules and the dashboard in `packaging/monitoring/` name only metrics that
    /// cairnd serves (comments aside), so a renamed metric cannot silently empty a panel or
    /// disarm an alert.
    #[test]
    fn the_shipped_alerts_and_dashboard_use_only_metrics_cairnd_serves() {
        let m = Metrics::default();
        m.archive.lock().unwrap().read_at = Some(Instant::now());
        let replica = cairn_catalog::replica::ReplicaStatus {
            url: "postgres://standby/cairn".into(),
            state: ReplicaState::InUse,
            reason: None,
            lag_seconds: Some(0.5),
            streaming: true,
            replayed: None,
            max_lag_seconds: 300.0,
        };
        let served: std::collections::HashSet<String> = (m.render()
            + &Metrics::render_replica(Some(&replica)))
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let name = regex_lite::Regex::new(r"\bcairn_[a-z0-9_]+").unwrap();
        for (file, text) in [
            (
                "cairn-alerts.yml",
                include_str!("../../packaging/monitoring/cairn-alerts.yml"),
            ),
            (
                "cairn-dashboard.json",
                include_str!("../../packaging/monitoring/cairn-dashboard.json"),
            ),
        ] {
            let mut used = 0;
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                for m in name.find_iter(line) {
                    used += 1;
                    assert!(served.contains(m.as_str()), "{file} uses {}", m.as_str());
                }
            }
            assert!(used > 5, "{file} names cairnd's metrics");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn archive_gauges_appear_once_read() {
        let m = Metrics::default();
        assert!(!m.render().contains("cairn_files_below_archive_rule"));
        {
            let mut a = m.archive.lock().unwrap();
            a.read_at = Some(Instant::now());
            a.hosts = vec![("h1".into(), 1_700_000_000)];
            a.requests = vec![("failed".into(), 3)];
            a.files_below_rule = 2;
            a.nodes = vec![("n1".into(), 10, 100)];
            a.journals = vec![("n1".into(), 4, Some(1_700_000_100))];
        }
        let out = m.render();
        for line in [
            "cairn_host_last_seen_timestamp_seconds{host=\"h1\"} 1700000000",
            "cairn_copy_requests{state=\"failed\"} 3",
            "cairn_files_below_archive_rule 2",
            "cairn_node_avail_bytes{node=\"n1\"} 10",
            "cairn_node_capacity_bytes{node=\"n1\"} 100",
            "cairn_journal_files{node=\"n1\"} 4",
            "cairn_journal_oldest_closed_timestamp_seconds{node=\"n1\"} 1700000100",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in {out}");
        }
    }

    #[test]
    fn this_hosts_journals_are_read_from_its_nodes_at_each_scrape() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(".cairn")).unwrap();
        let m = Metrics::default();
        {
            let mut a = m.archive.lock().unwrap();
            a.read_at = Some(Instant::now());
            // What the catalog says: stale for this host's node, current for another's.
            a.journals = vec![("here".into(), 1, Some(1)), ("there".into(), 2, Some(2))];
            a.local_roots = vec![("here".into(), root.path().to_path_buf())];
        }
        let lines = |m: &Metrics| -> Vec<String> {
            m.render()
                .lines()
                .filter(|l| l.starts_with("cairn_journal_files{"))
                .map(str::to_owned)
                .collect()
        };
        // No journal on the node: nothing waits there, whatever the catalog last heard.
        assert_eq!(lines(&m), ["cairn_journal_files{node=\"there\"} 2"]);
        // Files closed on the mount and not registered (a cut link): counted at once.
        let j = cairn_node::journal::Journal::open(root.path()).unwrap();
        for i in 0..3 {
            j.closed(
                &format!(".cairn/staging/s{i}"),
                &format!("f{i}"),
                "1:1",
                true,
            )
            .unwrap();
        }
        j.publish_summary().unwrap();
        assert_eq!(
            lines(&m),
            [
                "cairn_journal_files{node=\"here\"} 3",
                "cairn_journal_files{node=\"there\"} 2"
            ]
        );
    }
}
