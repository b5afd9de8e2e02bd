//! Schema versions: every earlier version upgrades to the current one, and a binary refuses
//! a catalog of another version with a message naming the fix.

use cairn_catalog::schema::{MIGRATIONS, SCHEMA_VERSION};
use cairn_catalog::{Catalog, CatalogError};

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/catalog.db", dir.path().display())
}

/// Table and column names of a SQLite catalog, for comparing schemas.
fn schema_of(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(format!(
            "{}: {:?}",
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn every_earlier_version_upgrades_to_current() {
    let fresh = tempfile::tempdir().unwrap();
    Catalog::init(&url(&fresh)).unwrap();
    let want = schema_of(&fresh.path().join("catalog.db"));
    for m in MIGRATIONS {
        let dir = tempfile::tempdir().unwrap();
        Catalog::init_at(&url(&dir), m.version).unwrap();
        let (before, after) = Catalog::upgrade(&url(&dir)).unwrap();
        assert_eq!((before, after), (m.version, SCHEMA_VERSION));
        assert_eq!(
            schema_of(&dir.path().join("catalog.db")),
            want,
            "from version {}",
            m.version
        );
        let mut cat = Catalog::open(&url(&dir)).expect("an upgraded catalog opens");
        assert_eq!(cat.schema_version().unwrap(), Some(SCHEMA_VERSION));
    }
}

#[test]
fn older_catalog_says_run_db_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    Catalog::init(&url(&dir)).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
    conn.execute("UPDATE schema_version SET version = 0", [])
        .unwrap();
    let err = Catalog::open(&url(&dir)).unwrap_err();
    assert!(
        matches!(err, CatalogError::SchemaTooOld { found: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run `cairn db upgrade`"), "{err}");
}

#[test]
fn newer_catalog_says_upgrade_cairn_and_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    Catalog::init(&url(&dir)).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    let err = Catalog::open(&url(&dir)).unwrap_err();
    assert!(err.to_string().contains("newer than this cairn"), "{err}");
    let err = Catalog::upgrade(&url(&dir)).unwrap_err();
    assert!(
        matches!(err, CatalogError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn init_twice_is_refused_and_open_of_nothing_says_init() {
    let dir = tempfile::tempdir().unwrap();
    let err = Catalog::open(&url(&dir)).unwrap_err();
    assert!(err.to_string().contains("cairn db init"), "{err}");
    Catalog::init(&url(&dir)).unwrap();
    let err = Catalog::init(&url(&dir)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn catalog_id_is_stable_and_distinct() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let id_a = Catalog::init(&url(&a)).unwrap().catalog_id().unwrap();
    let id_b = Catalog::init(&url(&b)).unwrap().catalog_id().unwrap();
    assert_eq!(id_a.len(), 32);
    assert_ne!(id_a, id_b);
    assert_eq!(Catalog::open(&url(&a)).unwrap().catalog_id().unwrap(), id_a);
}
