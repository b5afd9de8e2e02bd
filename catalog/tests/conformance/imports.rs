//! `Tx::import_copy`: what the mount and cairnd's importers run to register a file with its
//! copy.

use cairn_catalog::Catalog;
use cairn_catalog::catalog::{ImportOutcome, NewFile};
use cairn_catalog::model::Has;
use cairn_catalog::rules::AutoEffect;

use super::{NOW, md5, two_nodes};

fn new_file(path: &str, size: u64) -> NewFile {
    NewFile {
        path: path.to_owned(),
        acq: "2025/02/21".into(),
        size,
        md5: md5(size),
        mtime: NOW,
        own: Default::default(),
    }
}

pub fn import_copy_registers_a_file_with_its_copy_once(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    let f = new_file("2025/02/21/a.dat", 5000);
    let first = cat.write(|tx| tx.import_copy(&f, n1, NOW)).unwrap();
    let ImportOutcome::Imported {
        file_id,
        new_file: true,
        new_acq: true,
        fired,
    } = first
    else {
        panic!("a new file: {first:?}");
    };
    assert!(fired.is_empty(), "no auto-actions set up: {fired:?}");
    let copy = cat.read(|tx| tx.copy_on(file_id, n1)).unwrap().unwrap();
    assert_eq!((copy.has, copy.size_on_node), (Has::Yes, Some(8192)));

    let again = cat.write(|tx| tx.import_copy(&f, n1, NOW)).unwrap();
    assert_eq!(again, ImportOutcome::AlreadyHere { file_id });

    let elsewhere = cat.write(|tx| tx.import_copy(&f, n2, NOW)).unwrap();
    assert!(
        matches!(
            elsewhere,
            ImportOutcome::Imported { file_id: id, new_file: false, new_acq: false, .. }
                if id == file_id
        ),
        "a known file's copy on another node: {elsewhere:?}"
    );
}

pub fn import_copy_of_an_empty_file_takes_no_blocks(cat: &mut Catalog) {
    let (n1, _, _, _) = two_nodes(cat);
    let out = cat
        .write(|tx| tx.import_copy(&new_file("2025/02/21/empty.dat", 0), n1, NOW))
        .unwrap();
    let ImportOutcome::Imported { file_id, .. } = out else {
        panic!("{out:?}");
    };
    let copy = cat.read(|tx| tx.copy_on(file_id, n1)).unwrap().unwrap();
    assert_eq!(copy.size_on_node, Some(0));
}

pub fn import_copy_refuses_a_path_archived_with_other_contents(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    cat.write(|tx| tx.import_copy(&new_file("2025/02/21/a.dat", 10), n1, NOW))
        .unwrap();
    let other = new_file("2025/02/21/a.dat", 11);
    let out = cat.write(|tx| tx.import_copy(&other, n2, NOW)).unwrap();
    let ImportOutcome::Conflict { existing } = out else {
        panic!("a conflict: {out:?}");
    };
    assert_eq!(
        (existing.size, existing.md5.as_str()),
        (10, md5(10).as_str())
    );
    assert_eq!(
        cat.read(|tx| tx.copy_on(existing.id, n2)).unwrap(),
        None,
        "nothing recorded"
    );
}

pub fn import_copy_fires_the_auto_actions_of_the_new_copy(cat: &mut Catalog) {
    let (n1, _, _, g2) = two_nodes(cat);
    cat.write(|tx| {
        let g = tx.group("demo_storage2")?;
        let n = tx.node("demo_storage1")?;
        tx.set_autosync(&g, &n, true, None)
    })
    .unwrap();
    let out = cat
        .write(|tx| tx.import_copy(&new_file("2025/02/21/a.dat", 10), n1, NOW))
        .unwrap();
    let ImportOutcome::Imported { file_id, fired, .. } = out else {
        panic!("{out:?}");
    };
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        fired[0].effect,
        AutoEffect::Sync {
            from_node: n1,
            to_group: g2
        }
    );
    assert_eq!(cat.read(|tx| tx.pending_reads(file_id, n1)).unwrap(), 1);
}

