//! The catalog conformance suite: every backend must pass every test here.
//!
//! Each behaviour is a function over an open, empty catalog; `backend_tests!` instantiates it
//! once per backend as `<backend>_backend::<behaviour>`. The PostgreSQL tests each get a
//! fresh database on the server named by `CAIRN_TEST_PG_URL` (`tests/pg.sh` starts one).
//!
//! The graph, files, requests and rules are here; imports (`Tx::import_copy`) are in
//! `conformance/imports.rs`, the sync/clean/verify policies in `conformance/policy.rs`.

#[path = "conformance/imports.rs"]
mod imports;
#[path = "conformance/policy.rs"]
mod policy;

use imports::*;
use policy::*;

use cairn_catalog::catalog::{
    Arrival, CopyRequestFilter, CopySelect, FileFilter, ImportKind, NewCopyRequest, NewFile,
    NewNode, NodeUpdate,
};
use cairn_catalog::model::{
    CopyId, FileId, GroupId, Has, IoClass, NodeId, NodeKind, Ownership, RequestId, RequestState,
    Wants,
};
use cairn_catalog::{Catalog, CatalogError};

use cairn_catalog::testing::{self, TestDatabase};

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDatabase>,
    cat: Catalog,
}

fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let cat = Catalog::init(&url).expect("a fresh catalog");
    Fixture {
        _dir: Some(dir),
        _db: None,
        cat,
    }
}

/// A fresh catalog in a new PostgreSQL database; `None` (said loudly) if there is no server
/// and this is not CI.
fn postgres(test: &str) -> Option<Fixture> {
    let server = testing::pg_server(test)?;
    let db = TestDatabase::create(&server);
    let cat = Catalog::init(&db.url).expect("a fresh catalog");
    Some(Fixture {
        _dir: None,
        _db: Some(db),
        cat,
    })
}

macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_backend {
            $(
                #[test]
                fn $name() {
                    let mut f = super::sqlite();
                    super::$name(&mut f.cat);
                }
            )+
        }
        mod postgres_backend {
            $(
                #[test]
                fn $name() {
                    if let Some(mut f) = super::postgres(concat!("postgres_backend::", stringify!($name))) {
                        super::$name(&mut f.cat);
                    }
                }
            )+
        }
    };
}

backend_tests!(
    groups_and_nodes_round_trip,
    duplicate_names_are_refused,
    unknown_names_are_not_found,
    transport_groups_hold_only_transport_nodes,
    node_update_changes_only_what_is_given,
    register_file_is_idempotent_and_immutable,
    register_rejects_bad_paths_and_md5,
    directory_tree_and_lookup,
    sync_candidates_skip_files_present_in_group_or_target,
    corrupt_copy_does_not_count_as_present,
    clean_candidates_follow_target_and_wants,
    copy_requests_are_deduplicated_and_claimed_once,
    copy_requests_made_in_bulk_are_deduplicated_as_one_by_one,
    copy_requests_are_claimed_and_recorded_in_batches,
    retry_and_cancel_follow_request_state,
    import_requests_reuse_identical_pending_ones,
    auto_actions_toggle_and_list,
    node_stats_count_healthy_copies_only,
    failed_transaction_changes_nothing,
    path_prefix_selects_a_subtree_only,
    path_prefix_selects_a_top_level_file_by_its_name,
    a_delayed_clean_asks_for_the_verification_it_waits_on,
    files_below_the_archive_rule_are_counted,
    import_copy_registers_a_file_with_its_copy_once,
    import_copy_of_an_empty_file_takes_no_blocks,
    import_copy_refuses_a_path_archived_with_other_contents,
    import_copy_fires_the_auto_actions_of_the_new_copy,
    import_copies_gives_each_file_the_outcome_of_import_copy,
    import_copies_takes_batches_larger_than_one_statement,
    sync_of_a_directory_requests_what_the_group_lacks_from_a_preferred_source,
    sync_refusals_change_nothing,
    sync_from_a_named_node_is_forced_into_a_group_that_has_the_file,
    clean_and_verify_act_on_present_copies,
    journal_reports_show_waiting_files_per_node,
    owners_and_modes_are_kept_by_name,
    a_directory_listing_version_changes_with_what_it_lists_only,
);

