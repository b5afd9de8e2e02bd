//! cairnd's counters and gauges, served as Prometheus text at `/metrics` ([`crate::http`]).

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Work found by the last loop, by kind: copy, import, verify, release.
    pub queue_copy: AtomicU64,
    pub queue_import: AtomicU64,
    pub queue_verify: AtomicU64,
    pub queue_release: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