pub fn import_copies_gives_each_file_the_outcome_of_import_copy(cat: &mut Catalog) {
    let (n1, _, n2, g2) = two_nodes(cat);
    cat.write(|tx| {
        let g = tx.group("demo_storage2")?;
        let n = tx.node("demo_storage1")?;
        tx.set_autosync(&g, &n, true, None)
    })
    .unwrap();
    // Known before the batch: one with a copy on n1 already, one only on n2, one to conflict.
    let here = new_file("2025/02/21/here.dat", 1);
    let there = new_file("2025/02/21/there.dat", 2);
    let taken = new_file("2025/02/21/taken.dat", 3);
    cat.write(|tx| {
        tx.import_copy(&here, n1, NOW)?;
        tx.import_copy(&there, n2, NOW)?;
        tx.import_copy(&taken, n2, NOW)
    })
    .unwrap();
    let batch = vec![
        new_file("2025/02/22/deep/er/new1.dat", 10),
        here.clone(),
        there.clone(),
        new_file("2025/02/21/taken.dat", 4),
        new_file("2025/02/22/deep/er/new2.dat", 0),
        new_file("2025/02/22/deep/er/new1.dat", 10),
    ];
    let out = cat.write(|tx| tx.import_copies(&batch, n1, NOW)).unwrap();
    assert_eq!(out.len(), batch.len());
    let ImportOutcome::Imported {
        file_id: new1,
        new_file: true,
        new_acq: false,
        fired,
    } = &out[0]
    else {
        panic!("new1: {:?}", out[0]);
    };
    assert_eq!(
        fired.iter().map(|f| f.effect).collect::<Vec<_>>(),
        vec![AutoEffect::Sync {
            from_node: n1,
            to_group: g2
        }]
    );
    assert!(
        matches!(out[1], ImportOutcome::AlreadyHere { .. }),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], ImportOutcome::Imported { new_file: false, ref fired, .. } if fired.is_empty()),
        "there is in g2 already: {:?}",
        out[2]
    );
    assert!(
        matches!(out[3], ImportOutcome::Conflict { .. }),
        "{:?}",
        out[3]
    );
    let ImportOutcome::Imported { file_id: new2, .. } = out[4] else {
        panic!("new2: {:?}", out[4]);
    };
    assert_eq!(
        out[5], out[0],
        "a path given twice: the outcome of its first"
    );

    let f = cat.read(|tx| tx.file_by_id(*new1)).unwrap();
    assert_eq!(f.path, "2025/02/22/deep/er/new1.dat");
    let c = cat.read(|tx| tx.copy_on(new2, n1)).unwrap().unwrap();
    assert_eq!((c.has, c.size_on_node), (Has::Yes, Some(0)));
    assert_eq!(cat.read(|tx| tx.pending_reads(*new1, n1)).unwrap(), 1);
    // And again: nothing more to do.
    let again = cat.write(|tx| tx.import_copies(&batch, n1, NOW)).unwrap();
    assert!(
        again.iter().all(|o| matches!(
            o,
            ImportOutcome::AlreadyHere { .. } | ImportOutcome::Conflict { .. }
        )),
        "{again:?}"
    );
}

pub fn import_copies_takes_batches_larger_than_one_statement(cat: &mut Catalog) {
    let (n1, _, _, _) = two_nodes(cat);
    // More than the 3,000 (SQLite) or 6,000 (PostgreSQL) files one statement takes.
    let files: Vec<NewFile> = (0..6203)
        .map(|i| {
            let mut f = new_file(&format!("2025/03/{:02}/f{i}.dat", i % 31), i);
            f.acq = format!("2025/03/{:02}", i % 31);
            f
        })
        .collect();
    let out = cat.write(|tx| tx.import_copies(&files, n1, NOW)).unwrap();
    let new_acqs = out
        .iter()
        .filter(|o| matches!(o, ImportOutcome::Imported { new_acq: true, .. }))
        .count();
    assert_eq!(new_acqs, 31, "each acquisition is new once");
    assert!(
        out.iter()
            .all(|o| matches!(o, ImportOutcome::Imported { new_file: true, .. }))
    );
    let on = cat.read(|tx| tx.files_on_node(n1, None, None)).unwrap();
    assert_eq!(on.len(), 6203);
}
