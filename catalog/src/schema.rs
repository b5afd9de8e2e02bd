//! Schema and migrations.
//!
//! The schema is a list of migrations, applied in order, each in its own transaction together
//! with the bump of `schema_version.version`. A binary knows the version it was built for
//! ([`SCHEMA_VERSION`]) and refuses a catalog of any other version with a message naming the
//! command that fixes it: `cairn db upgrade` when the catalog is older, a newer cairn when the
//! catalog is newer. `docs/catalog-schema.md` keeps the history in prose.
//!
//! The SQL is shared by every backend; the one token `{ID}` stands for an auto-assigned
//! integer primary key, which SQLite and PostgreSQL spell differently, and `INTEGER` columns
//! are 64-bit `BIGINT` on PostgreSQL, as they are in SQLite. A migration may add statements
//! for PostgreSQL only ([`Migration::postgres`]): the triggers that wake cairnd.

use crate::db::Dialect;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 5;

pub struct Migration {
    /// The version the catalog has after this migration.
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
    /// Statements run after `sql` on PostgreSQL only.
    pub postgres: &'static str,
    /// Statements run after `sql` on SQLite only.
    pub sqlite: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial schema: hosts, groups, nodes, the directory tree, acquisitions, \
                      files, copies, copy and import requests, auto-actions",
        sql: V1,
        // PostgreSQL catalogs start at schema version 2; their wake-up triggers are part of
        // the initial schema, so every PostgreSQL catalog has them.
        postgres: V1_POSTGRES,
        sqlite: "",
    },
    Migration {
        version: 2,
        description: "delayed auto-clean (a copy is released only once the file has been in \
                      the group this long and its copy there was verified since), and \
                      auto-sync restricted to a path prefix, pausing nodes and hosts, and \
                      closed (complete) acquisitions",
        sql: V2,
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 3,
        description: "journals: how many closed files wait in each write node's journal on \
                      its host, reported by the mount and cairnd there",
        sql: V3,
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 4,
        description: "owners, groups (by name) and permission bits of files and directories; \
                      rows written before stay NULL, which mounts show as before",
        sql: V4,
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 5,
        description: "a directory's listing version, bumped by triggers whenever an entry of \
                      it is added, removed, renamed or changes what a listing shows, so that \
                      a mount tells whether a listing it gave still holds with one query",
        sql: V5,
        postgres: V5_POSTGRES,
        sqlite: V5_SQLITE,
    },
];

/// `dir.listing_version` counts the changes to what the directory lists: its files' and
/// subdirectories' names, and the attributes a listing shows of them. The triggers bump it
/// (those of the database, so that no statement that changes an entry can forget to): a file
/// or subdirectory added, removed, moved (both directories), renamed, or changed in size,
/// mtime, owner, group or mode. Ids are never reused, so a version belongs to one directory
/// for good.
const V5: &str = "ALTER TABLE dir ADD COLUMN listing_version BIGINT NOT NULL DEFAULT 0;";

const V5_SQLITE: &str = "
CREATE TRIGGER file_listed_insert AFTER INSERT ON file BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = NEW.dir_id;
END;
CREATE TRIGGER file_listed_delete AFTER DELETE ON file BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = OLD.dir_id;
END;
CREATE TRIGGER file_listed_update AFTER UPDATE OF dir_id, name, size, mtime, owner, grp, mode
    ON file BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id IN (OLD.dir_id, NEW.dir_id);
END;
CREATE TRIGGER dir_listed_insert AFTER INSERT ON dir BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = NEW.parent_id;
END;
CREATE TRIGGER dir_listed_delete AFTER DELETE ON dir BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = OLD.parent_id;
END;
CREATE TRIGGER dir_listed_update AFTER UPDATE OF parent_id, name, created_at, owner, grp, mode
    ON dir BEGIN
    UPDATE dir SET listing_version = listing_version + 1
        WHERE id IN (OLD.parent_id, NEW.parent_id);
END;
";

/// On PostgreSQL, an insert bumps each directory once per statement (an import inserts a
/// batch of files in one statement), not once per row.
const V5_POSTGRES: &str = r#"
CREATE FUNCTION cairn_files_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dir SET listing_version = listing_version + 1
        WHERE id IN (SELECT dir_id FROM added);
    RETURN NULL;
END $$;
CREATE TRIGGER file_listed_insert AFTER INSERT ON file REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_files_added();

