//! Several sites: a PostgreSQL primary at the archive, a hot standby at a distant site, the
//! link between them with its delay ([`cairn_tests::site::Sites`]), and cairn's processes at
//! the distant site reading from the standby and writing to the primary through the link.
//!
//! These start servers of their own (PostgreSQL's binaries must be installed) and need no
//! `CAIRN_TEST_PG_URL`.

use std::time::Duration;

use cairn_tests::site::{Sites, can_run_servers};

#[test]
fn the_standby_replicates_through_the_link_and_waits_while_it_is_cut() {
    if !can_run_servers("the_standby_replicates_through_the_link_and_waits_while_it_is_cut") {
        return;
    }
    let sites = Sites::new(Duration::from_millis(5));
    let mut primary = sites.primary.client("postgres");
    primary
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();
    sites.wait_replayed(Duration::from_secs(30));
    let count = |sites: &Sites| -> i64 {
        sites
            .standby
            .client("postgres")
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&sites), 1);

    sites.link.cut();
    let mut primary = sites.primary.client("postgres");
    primary.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&sites), 1, "nothing crosses a cut link");

    sites.link.restore();
    sites.wait_replayed(Duration::from_secs(60));
    assert_eq!(
        count(&sites),
        2,
        "replication resumes when the link is back"
    );
}
