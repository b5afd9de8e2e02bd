//! The extended attributes of the `user.cairn.` namespace: what a file's copies are and
//! where (read), and requests to sync, clean or verify copies (write). On a directory, the
//! requests apply to every file below it, in one transaction: an unknown group or node, or a
//! single file that cannot take the request, refuses the whole request (EINVAL) and nothing
//! changes.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use cairn_catalog::CatalogError;
use cairn_catalog::catalog::{FileFilter, Tx};
use cairn_catalog::model::{Copy, Dir, File, Has, NodeId, Wants};
use cairn_catalog::policy::{self, Scope, SyncOrder, SyncSource};
use tracing::{info, warn};

use super::{Caller, Core, FsError, Ino, Result};
use crate::attr::READ;
use crate::locals::{Local, LocalKind, Stage};

/// Names of our extended attributes, in `listxattr` order.
pub const FILE_XATTRS: &[&str] = &[
    "user.cairn.md5",
    "user.cairn.size",
    "user.cairn.state",
    "user.cairn.copies",
    "user.cairn.requests",
];

/// What a write to one of our attributes asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Sync(String),
    Clean(String, Wants),
    Verify(String),
}

/// `user.cairn.state` of a file only this host has: `staged` (open for writing), `settling`
/// (closed, imported soon), `importing`, `pending` (in place on the write node, waiting for
/// the catalog) or `unimported` (kept under a dot name, or skipped by the import rules).
fn local_state(g: &Local) -> &'static str {
    match (g.kind, g.stage) {
        (LocalKind::Kept, _) => "unimported",
        (LocalKind::Found, _) => "pending",
        (_, Stage::Writing) => "staged",
        (_, Stage::Settling { .. }) => "settling",
        (_, Stage::Importing) => "importing",
        (_, Stage::Pending) => "pending",
    }
}

/// Reads `user.cairn.KEY = value` as a request, checked whole: one trailing newline or NUL
/// (what `echo` and some tools add) is allowed, any other control character makes the value
/// invalid (`$'n1\nnow'` is not `n1 now`). Attributes that only show something are read-only
/// (EPERM); unknown ones are not supported.
fn parse_request(name: &str, key: &str, value: &[u8]) -> Result<Action> {
    let value = std::str::from_utf8(value)
        .map_err(|_| FsError::Invalid(format!("{name}: the value is not UTF-8")))?;
    let value = value
        .strip_suffix('\n')
        .or_else(|| value.strip_suffix('\0'))
        .unwrap_or(value);
    if value.chars().any(char::is_control) {
        return Err(FsError::Invalid(format!(
            "{name}: the value {value:?} holds a control character"
        )));
    }
    let value = value.trim();
    match key {
        "sync" if !value.is_empty() && !value.contains(' ') => Ok(Action::Sync(value.to_owned())),
        "clean" => match value
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()[..]
        {
            [node] => Ok(Action::Clean(node.to_owned(), Wants::ReleaseWhenNeeded)),
            [node, "now"] => Ok(Action::Clean(node.to_owned(), Wants::ReleaseNow)),
            _ => Err(FsError::Invalid(format!(
                "{name}: expected \"NODE\" or \"NODE now\", got {value:?}"
            ))),
        },
        "verify" if !value.is_empty() && !value.contains(' ') => {
            Ok(Action::Verify(value.to_owned()))
        }
        "sync" | "verify" => Err(FsError::Invalid(format!(
            "{name}: expected one {} name, got {value:?}",
            if key == "sync" { "group" } else { "node" }
        ))),
        "md5" | "size" | "state" | "copies" | "requests" | "complete" => {
            Err(FsError::NotPermitted(format!("{name} is read-only")))
        }
        _ => Err(FsError::Unsupported(name.to_owned())),
    }
}

impl Core {
    /// `who` may use entry `ino` as `mask` asks, and search the path to it.
    fn may_use(&self, who: &Caller, ino: u64, mask: u32) -> Result<()> {
        if who.is_root() {
            return Ok(());
        }
        self.access(who, ino, mask)
    }

    pub fn listxattr(&self, _who: &Caller, ino: u64) -> Result<Vec<String>> {
        if Ino::from(ino).is_dir() {
            let d = self.dir_by_id(self.dir_id(ino)?)?;
            let is_acq = self.with_cat(|c| Ok(c.read(|tx| tx.acq_by_name(&d.path))?))?;
            return Ok(is_acq
                .map(|_| vec!["user.cairn.complete".to_owned()])
                .unwrap_or_default());
        }
        if let Some(l) = self.locals.get(ino) {
            let mut names = vec!["user.cairn.size".to_owned(), "user.cairn.state".to_owned()];
            if l.lock().expect("local").placed.is_some() {
                names.insert(0, "user.cairn.md5".to_owned());
            }
            return Ok(names);
        }
        self.getattr(ino)?;
        Ok(FILE_XATTRS.iter().map(|s| s.to_string()).collect())
    }