CREATE FUNCTION cairn_file_listed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = OLD.dir_id;
    IF TG_OP = 'UPDATE' AND NEW.dir_id <> OLD.dir_id THEN
        UPDATE dir SET listing_version = listing_version + 1 WHERE id = NEW.dir_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER file_listed AFTER DELETE
    OR UPDATE OF dir_id, name, size, mtime, owner, grp, mode ON file
    FOR EACH ROW EXECUTE FUNCTION cairn_file_listed();

CREATE FUNCTION cairn_dirs_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dir SET listing_version = listing_version + 1
        WHERE id IN (SELECT parent_id FROM added);
    RETURN NULL;
END $$;
CREATE TRIGGER dir_listed_insert AFTER INSERT ON dir REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION cairn_dirs_added();

CREATE FUNCTION cairn_dir_listed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dir SET listing_version = listing_version + 1 WHERE id = OLD.parent_id;
    IF TG_OP = 'UPDATE' AND NEW.parent_id IS DISTINCT FROM OLD.parent_id THEN
        UPDATE dir SET listing_version = listing_version + 1 WHERE id = NEW.parent_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER dir_listed AFTER DELETE
    OR UPDATE OF parent_id, name, created_at, owner, grp, mode ON dir
    FOR EACH ROW EXECUTE FUNCTION cairn_dir_listed();
"#;

const V4: &str = "ALTER TABLE file ADD COLUMN owner TEXT;
ALTER TABLE file ADD COLUMN grp TEXT;
ALTER TABLE file ADD COLUMN mode BIGINT;
ALTER TABLE dir ADD COLUMN owner TEXT;
ALTER TABLE dir ADD COLUMN grp TEXT;
ALTER TABLE dir ADD COLUMN mode BIGINT;";

const V3: &str = "CREATE TABLE journal (
    node_id      BIGINT NOT NULL PRIMARY KEY REFERENCES node (id) ON DELETE CASCADE,
    files        BIGINT NOT NULL,
    oldest       BIGINT,
    reported_at  BIGINT NOT NULL
);";

const V2: &str = "ALTER TABLE auto_action ADD COLUMN clean_after BIGINT;
ALTER TABLE auto_action ADD COLUMN path_prefix TEXT;
ALTER TABLE node ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE host ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE acq ADD COLUMN closed_at BIGINT;";

/// NOTIFY `cairn_wake` when there is new work, so that the cairnd concerned wakes at once
/// (it LISTENs) instead of at its next loop: a copy request due into a group (`group ID`), an
/// import request, or a copy to release or verify on a node (`node ID`). Notifications are
/// sent at commit, and equal ones within one transaction are sent once, so a bulk request
/// wakes each daemon once.
const V1_POSTGRES: &str = r#"
CREATE FUNCTION cairn_wake_copy_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'pending' AND NEW.not_before <= extract(epoch FROM now()) THEN
        PERFORM pg_notify('cairn_wake', 'group ' || NEW.to_group);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER copy_request_wake AFTER INSERT OR UPDATE OF state ON copy_request
    FOR EACH ROW EXECUTE FUNCTION cairn_wake_copy_request();

CREATE FUNCTION cairn_wake_node() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cairn_wake', 'node ' || NEW.node_id);
    RETURN NULL;
END $$;
CREATE TRIGGER import_request_wake AFTER INSERT ON import_request
    FOR EACH ROW EXECUTE FUNCTION cairn_wake_node();
CREATE TRIGGER copy_wake AFTER UPDATE OF wants, verify_requested ON copy
    FOR EACH ROW WHEN (NEW.wants = 'release_now' OR NEW.verify_requested = 1)
    EXECUTE FUNCTION cairn_wake_node();
"#;