fn owners_and_modes_are_kept_by_name(cat: &mut Catalog) {
    let alice = Ownership {
        user: Some("alice".into()),
        group: Some("astro".into()),
        mode: Some(0o750),
    };
    let (d, made) = cat
        .write(|tx| tx.make_dir("obs/night1", &alice, NOW))
        .unwrap();
    assert!(made);
    let again = cat
        .write(|tx| tx.make_dir("obs/night1", &Ownership::default(), NOW))
        .unwrap();
    assert_eq!(again, (d, false), "an existing directory keeps its owner");
    let f = NewFile {
        path: "obs/night1/a.fits".into(),
        acq: "obs".into(),
        size: 3,
        md5: md5(3),
        mtime: NOW,
        own: Ownership {
            user: Some("bob".into()),
            group: Some("astro".into()),
            mode: Some(0o640),
        },
    };
    cat.write(|tx| tx.register_file(&f, NOW)).unwrap();
    let (dirs, files) = cat
        .read(|tx| {
            let parent = tx.dir_by_path("obs")?.unwrap();
            let (dirs, _) = tx.list_dir_stats(parent.id)?;
            let (_, files) = tx.list_dir_stats(d)?;
            Ok((dirs, files))
        })
        .unwrap();
    assert_eq!(dirs[0].own, alice);
    assert_eq!(files[0].own, f.own);
    let found = cat.read(|tx| tx.file_by_path("obs/night1/a.fits")).unwrap();
    assert_eq!(found.unwrap().own, f.own);
    // The parent made on the way has no owner recorded: mounts show it as before.
    let obs = cat.read(|tx| tx.dir_by_path("obs")).unwrap().unwrap();
    assert_eq!(obs.own, Ownership::default());
    // chmod of the directory, chown of the file.
    cat.write(|tx| {
        tx.set_dir_ownership(
            d,
            &Ownership {
                mode: Some(0o700),
                ..Default::default()
            },
        )?;
        let id = tx.file_by_path("obs/night1/a.fits")?.unwrap().id;
        tx.set_file_ownership(
            id,
            &Ownership {
                user: Some("carol".into()),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let night = cat.read(|tx| tx.dir_by_id(d)).unwrap().unwrap();
    assert_eq!(
        (night.own.user.as_deref(), night.own.mode),
        (Some("alice"), Some(0o700))
    );
    let file = cat
        .read(|tx| tx.file_by_path("obs/night1/a.fits"))
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            file.own.user.as_deref(),
            file.own.group.as_deref(),
            file.own.mode
        ),
        (Some("carol"), Some("astro"), Some(0o640))
    );
}

fn journal_reports_show_waiting_files_per_node(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    cat.write(|tx| {
        tx.report_journal(n1, 3, Some(NOW - 60), NOW)?;
        tx.report_journal(n2, 0, None, NOW)?;
        // A later report replaces the earlier one.
        tx.report_journal(n1, 5, Some(NOW - 120), NOW + 1)
    })
    .unwrap();
    let waiting = cat.read(|tx| tx.journals_waiting()).unwrap();
    assert_eq!(
        waiting.len(),
        1,
        "an empty journal is not listed: {waiting:?}"
    );
    let j = &waiting[0];
    assert_eq!(
        (
            j.node.as_str(),
            j.host.as_deref(),
            j.files,
            j.oldest,
            j.reported_at
        ),
        (
            "demo_storage1",
            Some("alpenhost1"),
            5,
            Some(NOW - 120),
            NOW + 1
        )
    );
}

const NOW: i64 = 1_740_179_228;

fn md5(n: u64) -> String {
    format!("{n:032x}")
}

/// Two groups with one node each on two hosts, like the start of seed 004.
fn two_nodes(cat: &mut Catalog) -> (NodeId, GroupId, NodeId, GroupId) {
    cat.write(|tx| {
        let g1 = tx.create_group("demo_storage1", IoClass::Default, None)?;
        let g2 = tx.create_group("demo_storage2", IoClass::Default, None)?;
        let (n1, _) = tx.create_node(&NewNode {
            name: "demo_storage1".into(),
            group: "demo_storage1".into(),
            host: Some("alpenhost1".into()),
            root: Some("/data".into()),
            active: true,
            ..NewNode::default()
        })?;
        let (n2, _) = tx.create_node(&NewNode {
            name: "demo_storage2".into(),
            group: "demo_storage2".into(),
            host: Some("alpenhost2".into()),
            root: Some("/data".into()),
            kind: Some(NodeKind::Archive),
            ..NewNode::default()
        })?;
        Ok((n1.id, g1.id, n2.id, g2.id))
    })
    .expect("the storage graph")
}

/// A mount keeps the kernel's copy of a listing while the directory's listing version is the
/// one it was listed at: every change to what the listing shows must change it, and nothing
/// else (so that a walk of a tree nobody writes to reads no listing again).
fn a_directory_listing_version_changes_with_what_it_lists_only(cat: &mut Catalog) {
    let (n1, _, _, _) = two_nodes(cat);
    let dir = |cat: &mut Catalog, path: &str| {
        cat.read(|tx| tx.dir_by_path(path))
            .unwrap()
            .unwrap_or_else(|| panic!("{path} is a directory"))
            .id
    };
    let version = |cat: &mut Catalog, id| cat.read(|tx| tx.dir_listing_version(id)).unwrap();
    let f = add_file(cat, "a/b/one.dat", 1, n1, Has::Yes);
    let (a, b) = (dir(cat, "a"), dir(cat, "a/b"));
    let (va, vb) = (version(cat, a), version(cat, b));
    assert!(va.is_some() && vb.is_some());

    // A new file: its directory only.
    add_file(cat, "a/b/two.dat", 2, n1, Has::Yes);
    assert_eq!(version(cat, a), va, "the parent lists no file of b");
    let vb2 = version(cat, b);
    assert_ne!(vb2, vb);
    // A copy, a verification, a wish: nothing a listing shows.
    cat.write(|tx| {
        tx.record_copy(f, n1, Has::Suspect, Some(4096), NOW)?;
        let c = tx.copy_on(f, n1)?.expect("the copy");
        tx.set_wants(&[c.id], Wants::ReleaseNow, NOW)?;
        tx.request_verify(&[c.id], NOW)
    })
    .unwrap();
    assert_eq!(version(cat, b), vb2, "copies are not listed");
    // A file's owner or mode: its directory.
    let own = Ownership {
        user: Some("obs".into()),
        group: None,
        mode: Some(0o640),
    };
    cat.write(|tx| tx.set_file_ownership(f, &own)).unwrap();
    let vb3 = version(cat, b);
    assert_ne!(vb3, vb2);
    assert_eq!(version(cat, a), va);
    // A subdirectory made, its mode changed, removed: the parent, each time.
    let (c, _) = cat
        .write(|tx| tx.make_dir("a/c", &Ownership::default(), NOW))
        .unwrap();
    let va2 = version(cat, a);
    assert_ne!(va2, va);
    cat.write(|tx| tx.set_dir_ownership(c, &own)).unwrap();
    let va3 = version(cat, a);
    assert_ne!(va3, va2);
    assert!(cat.write(|tx| tx.remove_empty_dir(c)).unwrap());
    assert_ne!(version(cat, a), va3);
    assert_eq!(version(cat, c), None, "gone");
    assert_eq!(version(cat, b), vb3, "a sibling's changes are not b's");
    // A batch import, one statement for many files: every directory it adds to.
    let files: Vec<NewFile> = (0..10)
        .map(|i| NewFile {
            path: format!("{}/f{i}.dat", if i % 2 == 0 { "a" } else { "a/b" }),
            acq: "2025/02/21".into(),
            size: i,
            md5: md5(i),
            mtime: NOW,
            own: Default::default(),
        })
        .collect();
    let va4 = version(cat, a);
    cat.write(|tx| tx.import_copies(&files, n1, NOW)).unwrap();
    assert_ne!(version(cat, a), va4);
    assert_ne!(version(cat, b), vb3);
}

fn add_file(cat: &mut Catalog, path: &str, size: u64, node: NodeId, has: Has) -> FileId {
    cat.write(|tx| {
        let (f, _) = tx.register_file(
            &NewFile {
                path: path.to_owned(),
                acq: "2025/02/21".into(),
                size,
                md5: md5(size),
                mtime: NOW,
                own: Default::default(),
            },
            NOW,
        )?;
        tx.record_copy(f.id, node, has, Some(4096), NOW)?;
        Ok(f.id)
    })
    .expect("a registered file")
}

fn groups_and_nodes_round_trip(cat: &mut Catalog) {
    two_nodes(cat);
    let (groups, nodes, hosts) = cat
        .read(|tx| Ok((tx.groups()?, tx.nodes()?, tx.hosts()?)))
        .unwrap();
    assert_eq!(
        groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["demo_storage1", "demo_storage2"]
    );
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].host.as_deref(), Some("alpenhost1"));
    assert_eq!(nodes[0].kind, NodeKind::Field);
    assert!(nodes[0].active);
    assert_eq!(nodes[1].kind, NodeKind::Archive);
    assert!(!nodes[1].active);
    assert_eq!(hosts.len(), 2, "hosts named by nodes are created");
}