    /// Reading an attribute needs read permission on the entry, as for any `user.` attribute
    /// (xattr(7)).
    pub fn getxattr(&self, who: &Caller, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if !who.is_root() {
            self.may_use(who, ino, READ)?;
        }
        let name = name.to_string_lossy();
        let Some(key) = name.strip_prefix("user.cairn.") else {
            // The mount keeps no security labels, ACLs or other namespaces' attributes. Saying
            // so, rather than "no such attribute", lets `ls -l` stop asking for them on every
            // file (it remembers a file system that does not support them).
            return Err(if name.starts_with("user.") {
                FsError::NoAttr
            } else {
                FsError::Unsupported(name.into_owned())
            });
        };
        if Ino::from(ino).is_dir() {
            let d = self.dir_by_id(self.dir_id(ino)?)?;
            if key != "complete" {
                return Err(FsError::NoAttr);
            }
            return self.completeness(&d).map(String::into_bytes);
        }
        if let Some(l) = self.locals.get(ino) {
            // `close` returns before the kernel tells the mount, so a writer that has just
            // closed may still count for a moment.
            let deadline = Instant::now() + Duration::from_millis(200);
            while l.lock().expect("local").writers > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if key == "md5" {
                // Asking for the md5 ends the wait: the file is archived now.
                self.import_now(&l);
            }
            let g = l.lock().expect("local");
            if !g.gone {
                return match key {
                    "size" => Ok(g.attr()?.size.to_string().into_bytes()),
                    "state" => Ok(local_state(&g).as_bytes().to_vec()),
                    // Placed, waiting for the catalog: its md5 is final.
                    "md5" => match &g.placed {
                        Some(p) => Ok(p.md5.clone().into_bytes()),
                        None => Err(FsError::NoAttr),
                    },
                    _ => Err(FsError::NoAttr),
                };
            }
        }
        let file_id = self.file_id(ino).ok_or(FsError::NotFound)?;
        let (file, copies, requests) = self.with_cat(|c| {
            Ok(c.read(|tx| {
                let f = tx.file_by_id(file_id)?;
                let copies = tx.copies_of(file_id)?;
                let reqs = tx.open_requests_for_file(file_id)?;
                Ok((f, copies, reqs))
            })?)
        })?;
        let v = match key {
            "md5" => file.md5.clone(),
            "size" => file.size.to_string(),
            "copies" => copies
                .iter()
                .filter(|c| c.has != Has::No)
                .map(|c| format!("{}={}", c.node, c.has.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            "requests" => requests
                .iter()
                .map(|r| format!("{}:{}", r.to_group, r.state.as_str()))
                .collect::<Vec<_>>()
                .join(" "),
            "state" => self.state(&file, &copies).to_owned(),
            _ => return Err(FsError::NoAttr),
        };
        Ok(v.into_bytes())
    }

    /// This host's view of an archived file: `local`, `cached`, `corrupt`, `suspect`,
    /// `remote` or `missing`.
    fn state(&self, file: &File, copies: &[Copy]) -> &'static str {
        let nodes = self.host_nodes();
        let here = |c: &&Copy| nodes.iter().any(|n| n.id == c.node_id);
        if copies.iter().filter(here).any(|c| c.has == Has::Yes) {
            return "local";
        }
        if std::fs::metadata(self.opts.cache_dir.join(&file.md5))
            .is_ok_and(|m| m.len() == file.size)
        {
            return "cached";
        }
        if copies.iter().filter(here).any(|c| c.has == Has::Corrupt) {
            return "corrupt";
        }
        if copies.iter().filter(here).any(|c| c.has == Has::Suspect) {
            return "suspect";
        }
        if copies.iter().any(|c| c.has == Has::Yes) {
            return "remote";
        }
        "missing"
    }

    /// `user.cairn.complete` of an acquisition's directory: `open` until it is closed, then
    /// `GROUP=yes|no` for every group holding any of its files.
    fn completeness(&self, d: &Dir) -> Result<String> {
        self.with_cat(|c| {
            Ok(c.read(|tx| {
                let Some(acq) = tx.acq_by_name(&d.path)? else {
                    return Err(CatalogError::not_found("acquisition", d.path.clone()));
                };
                if acq.closed_at.is_none() {
                    return Ok("open".to_owned());
                }
                let total = tx
                    .files(&FileFilter {
                        acq: Some(acq.id),
                        ..Default::default()
                    })?
                    .len() as u64;
                Ok(tx
                    .acq_presence(acq.id)?
                    .into_iter()
                    .map(|(g, n)| format!("{g}={}", if n == total { "yes" } else { "no" }))
                    .collect::<Vec<_>>()
                    .join(" "))
            })?)
        })
        .map_err(|e| match e {
            FsError::Catalog(CatalogError::NotFound { .. }) => FsError::NoAttr,
            e => e,
        })
    }

    /// A request to sync, clean or verify copies. Where copies live is the archive operators'
    /// business: sync and clean are taken from root and members of `[fs] admin_group`;
    /// verify from anyone who may read the file. Others get EACCES, and the log names them.
    pub fn setxattr(&self, who: &Caller, ino: u64, name: &OsStr, value: &[u8]) -> Result<()> {
        let name = name.to_string_lossy().into_owned();
        let Some(key) = name.strip_prefix("user.cairn.") else {
            return Err(FsError::Unsupported(name));
        };
        let action = parse_request(&name, key, value)?;
        let allowed = match &action {
            Action::Sync(_) | Action::Clean(..) => {
                who.is_root()
                    || self
                        .ids
                        .find_gid(&self.opts.admin_group)
                        .is_some_and(|g| who.in_group(g))
            }
            Action::Verify(_) => self.may_use(who, ino, READ).is_ok(),
        };
        if !allowed {
            warn!(
                "Refused {name}={:?} on inode {ino} from uid {} (pid {}): {}",
                String::from_utf8_lossy(value),
                who.uid,
                who.pid,
                match action {
                    Action::Verify(_) => "it may not read the file".to_owned(),
                    _ => format!(
                        "only root and members of group {:?} may move or remove copies",
                        self.opts.admin_group
                    ),
                }
            );
            return Err(FsError::Access);
        }
        if self.locals.get(ino).is_some() {
            return Err(FsError::NotPermitted(
                "this file is not archived yet; it can be synced or cleaned once imported".into(),
            ));
        }
        let scope = match Ino::from(ino) {
            Ino::Root | Ino::Dir(_) => Scope::Under(self.dir_by_id(self.dir_id(ino)?)?.path),
            _ => Scope::File(self.file_id(ino).ok_or(FsError::NotFound)?),
        };
        let local_nodes: Vec<NodeId> = self.host_nodes().iter().map(|n| n.id).collect();
        let t = cairn_catalog::units::now();
        let n =
            self.with_cat(|c| Ok(c.write(|tx| apply(tx, &scope, &action, &local_nodes, t))?))?;
        info!(
            "Set {name}={:?}: {n} file(s) affected.",
            String::from_utf8_lossy(value)
        );
        // `cairn request list`, or another host of this site, reads it from the site's
        // replica: it is there when setfattr returns (or the wait ran out, and soon will be).
        self.pool.wait_replicated();
        cairn_node::socket::nudge(&self.opts.socket);
        Ok(())
    }
}

/// Applies an xattr request to every file in `scope`, in one transaction, by the same policies
/// as the CLI's `file sync|clean|verify` ([`cairn_catalog::policy`]). Unknown names and a single
/// file that cannot take the action are refusals (EINVAL), and then nothing changes.
fn apply(
    tx: &mut Tx<'_>,
    scope: &Scope,
    action: &Action,
    local_nodes: &[NodeId],
    now: i64,
) -> cairn_catalog::error::Result<u64> {
    match action {
        Action::Sync(group) => {
            let order = SyncOrder {
                group,
                from: SyncSource::Best {
                    prefer: local_nodes,
                },
                force: false,
            };
            let done = policy::sync(tx, scope, order, now)?;
            Ok(done.requested.len() as u64 + done.pending)
        }
        Action::Clean(node, wants) => policy::clean(tx, scope, node, *wants, now),
        Action::Verify(node) => policy::verify(tx, scope, node, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(key: &str, v: &str) -> Result<Action> {
        parse_request(&format!("user.cairn.{key}"), key, v.as_bytes())
    }

    #[test]
    fn requests_are_read_from_their_values() {
        assert_eq!(
            parse("sync", "archive\n").unwrap(),
            Action::Sync("archive".into())
        );
        assert_eq!(
            parse("clean", "n1 now").unwrap(),
            Action::Clean("n1".into(), Wants::ReleaseNow)
        );
        assert_eq!(
            parse("clean", "n1").unwrap(),
            Action::Clean("n1".into(), Wants::ReleaseWhenNeeded)
        );
        assert_eq!(parse("verify", "n1").unwrap(), Action::Verify("n1".into()));
    }

    #[test]
    fn values_are_checked_whole() {
        assert_eq!(
            parse("clean", "n1 now\n").unwrap(),
            Action::Clean("n1".into(), Wants::ReleaseNow)
        );
        assert!(matches!(
            parse("clean", "n1\nnow"),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(parse("sync", "g\tx"), Err(FsError::Invalid(_))));
        assert!(matches!(
            parse("verify", "n1\n\n"),
            Err(FsError::Invalid(_))
        ));
    }

    #[test]
    fn malformed_requests_are_invalid_and_shown_attributes_read_only() {
        assert!(matches!(parse("sync", ""), Err(FsError::Invalid(_))));
        assert!(matches!(parse("sync", "a b"), Err(FsError::Invalid(_))));
        assert!(matches!(
            parse("clean", "n1 later"),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(parse("md5", "x"), Err(FsError::NotPermitted(_))));
        assert!(matches!(parse("bogus", "x"), Err(FsError::Unsupported(_))));
        assert!(matches!(
            parse_request("user.cairn.sync", "sync", b"\xff"),
            Err(FsError::Invalid(_))
        ));
    }
}
