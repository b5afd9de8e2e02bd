//! Several processes share one SQLite catalog: the CLI, every cairnd and every mount of a
//! machine. None may lose a write or fail with "database is locked".

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
    let mut cat = Catalog::init(&url).unwrap();
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
                    &url,
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