fn duplicate_names_are_refused(cat: &mut Catalog) {
    two_nodes(cat);
    let err = cat
        .write(|tx| tx.create_group("demo_storage1", IoClass::Default, None))
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::AlreadyExists { kind: "group", .. }),
        "{err}"
    );
    assert_eq!(err.to_string(), "group \"demo_storage1\" already exists");
    let err = cat
        .write(|tx| {
            tx.create_node(&NewNode {
                name: "demo_storage2".into(),
                group: "demo_storage1".into(),
                ..NewNode::default()
            })
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "node \"demo_storage2\" already exists");
}

fn unknown_names_are_not_found(cat: &mut Catalog) {
    two_nodes(cat);
    let err = cat.read(|tx| tx.node("demo_storag2")).unwrap_err();
    assert_eq!(err.to_string(), "node \"demo_storag2\" not found");
    let err = cat.read(|tx| tx.group("nope")).unwrap_err();
    assert_eq!(err.to_string(), "group \"nope\" not found");
    let err = cat.read(|tx| tx.file("2025/x.dat")).unwrap_err();
    assert_eq!(err.to_string(), "file \"2025/x.dat\" not found");
    let err = cat.read(|tx| tx.acq("2025/02/30")).unwrap_err();
    assert_eq!(err.to_string(), "acquisition \"2025/02/30\" not found");
}