const V1: &str = r#"
CREATE TABLE schema_version (
    version     INTEGER NOT NULL,
    catalog_id  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE host (
    id          {ID},
    name        TEXT NOT NULL UNIQUE,
    address     TEXT,
    notes       TEXT,
    last_seen   BIGINT
);

CREATE TABLE storage_group (
    id          {ID},
    name        TEXT NOT NULL UNIQUE,
    io_class    TEXT NOT NULL DEFAULT 'default' CHECK (io_class IN ('default', 'transport')),
    notes       TEXT
);

CREATE TABLE node (
    id           {ID},
    name         TEXT NOT NULL UNIQUE,
    group_id     BIGINT NOT NULL REFERENCES storage_group (id),
    kind         TEXT NOT NULL DEFAULT 'field' CHECK (kind IN ('field', 'archive', 'transport')),
    host_id      BIGINT REFERENCES host (id),
    root         TEXT,
    active       INTEGER NOT NULL DEFAULT 0,
    auto_import  INTEGER NOT NULL DEFAULT 0,
    auto_verify  BIGINT,
    max_total    BIGINT,
    min_avail    BIGINT,
    avail        BIGINT,
    capacity     BIGINT,
    last_checked BIGINT,
    username     TEXT,
    address      TEXT,
    notes        TEXT
);
CREATE INDEX node_group ON node (group_id);
CREATE INDEX node_host ON node (host_id);

CREATE TABLE dir (
    id          {ID},
    parent_id   BIGINT REFERENCES dir (id),
    name        TEXT NOT NULL,
    path        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX dir_parent_name ON dir (parent_id, name);
INSERT INTO dir (parent_id, name, path, created_at) VALUES (NULL, '', '', 0);

CREATE TABLE acq (
    id          {ID},
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE file (
    id            {ID},
    dir_id        BIGINT NOT NULL REFERENCES dir (id),
    name          TEXT NOT NULL,
    acq_id        BIGINT NOT NULL REFERENCES acq (id),
    size          BIGINT NOT NULL,
    md5           TEXT NOT NULL,
    mtime         BIGINT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX file_dir_name ON file (dir_id, name);
CREATE INDEX file_acq ON file (acq_id);

CREATE TABLE copy (
    id               {ID},
    file_id          BIGINT NOT NULL REFERENCES file (id),
    node_id          BIGINT NOT NULL REFERENCES node (id),
    has              TEXT NOT NULL CHECK (has IN ('yes', 'suspect', 'corrupt', 'no')),
    wants            TEXT NOT NULL DEFAULT 'keep'
                     CHECK (wants IN ('keep', 'release_when_needed', 'release_now')),
    verify_requested INTEGER NOT NULL DEFAULT 0,
    size_on_node     BIGINT,
    added_at         BIGINT NOT NULL,
    verified_at      BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX copy_file_node ON copy (file_id, node_id);
CREATE INDEX copy_node_has ON copy (node_id, has);

CREATE TABLE copy_request (
    id           {ID},
    file_id      BIGINT NOT NULL REFERENCES file (id),
    from_node    BIGINT NOT NULL REFERENCES node (id),
    to_group     BIGINT NOT NULL REFERENCES storage_group (id),
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'active', 'done', 'failed', 'cancelled')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    claimed_by   TEXT,
    not_before   BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    bytes        BIGINT,
    seconds      DOUBLE PRECISION
);
CREATE INDEX copy_request_state_group ON copy_request (state, to_group);
CREATE INDEX copy_request_from_state ON copy_request (from_node, state);
CREATE INDEX copy_request_file ON copy_request (file_id);

CREATE TABLE import_request (
    id           {ID},
    node_id      BIGINT NOT NULL REFERENCES node (id),
    path         TEXT NOT NULL,
    scan         INTEGER NOT NULL DEFAULT 0,
    register_new INTEGER NOT NULL DEFAULT 0,
    init         INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'active', 'done', 'failed', 'cancelled')),
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX import_request_node_state ON import_request (node_id, state);

CREATE TABLE auto_action (
    id          {ID},
    group_id    BIGINT NOT NULL REFERENCES storage_group (id),
    node_id     BIGINT NOT NULL REFERENCES node (id),
    autosync    INTEGER NOT NULL DEFAULT 0,
    autoclean   INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX auto_action_group_node ON auto_action (group_id, node_id);
"#;

/// The migration's SQL in the given dialect.
pub fn render(m: &Migration, dialect: Dialect) -> String {
    match dialect {
        Dialect::Sqlite => format!(
            "{}\n{}",
            m.sql.replace("{ID}", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            m.sqlite
        ),
        Dialect::Postgres => {
            let sql = m.sql.replace("INTEGER", "BIGINT").replace(
                "{ID}",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            );
            format!("{sql}\n{}", m.postgres)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_contiguous_and_end_at_the_current_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "migration {} out of order",
                m.version
            );
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn postgres_integers_are_64_bit() {
        for m in MIGRATIONS {
            let sql = render(m, Dialect::Postgres);
            assert!(!sql.contains("INTEGER"), "32-bit column in {}", m.version);
            let sqlite = render(m, Dialect::Sqlite);
            assert!(!sqlite.contains("pg_notify") && !sqlite.contains("plpgsql"));
            assert!(
                !sql.contains("END;\nCREATE TRIGGER"),
                "SQLite trigger in {}",
                m.version
            );
        }
    }

    #[test]
    fn render_replaces_every_token() {
        for m in MIGRATIONS {
            for d in [Dialect::Sqlite, Dialect::Postgres] {
                assert!(
                    !render(m, d).contains("{ID}"),
                    "unrendered token in {}",
                    m.version
                );
            }
        }
    }
}
