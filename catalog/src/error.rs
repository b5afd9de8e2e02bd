//! Catalog errors: "the catalog said no" kept apart from "the database failed".

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A named thing does not exist: `node "demo_storag2" not found`.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// A named thing exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// The request contradicts the catalog's rules (e.g. an archive node in a transport group).
    #[error("{0}")]
    Invalid(String),
    /// The catalog has no schema yet.
    #[error("the catalog at {url} is not initialised: run `cairn db init`")]
    NotInitialised { url: String },
    /// The catalog's schema is older than this build.
    #[error(
        "the catalog at {url} has schema version {found}, this cairn needs version {expected}: \
         run `cairn db upgrade`"
    )]
    SchemaTooOld {
        url: String,
        found: u32,
        expected: u32,
    },
    /// The catalog's schema is newer than this build.
    #[error(
        "the catalog at {url} has schema version {found}, newer than this cairn knows \
         ({expected}): upgrade cairn on this machine"
    )]
    SchemaTooNew {
        url: String,
        found: u32,
        expected: u32,
    },
    /// The URL names no backend this build has.
    #[error(
        "unsupported catalog url {0:?}: expected sqlite:///path/to/catalog.db or \
         postgres://user@host/database"
    )]
    UnsupportedUrl(String),
    /// A user's action on files that cannot be done (see [`crate::policy`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl CatalogError {
    /// Whether the catalog could not be reached (a cut link, a server down or refusing
    /// connections), as opposed to being busy or refusing what was asked.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CatalogError::Db(crate::db::DbError::Disconnected(_) | crate::db::DbError::Open { .. })
        )
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        CatalogError::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub fn exists(kind: &'static str, name: impl Into<String>) -> Self {
        CatalogError::AlreadyExists {
            kind,
            name: name.into(),
        }
    }
}

/// Why a user's action on files was refused ([`crate::policy`]). Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("group {0:?} not found")]
    NoSuchGroup(String),
    #[error("node {0:?} not found")]
    NoSuchNode(String),
    #[error("node {node:?} is in group {group:?}: nothing to copy into itself")]
    SameGroup { node: String, group: String },
    #[error("{path} has no healthy copy to sync from")]
    NoSource { path: String },
    #[error("file {path:?} has no healthy copy on node {node:?}")]
    NoHealthyCopyOn { path: String, node: String },
    #[error("file {path:?} has no copy on node {node:?}")]
    NoCopyOn { path: String, node: String },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