fn transport_groups_hold_only_transport_nodes(cat: &mut Catalog) {
    cat.write(|tx| tx.create_group("transport_group", IoClass::Transport, None))
        .unwrap();
    let err = cat
        .write(|tx| {
            tx.create_node(&NewNode {
                name: "t1".into(),
                group: "transport_group".into(),
                kind: Some(NodeKind::Archive),
                ..NewNode::default()
            })
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("holds only transport nodes"),
        "{err}"
    );
    let (node, _) = cat
        .write(|tx| {
            tx.create_node(&NewNode {
                name: "t1".into(),
                group: "transport_group".into(),
                ..NewNode::default()
            })
        })
        .unwrap();
    assert_eq!(
        node.kind,
        NodeKind::Transport,
        "a transport group's nodes default to transport"
    );
    assert!(cat.read(|tx| tx.node_by_name("t1")).unwrap().is_some());
}

fn node_update_changes_only_what_is_given(cat: &mut Catalog) {
    two_nodes(cat);
    let update = NodeUpdate {
        auto_import: Some(true),
        max_total: Some(Some(10_000)),
        username: Some(Some("root".into())),
        ..NodeUpdate::default()
    };
    let (n, _) = cat
        .write(|tx| tx.update_node("demo_storage1", &update))
        .unwrap();
    assert!(n.auto_import);
    assert_eq!(n.max_total, Some(10_000));
    assert_eq!(n.username.as_deref(), Some("root"));
    assert_eq!(n.root.as_deref(), Some("/data"));
    assert_eq!(n.host.as_deref(), Some("alpenhost1"));
    let clear = NodeUpdate {
        max_total: Some(None),
        ..NodeUpdate::default()
    };
    let (n, _) = cat
        .write(|tx| tx.update_node("demo_storage1", &clear))
        .unwrap();
    assert_eq!(n.max_total, None);
    assert!(n.auto_import);
}

fn register_file_is_idempotent_and_immutable(cat: &mut Catalog) {
    let f = NewFile {
        path: "2025/02/21/meta.txt".into(),
        acq: "2025/02/21".into(),
        size: 52,
        md5: "4f2a66c1ff5eb90a5013522d53ea2e91".into(),
        mtime: NOW,
        own: Default::default(),
    };
    let (a, created) = cat.write(|tx| tx.register_file(&f, NOW)).unwrap();
    assert!(created);
    assert_eq!(a.path, "2025/02/21/meta.txt");
    assert_eq!(a.name, "meta.txt");
    assert_eq!(a.acq, "2025/02/21");
    let (b, created) = cat.write(|tx| tx.register_file(&f, NOW + 5)).unwrap();
    assert!(!created, "the same file again is not new");
    assert_eq!(a, b);
    let changed = NewFile {
        size: 53,
        ..f.clone()
    };
    let err = cat.write(|tx| tx.register_file(&changed, NOW)).unwrap_err();
    assert!(
        err.to_string().contains("registered files never change"),
        "{err}"
    );
    let back = cat.read(|tx| tx.file("2025/02/21/meta.txt")).unwrap();
    assert_eq!(back.size, 52, "the refused registration changed nothing");
}

fn register_rejects_bad_paths_and_md5(cat: &mut Catalog) {
    for (path, md5, want) in [
        ("../etc/passwd", md5(1), "invalid archive path"),
        ("a//b.dat", md5(1), "invalid archive path"),
        ("2025/.hidden.dat", md5(1), "names starting with '.'"),
        ("2025/ok.dat", "XYZ".to_owned(), "invalid md5"),
    ] {
        let f = NewFile {
            path: path.to_owned(),
            acq: "a".into(),
            size: 1,
            md5: md5.clone(),
            mtime: 0,
            own: Default::default(),
        };
        let err = cat.write(|tx| tx.register_file(&f, NOW)).unwrap_err();
        assert!(err.to_string().contains(want), "{path}: {err}");
    }
    let files = cat.read(|tx| tx.files(&FileFilter::default())).unwrap();
    assert!(files.is_empty(), "nothing was half-registered");
}

fn directory_tree_and_lookup(cat: &mut Catalog) {
    let (n1, ..) = two_nodes(cat);
    add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Yes);
    let (root, d21, listing, hit, miss) = cat
        .read(|tx| {
            let root = tx.dir_by_path("")?.expect("the root directory");
            let d21 = tx.dir_by_path("2025/02/21")?.expect("dir 2025/02/21");
            let listing = tx.list_dir(d21.id)?;
            let stats = tx.list_dir_stats(d21.id)?;
            let hit = tx.lookup(d21.id, "meta.txt")?;
            let miss = tx.lookup(d21.id, "nope")?;
            Ok((root, d21, (listing, stats), hit, miss))
        })
        .unwrap();
    let (listing, (stat_dirs, stat_files)) = listing;
    assert_eq!(
        stat_dirs, listing.0,
        "both listings have the same subdirectories"
    );
    assert_eq!(
        stat_files
            .iter()
            .map(|f| (f.id, f.name.as_str(), f.size, f.mtime))
            .collect::<Vec<_>>(),
        listing
            .1
            .iter()
            .map(|f| (f.id, f.name.as_str(), f.size, f.mtime))
            .collect::<Vec<_>>(),
    );
    assert_eq!(stat_files[0].size, 52);
    assert_eq!(root.path, "");
    assert_eq!(d21.name, "21");
    let (dirs, files) = listing;
    assert_eq!(
        dirs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
        ["2025/02/21/23"]
    );
    assert_eq!(
        files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["2025/02/21/meta.txt"]
    );
    assert!(matches!(hit, Some(Ok(f)) if f.size == 52));
    assert!(miss.is_none());
    let sub = cat
        .read(|tx| tx.lookup(d21.id, "23"))
        .unwrap()
        .expect("subdirectory 23");
    assert!(matches!(sub, Err(d) if d.path == "2025/02/21/23"));
}

fn sync_candidates_skip_files_present_in_group_or_target(cat: &mut Catalog) {
    let (n1, g1, n2, g2) = two_nodes(cat);
    let a = add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1330.dat", 12, n1, Has::Yes);
    cat.write(|tx| tx.record_copy(a, n2, Has::Yes, None, NOW))
        .unwrap();
    let c = cat
        .read(|tx| tx.sync_candidates(n1, g2, None, &CopySelect::default()))
        .unwrap();
    assert_eq!(
        c.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
        ["2025/02/21/23/1324.dat", "2025/02/21/23/1330.dat"]
    );
    assert_eq!(c.iter().map(|c| c.size).sum::<u64>(), 24);
    // The other way: only meta.txt is on node 2, and group 1 has it already.
    let back = cat
        .read(|tx| tx.sync_candidates(n2, g1, None, &CopySelect::default()))
        .unwrap();
    assert!(back.is_empty());
    // With a target group that holds a file, that file is skipped too.
    let t = cat
        .read(|tx| tx.sync_candidates(n1, g2, Some(g1), &CopySelect::default()))
        .unwrap();
    assert!(t.is_empty(), "every file is already in the target group");
}

