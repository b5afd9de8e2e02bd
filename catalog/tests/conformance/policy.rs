//! `policy::sync|clean|verify`: what `cairn file sync|clean|verify` and the mount's
//! `user.cairn.*` attributes ask for.

use cairn_catalog::model::{Has, Wants};
use cairn_catalog::policy::{self, Refusal, Scope, SyncOrder, SyncSource};
use cairn_catalog::{Catalog, CatalogError};

use super::{NOW, add_file, two_nodes};

fn refusal<T: std::fmt::Debug>(r: cairn_catalog::error::Result<T>) -> Refusal {
    match r {
        Err(CatalogError::Refused(r)) => r,
        other => panic!("a refusal: {other:?}"),
    }
}

pub fn sync_of_a_directory_requests_what_the_group_lacks_from_a_preferred_source(
    cat: &mut Catalog,
) {
    let (n1, _, n2, _) = two_nodes(cat);
    let a = add_file(cat, "2025/02/21/a.dat", 10, n1, Has::Yes);
    let b = add_file(cat, "2025/02/21/b.dat", 20, n2, Has::Yes);
    add_file(cat, "2025/02/22/c.dat", 30, n1, Has::Yes);
    let order = SyncOrder {
        group: "demo_storage2",
        from: SyncSource::Best { prefer: &[n1] },
        force: false,
    };
    let synced = cat
        .write(|tx| policy::sync(tx, &Scope::Under("2025/02/21".into()), order, NOW))
        .unwrap();
    assert_eq!(synced.requested.len(), 1, "{synced:?}");
    assert_eq!(synced.present, 1, "b is in the group already");
    assert_eq!(cat.read(|tx| tx.pending_reads(a, n1)).unwrap(), 1);
    assert_eq!(cat.read(|tx| tx.pending_reads(b, n2)).unwrap(), 0);
    let again = cat
        .write(|tx| policy::sync(tx, &Scope::Under("2025/02/21".into()), order, NOW))
        .unwrap();
    assert_eq!((again.requested.len(), again.pending), (0, 1));
}

pub fn sync_refusals_change_nothing(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    let missing = add_file(cat, "2025/02/21/gone.dat", 10, n1, Has::No);
    let here = add_file(cat, "2025/02/21/here.dat", 10, n2, Has::Yes);
    let best = |group| SyncOrder {
        group,
        from: SyncSource::Best { prefer: &[] },
        force: false,
    };
    let from = |node| SyncOrder {
        group: "demo_storage2",
        from: SyncSource::Node(node),
        force: false,
    };
    let mut run = |scope: Scope, order| cat.write(|tx| policy::sync(tx, &scope, order, NOW));
    assert_eq!(
        refusal(run(Scope::File(here), best("nope"))),
        Refusal::NoSuchGroup("nope".into())
    );
    assert!(matches!(
        refusal(run(Scope::File(missing), best("demo_storage2"))),
        Refusal::NoSource { .. }
    ));
    assert_eq!(
        refusal(run(Scope::File(here), from("nope"))),
        Refusal::NoSuchNode("nope".into())
    );
    assert!(matches!(
        refusal(run(Scope::File(here), from("demo_storage2"))),
        Refusal::SameGroup { .. }
    ));
    assert!(matches!(
        refusal(run(Scope::File(missing), from("demo_storage1"))),
        Refusal::NoHealthyCopyOn { .. }
    ));
    // A directory passes over what cannot be synced.
    let dir = run(Scope::Under(String::new()), best("demo_storage2")).unwrap();
    assert_eq!((dir.requested.len(), dir.no_source, dir.present), (0, 1, 1));
    assert_eq!(cat.read(|tx| tx.pending_reads(here, n2)).unwrap(), 0);
}

pub fn sync_from_a_named_node_is_forced_into_a_group_that_has_the_file(cat: &mut Catalog) {
    let (n1, _, n2, _) = two_nodes(cat);
    let f = add_file(cat, "2025/02/21/a.dat", 10, n1, Has::Yes);
    cat.write(|tx| tx.record_copy(f, n2, Has::Yes, Some(4096), NOW))
        .unwrap();
    let order = |force| SyncOrder {
        group: "demo_storage2",
        from: SyncSource::Node("demo_storage1"),
        force,
    };
    let plain = cat
        .write(|tx| policy::sync(tx, &Scope::File(f), order(false), NOW))
        .unwrap();
    assert_eq!((plain.present, plain.requested.len()), (1, 0));
    let forced = cat
        .write(|tx| policy::sync(tx, &Scope::File(f), order(true), NOW))
        .unwrap();
    assert_eq!(forced.requested.len(), 1);
}

pub fn clean_and_verify_act_on_present_copies(cat: &mut Catalog) {
    let (n1, _, _, _) = two_nodes(cat);
    let a = add_file(cat, "2025/02/21/a.dat", 10, n1, Has::Yes);
    let gone = add_file(cat, "2025/02/21/b.dat", 10, n1, Has::No);
    let all = Scope::Under("2025".into());
    let n = cat
        .write(|tx| policy::clean(tx, &all, "demo_storage1", Wants::ReleaseNow, NOW))
        .unwrap();
    assert_eq!(n, 1, "the gone copy is passed over");
    let copy = cat.read(|tx| tx.copy_on(a, n1)).unwrap().unwrap();
    assert_eq!(copy.wants, Wants::ReleaseNow);
    assert_eq!(
        cat.write(|tx| policy::verify(tx, &Scope::File(a), "demo_storage1", NOW))
            .unwrap(),
        1
    );
    assert!(matches!(
        refusal(cat.write(|tx| policy::verify(tx, &Scope::File(gone), "demo_storage1", NOW))),
        Refusal::NoCopyOn { .. }
    ));
    assert_eq!(
        refusal(cat.write(|tx| { policy::clean(tx, &Scope::File(a), "nope", Wants::Keep, NOW) })),
        Refusal::NoSuchNode("nope".into())
    );
    assert_eq!(
        cat.read(|tx| tx.copy_on(a, n1)).unwrap().unwrap().wants,
        Wants::ReleaseNow,
        "a refusal changes nothing"
    );
}
