//! Several processes share one catalog: on SQLite the CLI, every cairnd and every mount of a
//! machine; on PostgreSQL those of every machine. None may lose a write or fail with
//! "database is locked", and no race takes a file below `min_archive_copies`.

use std::process::{Command, Stdio};

use cairn_catalog::Catalog;
use cairn_catalog::catalog::{CopyRequestFilter, FileFilter, NewNode};
use cairn_catalog::model::IoClass;

const WRITERS: usize = 8;
const PER_WRITER: u64 = 1000;

#[test]
fn eight_writers_lose_nothing_and_never_see_locked_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    eight_writers_lose_nothing(&url);
}

fn eight_writers_lose_nothing(url: &str) {
    let mut cat = Catalog::init(url).unwrap();
    cat.write(|tx| {
        tx.create_group("field", IoClass::Default, None)?;
        tx.create_group("archive", IoClass::Default, None)?;
        tx.create_node(&NewNode {
            name: "field1".into(),
            group: "field".into(),
            ..NewNode::default()
        })?;
        Ok(())
    })
    .unwrap();

    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            Command::new(env!("CARGO_BIN_EXE_cairn-hammer"))
                .args([
                    url,
                    &format!("w{w}"),
                    &PER_WRITER.to_string(),
                    "field1",
                    "archive",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cairn-hammer starts")
        })
        .collect();
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "writer {w} failed: {stderr}");
        assert!(!stderr.contains("locked"), "writer {w}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("ok {PER_WRITER}")
        );
    }

    let total = WRITERS * PER_WRITER as usize;
    let (files, requests, stats) = cat
        .read(|tx| {
            Ok((
                tx.files(&FileFilter::default())?,
                tx.copy_requests(&CopyRequestFilter::default())?,
                tx.node_stats(None)?,
            ))
        })
        .unwrap();
    assert_eq!(files.len(), total, "every registered file is there");
    assert_eq!(requests.len(), total, "every copy request is there");
    let field = stats.iter().find(|s| s.node == "field1").unwrap();
    assert_eq!(field.files as usize, total, "every copy is there");
    for w in 0..WRITERS {
        let last = format!("hammer/w{w}/{:05}.dat", PER_WRITER - 1);
        assert!(files.iter().any(|f| f.path == last), "{last} is missing");
    }
}

/// Archive copies of one file left after eight hosts each try, at the same moment, to release
/// their copy through the catalog's release path (what cairnd's clean does), for `rounds`
/// files. Returns (copies left, releases granted) per file.
fn eight_hosts_release_one_file(url: &str, rounds: usize) -> Vec<(usize, usize)> {
    use cairn_catalog::model::{CopyId, Has, NodeId, NodeKind};
    use std::sync::{Arc, Barrier};
    const HOSTS: usize = 8;
    const MIN_ARCHIVE_COPIES: usize = 2;
    let mut cat = Catalog::open(url).unwrap();
    let nodes: Vec<NodeId> = cat
        .write(|tx| {
            tx.create_group("archive", IoClass::Default, None)?;
            (0..HOSTS)
                .map(|h| {
                    let (n, _) = tx.create_node(&NewNode {
                        name: format!("archive{h}"),
                        group: "archive".into(),
                        kind: Some(NodeKind::Archive),
                        host: Some(format!("host{h}")),
                        active: true,
                        ..NewNode::default()
                    })?;
                    Ok(n.id)
                })
                .collect()
        })
        .unwrap();
    let mut out = Vec::new();
    for round in 0..rounds {
        let path = format!("2025/01/01/{round:03}.dat");
        let copies: Vec<CopyId> = cat
            .write(|tx| {
                let (f, _) = tx.register_file(
                    &cairn_catalog::catalog::NewFile {
                        path: path.clone(),
                        acq: "2025/01/01".into(),
                        size: 1,
                        md5: format!("{round:032x}"),
                        mtime: 0,
                        own: Default::default(),
                    },
                    0,
                )?;
                nodes
                    .iter()
                    .map(|n| tx.record_copy(f.id, *n, Has::Yes, Some(1), 0))
                    .collect()
            })
            .unwrap();
        let start = Arc::new(Barrier::new(HOSTS));
        let granted: usize = std::thread::scope(|s| {
            let hosts: Vec<_> = copies
                .iter()
                .map(|&copy| {
                    let start = start.clone();
                    s.spawn(move || {
                        let mut cat = Catalog::open(url).expect("each host opens the catalog");
                        start.wait();
                        cat.write(|tx| tx.try_release(copy, MIN_ARCHIVE_COPIES, 1))
                            .expect("the release transaction commits")
                            .is_ok()
                    })
                })
                .collect();
            hosts
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        let left = cat
            .read(|tx| {
                let f = tx.file_by_path(&path)?.expect("the file");
                let mut n = 0;
                for node in &nodes {
                    if tx.copy_on(f.id, *node)?.is_some_and(|c| c.has == Has::Yes) {
                        n += 1;
                    }
                }
                Ok(n)
            })
            .unwrap();
        out.push((left, granted));
    }
    out
}

fn assert_min_archive_copies_kept(results: &[(usize, usize)]) {
    for (round, &(left, granted)) in results.iter().enumerate() {
        assert_eq!(
            (left, granted),
            (2, 6),
            "file {round}: eight concurrent releases must leave exactly min_archive_copies"
        );
    }
}

#[test]
fn eight_hosts_cleaning_one_file_keep_min_archive_copies_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    Catalog::init(&url).unwrap();
    assert_min_archive_copies_kept(&eight_hosts_release_one_file(&url, 20));
}

#[test]
fn eight_hosts_cleaning_one_file_keep_min_archive_copies_postgres() {
    let test = "eight_hosts_cleaning_one_file_keep_min_archive_copies_postgres";
    let Some(server) = cairn_catalog::testing::pg_server(test) else {
        return;
    };
    let db = cairn_catalog::testing::TestDatabase::create(&server);
    Catalog::init(&db.url).unwrap();
    assert_min_archive_copies_kept(&eight_hosts_release_one_file(&db.url, 20));
}

#[test]
fn eight_writers_lose_nothing_postgres() {
    let Some(server) = cairn_catalog::testing::pg_server("eight_writers_lose_nothing_postgres")
    else {
        return;
    };
    let db = cairn_catalog::testing::TestDatabase::create(&server);
    eight_writers_lose_nothing(&db.url);
}