fn corrupt_copy_does_not_count_as_present(cat: &mut Catalog) {
    let (n1, g1, n2, _) = two_nodes(cat);
    let f = add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Corrupt);
    cat.write(|tx| tx.record_copy(f, n2, Has::Yes, None, NOW))
        .unwrap();
    let c = cat
        .read(|tx| tx.sync_candidates(n2, g1, None, &CopySelect::default()))
        .unwrap();
    assert_eq!(c.len(), 1, "the corrupt copy in group 1 does not count");
}

fn clean_candidates_follow_target_and_wants(cat: &mut Catalog) {
    let (n1, _, n2, g2) = two_nodes(cat);
    let a = add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Yes);
    cat.write(|tx| tx.record_copy(a, n2, Has::Yes, None, NOW))
        .unwrap();
    let all = cat
        .read(|tx| tx.clean_candidates(n1, Wants::ReleaseNow, None, &CopySelect::default()))
        .unwrap();
    assert_eq!(all.len(), 2);
    let targeted = cat
        .read(|tx| tx.clean_candidates(n1, Wants::ReleaseNow, Some(g2), &CopySelect::default()))
        .unwrap();
    assert_eq!(targeted.len(), 1);
    assert_eq!(targeted[0].path, "2025/02/21/meta.txt");
    let ids: Vec<_> = targeted.iter().map(|c| c.copy_id).collect();
    assert_eq!(
        cat.write(|tx| tx.set_wants(&ids, Wants::ReleaseNow, NOW))
            .unwrap(),
        1
    );
    assert_eq!(
        cat.write(|tx| tx.set_wants(&ids, Wants::ReleaseNow, NOW))
            .unwrap(),
        0
    );
    let again = cat
        .read(|tx| tx.clean_candidates(n1, Wants::ReleaseNow, Some(g2), &CopySelect::default()))
        .unwrap();
    assert!(
        again.is_empty(),
        "an already released copy is not counted again"
    );
    let copy = cat.read(|tx| tx.copy_on(a, n1)).unwrap().unwrap();
    assert_eq!(copy.wants, Wants::ReleaseNow);
    assert_eq!(copy.has, Has::Yes, "releasing does not delete: cairnd does");
}

