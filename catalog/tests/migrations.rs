//! Schema versions: every earlier version upgrades to the current one, and a binary refuses
//! a catalog of another version with a message naming the fix.

use cairn_catalog::schema::{MIGRATIONS, SCHEMA_VERSION};
use cairn_catalog::testing::{self, TestDatabase};
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

/// Columns, triggers and indexes of a PostgreSQL catalog, for comparing schemas.
fn postgres_schema_of(url: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut out = Vec::new();
    for r in client
        .query(
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
             || ' ' || COALESCE(column_default, '') FROM information_schema.columns \
             WHERE table_schema = current_schema() ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        out.push(r.get::<_, String>(0));
    }
    for r in client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
             UNION ALL SELECT tgname || ' ' || tgrelid::regclass::text FROM pg_trigger \
             WHERE NOT tgisinternal ORDER BY 1",
            &[],
        )
        .unwrap()
    {
        out.push(r.get::<_, String>(0));
    }
    out
}

#[test]
fn every_earlier_version_upgrades_to_current_postgres() {
    let Some(server) = testing::pg_server("every_earlier_version_upgrades_to_current_postgres")
    else {
        return;
    };
    let fresh = TestDatabase::create(&server);
    Catalog::init(&fresh.url).unwrap();
    let want = postgres_schema_of(&fresh.url);
    assert!(
        want.iter().all(|c| !c.contains(" integer ")),
        "every integer column is 64-bit: {want:#?}"
    );
    for m in MIGRATIONS {
        let db = TestDatabase::create(&server);
        Catalog::init_at(&db.url, m.version).unwrap();
        let (before, after) = Catalog::upgrade(&db.url).unwrap();
        assert_eq!((before, after), (m.version, SCHEMA_VERSION));
        assert_eq!(
            postgres_schema_of(&db.url),
            want,
            "from version {}",
            m.version
        );
        let mut cat = Catalog::open(&db.url).expect("an upgraded catalog opens");
        assert_eq!(cat.schema_version().unwrap(), Some(SCHEMA_VERSION));
    }
}

#[test]
fn open_of_an_empty_database_says_init_and_hides_the_password_postgres() {
    let test = "open_of_an_empty_database_says_init_and_hides_the_password_postgres";
    let Some(server) = testing::pg_server(test) else {
        return;
    };
    let db = TestDatabase::create(&server);
    let err = Catalog::open(&db.url).unwrap_err();
    assert!(err.to_string().contains("cairn db init"), "{err}");
    // Nothing listens on port 1: the message names the catalog, the reason, and no password.
    let url = "postgres://cairn:s3cret@127.0.0.1:1/cairn";
    let err = Catalog::open(url).unwrap_err().to_string();
    assert!(
        err.contains("postgres://cairn:***@127.0.0.1:1/cairn"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}
