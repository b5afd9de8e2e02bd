//! `--wait`: follow requests until they are done or failed, with a progress bar on a terminal
//! and plain progress lines otherwise, then a one-line summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_catalog::Catalog;
use cairn_catalog::model::{CopyId, RequestId, RequestState};
use cairn_catalog::units::format_size;

/// Where a set of requests stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub failed: u64,
    pub bytes: u64,
}

/// Polls `poll` until `done + failed == total`, drawing progress. `stalled` (if given) ends the
/// wait when nothing has moved for that long (e.g. releases refused by the archive rule).
pub fn follow(
    cat: &mut Catalog,
    what: &str,
    total: u64,
    total_bytes: u64,
    stalled: Option<Duration>,
    mut poll: impl FnMut(&mut Catalog) -> Result<Progress>,
) -> Result<Progress> {
    let tty = std::io::stdout().is_terminal();
    let start = Instant::now();
    let mut last_change = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut prev = Progress::default();
    loop {
        let p = poll(cat)?;
        if p != prev {
            last_change = Instant::now();
            prev = p;
        }
        let finished = p.done + p.failed >= total;
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let rate = p.bytes as f64 / secs;
        let eta = if rate > 0.0 && total_bytes > p.bytes {
            format!("{:.0}s", (total_bytes - p.bytes) as f64 / rate)
        } else {
            "-".into()
        };
        let line = format!(
            "{}/{total} {what}, {} of {}, {}/s, ETA {eta}{}",
            p.done,
            size(p.bytes),
            size(total_bytes),
            format_size(rate as u64),
            if p.failed > 0 {
                format!(", {} failed", p.failed)
            } else {
                String::new()
            }
        );
        if tty {
            let width = 24;
            let filled = ((p.done + p.failed) * width / total.max(1)) as usize;
            print!(
                "\r[{}{}] {line}\x1b[K",
                "=".repeat(filled),
                " ".repeat(width as usize - filled)
            );
            std::io::stdout().flush()?;
        } else if finished || last_line.elapsed() >= Duration::from_secs(2) {
            println!("{line}");
            last_line = Instant::now();
        }
        let stuck = stalled.is_some_and(|d| last_change.elapsed() >= d);
        if finished || stuck {
            if tty {
                println!();
            }
            let verdict = if finished {
                "Finished"
            } else {
                "Stopped waiting"
            };
            println!(
                "{verdict}: {} of {total} {what} done, {} failed, {} in {:.1}s.",
                p.done,
                p.failed,
                size(p.bytes),
                start.elapsed().as_secs_f64()
            );
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `--wait` for work on copies: (copy id, size) each, done once `done(copy)` holds.
pub fn copy_rows(
    cat: &mut Catalog,
    what: &str,
    copies: &[(CopyId, u64)],
    stalled: Option<std::time::Duration>,
    done: impl Fn(&cairn_catalog::model::Copy) -> bool,
) -> Result<()> {
    let total_bytes = copies.iter().map(|(_, s)| s).sum();
    follow(
        cat,
        what,
        copies.len() as u64,
        total_bytes,
        stalled,
        |cat| {
            cat.read(|tx| {
                let mut p = Progress::default();
                for (id, size) in copies {
                    if tx.copy_by_id(*id)?.is_none_or(|c| done(&c)) {
                        p.done += 1;
                        p.bytes += size;
                    }
                }
                Ok(p)
            })
            .map_err(Into::into)
        },
    )?;
    Ok(())
}

/// `--wait` for copy requests: (id, size) each.
pub fn copies(cat: &mut Catalog, requests: &[(RequestId, u64)]) -> Result<()> {
    let total_bytes = requests.iter().map(|(_, s)| s).sum();
    let p = follow(
        cat,
        "files",
        requests.len() as u64,
        total_bytes,
        None,
        |cat| {
            cat.read(|tx| {
                let mut p = Progress::default();
                for (id, size) in requests {
                    match tx.copy_request(*id)?.state {
                        RequestState::Done => {
                            p.done += 1;
                            p.bytes += size;
                        }
                        RequestState::Failed | RequestState::Cancelled => p.failed += 1,
                        RequestState::Pending | RequestState::Active => {}
                    }
                }
                Ok(p)
            })
            .map_err(Into::into)
        },
    )?;
    if p.failed > 0 {
        anyhow::bail!(
            "{} of {} copies failed (see `cairn request list --failed`)",
            p.failed,
            requests.len()
        );
    }
    Ok(())
}

fn size(b: u64) -> String {
    if b == 0 { "0 B".into() } else { format_size(b) }
}