fn copy_requests_are_deduplicated_and_claimed_once(cat: &mut Catalog) {
    let (n1, _, _, g2) = two_nodes(cat);
    let f = add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    let req = NewCopyRequest {
        file_id: f,
        from_node: n1,
        to_group: g2,
    };
    let id = cat
        .write(|tx| tx.create_copy_request(req, NOW))
        .unwrap()
        .expect("a new request");
    assert_eq!(
        cat.write(|tx| tx.create_copy_request(req, NOW)).unwrap(),
        None
    );
    assert_eq!(cat.read(|tx| tx.pending_reads(f, n1)).unwrap(), 1);
    assert!(
        cat.write(|tx| tx.claim_copy_request(id, "alpenhost2", NOW))
            .unwrap()
    );
    assert!(
        !cat.write(|tx| tx.claim_copy_request(id, "elsewhere", NOW))
            .unwrap(),
        "a claimed request cannot be claimed again"
    );
    let r = cat.read(|tx| tx.copy_request(id)).unwrap();
    assert_eq!(r.state, RequestState::Active);
    assert_eq!(r.claimed_by.as_deref(), Some("alpenhost2"));
    assert_eq!(r.attempts, 1);
    assert_eq!(r.path, "2025/02/21/meta.txt");
    let listed = cat
        .read(|tx| {
            tx.copy_requests(&CopyRequestFilter {
                states: vec![RequestState::Active],
                node: Some(n1),
                limit: None,
            })
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    let summary = cat.read(|tx| tx.outbound_summary(n1)).unwrap();
    assert_eq!(summary, vec![("demo_storage2".to_owned(), 1, 52)]);
}

fn copy_requests_made_in_bulk_are_deduplicated_as_one_by_one(cat: &mut Catalog) {
    let (n1, _, n2, g2) = two_nodes(cat);
    // More files than one statement's chunk.
    let files: Vec<FileId> = (0..1005)
        .map(|i| add_file(cat, &format!("2025/02/21/b{i:04}.txt"), 1 + i, n1, Has::Yes))
        .collect();
    let req = |file_id, from_node| NewCopyRequest {
        file_id,
        from_node,
        to_group: g2,
    };
    // Already requested: one pending, one claimed (active).
    let pending = cat
        .write(|tx| tx.create_copy_request(req(files[1], n1), NOW))
        .unwrap()
        .unwrap();
    let active = cat
        .write(|tx| tx.create_copy_request(req(files[2], n1), NOW))
        .unwrap()
        .unwrap();
    assert!(
        cat.write(|tx| tx.claim_copy_request(active, "elsewhere", NOW))
            .unwrap()
    );
    let mut reqs: Vec<NewCopyRequest> = files.iter().map(|&f| req(f, n1)).collect();
    // The same request twice, and one of the same file from another node.
    reqs.push(req(files[0], n1));
    reqs.push(req(files[0], n2));
    let ids = cat
        .write(|tx| tx.create_copy_requests(&reqs, NOW + 1))
        .unwrap();
    assert_eq!(ids.len(), reqs.len());
    assert_eq!(ids[1], None, "pending already");
    assert_eq!(ids[2], None, "active already");
    assert_eq!(ids[1005], None, "asked twice: made once");
    let made: Vec<(usize, RequestId)> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| id.map(|id| (i, id)))
        .collect();
    assert_eq!(made.len(), 1005 - 2 + 1);
    let distinct: std::collections::HashSet<_> = made.iter().map(|(_, id)| *id).collect();
    assert_eq!(distinct.len(), made.len());
    for &(i, id) in &made {
        let r = cat.read(|tx| tx.copy_request(id)).unwrap();
        let want = reqs[i];
        assert_eq!(
            (r.file_id, r.from_node_id, r.to_group_id, r.state),
            (
                want.file_id,
                want.from_node,
                want.to_group,
                RequestState::Pending
            ),
            "request {i}"
        );
        assert!(id != pending && id != active);
    }
    // Asked again: nothing new.
    let again = cat
        .write(|tx| tx.create_copy_requests(&reqs, NOW + 2))
        .unwrap();
    assert!(again.iter().all(Option::is_none));
    assert_eq!(cat.read(|tx| tx.pending_reads(files[0], n1)).unwrap(), 1);
}

fn copy_requests_are_claimed_and_recorded_in_batches(cat: &mut Catalog) {
    let (n1, _, n2, g2) = two_nodes(cat);
    let mut ids = Vec::new();
    let mut files = Vec::new();
    for i in 0..3 {
        let f = add_file(cat, &format!("2025/02/21/f{i}.txt"), 10 + i, n1, Has::Yes);
        let req = NewCopyRequest {
            file_id: f,
            from_node: n1,
            to_group: g2,
        };
        files.push(f);
        ids.push(
            cat.write(|tx| tx.create_copy_request(req, NOW))
                .unwrap()
                .unwrap(),
        );
    }
    // One is taken by another host first; one is cancelled before it arrives.
    assert!(
        cat.write(|tx| tx.claim_copy_request(ids[0], "other", NOW))
            .unwrap()
    );
    let won = cat
        .write(|tx| tx.claim_copy_requests(&ids, "alpenhost2", NOW))
        .unwrap();
    assert_eq!(won, vec![ids[1], ids[2]]);
    cat.write(|tx| tx.cancel_copy_request(ids[2], NOW)).unwrap();
    let arrivals: Vec<Arrival> = [1, 2]
        .iter()
        .map(|&i| Arrival {
            request: ids[i],
            file_id: files[i],
            node_id: n2,
            bytes: 10 + i as u64,
            seconds: 0.5,
        })
        .collect();
    let fired = cat.write(|tx| tx.record_arrivals(&arrivals, NOW)).unwrap();
    assert_eq!(fired, vec![Vec::new(), Vec::new()]);
    let done = cat.read(|tx| tx.copy_request(ids[1])).unwrap();
    assert_eq!(
        (done.state, done.bytes, done.seconds),
        (RequestState::Done, Some(11), Some(0.5))
    );
    assert_eq!(
        cat.read(|tx| tx.copy_request(ids[2])).unwrap().state,
        RequestState::Cancelled,
        "a cancelled request stays cancelled"
    );
    for &i in &[1, 2] {
        let c = cat.read(|tx| tx.copy_on(files[i], n2)).unwrap().unwrap();
        assert_eq!((c.has, c.size_on_node), (Has::Yes, Some(4096)));
    }
}

fn retry_and_cancel_follow_request_state(cat: &mut Catalog) {
    let (n1, _, _, g2) = two_nodes(cat);
    let f = add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    let req = NewCopyRequest {
        file_id: f,
        from_node: n1,
        to_group: g2,
    };
    let id = cat
        .write(|tx| tx.create_copy_request(req, NOW))
        .unwrap()
        .unwrap();
    let err = cat
        .write(|tx| tx.retry_copy_requests(Some(id)))
        .unwrap_err();
    assert!(
        err.to_string().contains("only failed or cancelled"),
        "{err}"
    );
    cat.write(|tx| tx.cancel_copy_request(id, NOW)).unwrap();
    let err = cat.write(|tx| tx.cancel_copy_request(id, NOW)).unwrap_err();
    assert!(err.to_string().contains("only pending or active"), "{err}");
    assert_eq!(cat.write(|tx| tx.retry_copy_requests(Some(id))).unwrap(), 1);
    assert_eq!(
        cat.read(|tx| tx.copy_request(id)).unwrap().state,
        RequestState::Pending
    );
    let err = cat
        .write(|tx| tx.cancel_copy_request(RequestId(999), NOW))
        .unwrap_err();
    assert_eq!(err.to_string(), "copy request \"#999\" not found");
}

fn import_requests_reuse_identical_pending_ones(cat: &mut Catalog) {
    let (n1, ..) = two_nodes(cat);
    let (a, new_a) = cat
        .write(|tx| tx.create_import_request(n1, ".", ImportKind::Init, NOW))
        .unwrap();
    let (b, new_b) = cat
        .write(|tx| tx.create_import_request(n1, ".", ImportKind::Init, NOW))
        .unwrap();
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    let (_, scan) = cat
        .write(|tx| {
            tx.create_import_request(
                n1,
                "2025/02/21",
                ImportKind::Scan { register_new: true },
                NOW,
            )
        })
        .unwrap();
    assert!(scan);
    let pending = cat
        .read(|tx| tx.import_requests(Some(n1), &[RequestState::Pending]))
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].init);
    assert!(pending[1].scan && pending[1].register_new);
}

fn auto_actions_toggle_and_list(cat: &mut Catalog) {
    let (..) = two_nodes(cat);
    let (g2, n1, g1) = cat
        .read(|tx| {
            Ok((
                tx.group("demo_storage2")?,
                tx.node("demo_storage1")?,
                tx.group("demo_storage1")?,
            ))
        })
        .unwrap();
    assert!(
        cat.write(|tx| tx.set_autosync(&g2, &n1, true, None))
            .unwrap()
    );
    assert!(
        !cat.write(|tx| tx.set_autosync(&g2, &n1, true, None))
            .unwrap(),
        "already on"
    );
    assert!(
        cat.write(|tx| tx.set_autoclean(&g2, &n1, true, None))
            .unwrap()
    );
    let acts = cat.read(|tx| tx.auto_actions(Some(g2.id), None)).unwrap();
    assert_eq!(acts.len(), 1);
    assert!(acts[0].autosync && acts[0].autoclean);
    assert!(
        cat.write(|tx| tx.set_autosync(&g2, &n1, false, None))
            .unwrap()
    );
    assert!(
        cat.write(|tx| tx.set_autoclean(&g2, &n1, false, None))
            .unwrap()
    );
    assert!(
        cat.read(|tx| tx.auto_actions(None, None))
            .unwrap()
            .is_empty()
    );
    let err = cat
        .write(|tx| tx.set_autosync(&g1, &n1, true, None))
        .unwrap_err();
    assert!(err.to_string().contains("outside the group"), "{err}");
}

fn node_stats_count_healthy_copies_only(cat: &mut Catalog) {
    let (n1, ..) = two_nodes(cat);
    add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Corrupt);
    add_file(cat, "2025/02/21/23/1330.dat", 12, n1, Has::Suspect);
    add_file(cat, "2025/02/21/23/1342.dat", 12, n1, Has::Yes);
    let stats = cat.read(|tx| tx.node_stats(None)).unwrap();
    assert_eq!(stats.len(), 2);
    let s = &stats[0];
    assert_eq!(
        (s.node.as_str(), s.files, s.bytes),
        ("demo_storage1", 2, 64)
    );
    assert_eq!((s.corrupt, s.suspect, s.missing), (1, 1, 0));
    assert_eq!((stats[1].files, stats[1].bytes), (0, 0));
}

fn failed_transaction_changes_nothing(cat: &mut Catalog) {
    let err = cat
        .write(|tx| {
            tx.create_group("half", IoClass::Default, None)?;
            tx.create_group("half", IoClass::Default, None)
        })
        .unwrap_err();
    assert!(matches!(err, CatalogError::AlreadyExists { .. }));
    assert!(cat.read(|tx| tx.group_by_name("half")).unwrap().is_none());
}

fn path_prefix_selects_a_subtree_only(cat: &mut Catalog) {
    let (n1, ..) = two_nodes(cat);
    add_file(cat, "2025/02/21/meta.txt", 52, n1, Has::Yes);
    add_file(cat, "2025/02/21/23/1324.dat", 12, n1, Has::Yes);
    add_file(cat, "2025/02/210/x.dat", 13, n1, Has::Yes);
    add_file(cat, "2025_a/y.dat", 14, n1, Has::Yes);
    let pick = |cat: &mut Catalog, p: &str| {
        cat.read(|tx| {
            tx.files(&FileFilter {
                path_prefix: Some(p.into()),
                ..FileFilter::default()
            })
        })
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        pick(cat, "2025/02/21"),
        ["2025/02/21/meta.txt", "2025/02/21/23/1324.dat"]
    );
    assert_eq!(
        pick(cat, "2025/02/21/23/1324.dat"),
        ["2025/02/21/23/1324.dat"]
    );
    assert_eq!(pick(cat, "2025_a").len(), 1, "'_' is not a wildcard");
    assert_eq!(pick(cat, "").len(), 4);
    add_file(cat, "Raw/z.dat", 15, n1, Has::Yes);
    add_file(cat, "raw/é/z.dat", 16, n1, Has::Yes);
    assert_eq!(
        pick(cat, "raw"),
        ["raw/é/z.dat"],
        "paths are case-sensitive"
    );
    assert_eq!(pick(cat, "raw/é"), ["raw/é/z.dat"]);
    assert_eq!(pick(cat, "RAW"), Vec::<String>::new());
}

/// Regression: `--path run1.bin` found nothing for a file in the archive's root directory
/// (whose path is empty), while `--path t/a.txt` worked. Every `--path` goes through the same
/// clause: listings, a node's files, and the sync, clean and verify selections.
fn path_prefix_selects_a_top_level_file_by_its_name(cat: &mut Catalog) {
    let (n1, _, _, g2) = two_nodes(cat);
    add_file(cat, "run1.bin", 21, n1, Has::Yes);
    add_file(cat, "run10.bin", 22, n1, Has::Yes);
    add_file(cat, "t/a.txt", 23, n1, Has::Yes);
    add_file(cat, "t/run1.bin", 24, n1, Has::Yes);
    let select = |p: &str| CopySelect {
        path_prefix: Some(p.into()),
        ..CopySelect::default()
    };
    let paths = |c: Vec<cairn_catalog::catalog::SyncCandidate>| {
        c.into_iter().map(|c| c.path).collect::<Vec<_>>()
    };
    cat.read(|tx| {
        for p in ["run1.bin", "/run1.bin", "./run1.bin"] {
            let listed = tx.files(&FileFilter {
                path_prefix: Some(p.into()),
                ..FileFilter::default()
            })?;
            assert_eq!(
                listed.into_iter().map(|f| f.path).collect::<Vec<_>>(),
                ["run1.bin"],
                "file list --path {p}"
            );
        }
        let on_node = tx.files_on_node(n1, None, Some("run1.bin"))?;
        assert_eq!(
            on_node.into_iter().map(|(f, _)| f.path).collect::<Vec<_>>(),
            ["run1.bin"],
            "node files"
        );
        assert_eq!(
            paths(tx.sync_candidates(n1, g2, None, &select("run1.bin"))?),
            ["run1.bin"],
            "node sync --path"
        );
        assert_eq!(
            paths(tx.clean_candidates(n1, Wants::ReleaseNow, None, &select("run1.bin"))?),
            ["run1.bin"],
            "node clean --path"
        );
        assert_eq!(
            paths(tx.verify_candidates(n1, &[Has::Yes], &select("run1.bin"))?),
            ["run1.bin"],
            "node verify --path"
        );
        assert_eq!(
            paths(tx.sync_candidates(n1, g2, None, &select("t/a.txt"))?),
            ["t/a.txt"],
            "a file below a directory, as before"
        );
        assert_eq!(
            paths(tx.sync_candidates(n1, g2, None, &select("t"))?),
            ["t/a.txt", "t/run1.bin"]
        );
        Ok(())
    })
    .unwrap();
}

/// A delayed auto-clean (field node n1, group of n2, after 100 s) waits on a verification of
/// n2's copy after it arrived; cairnd asks for it once the copy is old enough, and a corrupt
/// copy there keeps n1's copy.
fn a_delayed_clean_asks_for_the_verification_it_waits_on(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    let ok = add_file(cat, "2025/02/21/ok.dat", 31, n1, Has::Yes);
    let bad = add_file(cat, "2025/02/21/bad.dat", 32, n1, Has::Yes);
    cat.write(|tx| {
        let g = tx.group("demo_storage2")?;
        let n = tx.node("demo_storage1")?;
        tx.set_autoclean(&g, &n, true, Some(100))?;
        for f in [ok, bad] {
            tx.record_copy(f, n2, Has::Yes, Some(4096), NOW)?;
        }
        Ok(())
    })
    .unwrap();
    let due = |cat: &mut Catalog, t| cat.read(|tx| tx.delayed_clean_unverified(n2, t)).unwrap();
    assert!(due(cat, NOW + 50).is_empty(), "not old enough");
    let waiting = due(cat, NOW + 100);
    assert_eq!(
        waiting
            .iter()
            .map(|(_, p, field)| (p.as_str(), field.as_str()))
            .collect::<Vec<_>>(),
        [
            ("2025/02/21/ok.dat", "demo_storage1"),
            ("2025/02/21/bad.dat", "demo_storage1")
        ]
    );
    let ids: Vec<CopyId> = waiting.iter().map(|(id, ..)| *id).collect();
    cat.write(|tx| tx.request_verify(&ids, NOW + 100)).unwrap();
    assert!(due(cat, NOW + 100).is_empty(), "asked once");
    cat.write(|tx| {
        tx.record_verify(ids[0], Has::Yes, NOW + 110)?;
        tx.record_verify(ids[1], Has::Corrupt, NOW + 110)
    })
    .unwrap();
    assert!(
        due(cat, NOW + 200).is_empty(),
        "verified, or corrupt: nothing more to ask"
    );
    let released = cat.read(|tx| tx.delayed_clean_due(n1, NOW + 200)).unwrap();
    assert_eq!(
        released
            .iter()
            .map(|(_, p, _)| p.as_str())
            .collect::<Vec<_>>(),
        ["2025/02/21/ok.dat"]
    );
    let kept = cat
        .read(|tx| tx.delayed_clean_blocked(n1, NOW + 200))
        .unwrap();
    assert_eq!(
        kept.iter()
            .map(|(_, p, g)| (p.as_str(), g.as_str()))
            .collect::<Vec<_>>(),
        [("2025/02/21/bad.dat", "demo_storage2")]
    );
}

fn files_below_the_archive_rule_are_counted(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    let a = add_file(cat, "a.dat", 41, n1, Has::Yes);
    add_file(cat, "b.dat", 42, n1, Has::Yes);
    cat.write(|tx| tx.record_copy(a, n2, Has::Yes, Some(4096), NOW))
        .unwrap();
    let below = |cat: &mut Catalog, min| cat.read(|tx| tx.files_below_archive_rule(min)).unwrap();
    assert_eq!(below(cat, 1), 1, "b has no archive copy");
    assert_eq!(below(cat, 2), 2);
    assert_eq!(below(cat, 0), 0);
}
