//! Who may do what: owners by name mapped to this host's ids, POSIX's permission checks for
//! each caller (the search permission of a whole path, writing in a directory, the sticky
//! bit), and `setattr` with its rules on who changes modes, owners and times.

use cairn_catalog::model::{DirId, Ownership};

use super::{Attr, Caller, Core, FsError, Ino, Result, SetAttr};
use crate::attr::{SEARCH, WRITE};

impl Core {
    /// This host's ids for a recorded owner and group; `[fs] uid`/`gid` where none is
    /// recorded, `[fs] unknown_owner` where the name is unknown here.
    pub(super) fn owner_ids(&self, own: &Ownership) -> (u32, u32) {
        (
            own.user
                .as_deref()
                .map_or(self.opts.uid, |u| self.ids.uid(u)),
            own.group
                .as_deref()
                .map_or(self.opts.gid, |g| self.ids.gid(g)),
        )
    }

    /// The names `who` is known by here, for what it creates: its user, and its group (or
    /// the parent directory's group, when that directory is set-group-id).
    pub(super) fn owner_names(
        &self,
        who: &Caller,
        parent: Option<&Attr>,
    ) -> (Option<String>, Option<String>, u32) {
        let gid = match parent {
            Some(p) if p.perm & 0o2000 != 0 => p.gid,
            _ => who.gid,
        };
        (self.ids.user_name(who.uid), self.ids.group_name(gid), gid)
    }

    /// Directory `id`'s parent and attributes, remembered for `[fs] ttl`.
    pub(super) fn dir_entry(&self, id: DirId) -> Result<(Option<DirId>, Attr)> {
        if let Some(d) = self.remembered.dir(id, self.opts.ttl) {
            return Ok(d);
        }
        let d = self.dir_by_id(id)?;
        let a = self.dir_attr(&d);
        Ok((d.parent_id, a))
    }

    /// Whether `who` may search every directory from the root down to `dir_id`, inclusive:
    /// a path below a directory it may not search is out of its reach, even when the kernel
    /// has the names cached.
    pub(super) fn search(&self, who: &Caller, dir_id: DirId) -> Result<()> {
        if who.is_root() {
            return Ok(());
        }
        let mut next = Some(dir_id);
        for _ in 0..4096 {
            let Some(id) = next else { break };
            let (parent, a) = self.dir_entry(id)?;
            if !a.allows(who, SEARCH) {
                return Err(FsError::Access);
            }
            next = parent;
        }
        Ok(())
    }

    /// `who` may change directory `dir_id`'s entries: write and search it, and search the
    /// path to it.
    pub(super) fn may_change(&self, who: &Caller, dir_id: DirId) -> Result<Attr> {
        let (_, a) = self.dir_entry(dir_id)?;
        if !who.is_root() {
            if !a.allows(who, WRITE | SEARCH) {
                return Err(FsError::Access);
            }
            self.search(who, dir_id)?;
        }
        Ok(a)
    }

    /// In a sticky directory, only an entry's owner, the directory's owner and root may
    /// remove or rename it.
    pub(super) fn sticky_allows(who: &Caller, dir: &Attr, entry: &Attr) -> Result<()> {
        if dir.perm & 0o1000 != 0 && !who.is_root() && who.uid != dir.uid && who.uid != entry.uid {
            return Err(FsError::NotPermitted(
                "the directory is sticky: only the entry's owner may remove or rename it".into(),
            ));
        }
        Ok(())
    }

    /// `access(2)`: whether `who` may use `ino` as `mask` (read 4, write 2, execute 1) asks,
    /// searching the path to it.
    pub fn access(&self, who: &Caller, ino: u64, mask: u32) -> Result<()> {
        let a = self.getattr(ino)?;
        let dir = match Ino::from(ino) {
            Ino::Root | Ino::Dir(_) => self.dir_entry(self.dir_id(ino)?)?.0,
            Ino::File(_) | Ino::Local(_) => self.parent_of(ino)?,
        };
        if let Some(d) = dir {
            self.search(who, d)?;
        }
        if a.allows(who, mask) {
            Ok(())
        } else {
            Err(FsError::Access)
        }
    }

    /// The directory a file is in.
    pub(super) fn parent_of(&self, ino: u64) -> Result<Option<DirId>> {
        if let Some(l) = self.locals.get(ino) {
            return Ok(Some(l.lock().expect("local").dir_id));
        }
        let id = self.file_id(ino).ok_or(FsError::NotFound)?;
        Ok(Some(
            self.with_cat(|c| Ok(c.read(|tx| tx.file_by_id(id))?))?
                .dir_id,
        ))
    }

    /// `chmod`, `chown`, `truncate` and `utimes`, with POSIX's rules on who may: the owner or
    /// root changes the mode and explicit times; root changes the owner, and the owner the
    /// group to one of its own; whoever may write sets the times to now and truncates.
    pub fn setattr(&self, who: &Caller, ino: u64, ch: &SetAttr) -> Result<Attr> {
        let a = self.getattr(ino)?;
        self.may_setattr(who, &a, ch)?;
        if Ino::from(ino).is_dir() {
            return self.setattr_dir(ino, a, ch);
        }
        if let Some(l) = self.locals.get(ino) {
            return self.setattr_local(&l, ch);
        }
        // An archived file: its bytes and time never change; who owns it and who may read it
        // may (the write bits stay off). Setting the recorded time again is no change, so
        // `rsync -a` and `cp -p` over an archived tree do not fail.
        if ch.size.is_some_and(|s| s != a.size)
            || ch.mtime.is_some_and(|t| t != a.mtime)
            || ch.atime.is_some() && ch.mtime.is_none()
        {
            return Err(FsError::NotPermitted(
                "archived files cannot be changed (set user.cairn.clean to release a copy)".into(),
            ));
        }
        let own = self.ownership_change(ch);
        if own == Ownership::default() {
            return Ok(a);
        }
        let id = self.file_id(ino).ok_or(FsError::NotFound)?;
        self.with_cat(|c| Ok(c.write(|tx| tx.set_file_ownership(id, &own))?))?;
        self.listings.changed();
        self.getattr(ino)
    }

    /// What a `chmod`/`chown` records in the catalog, by name.
    pub(super) fn ownership_change(&self, ch: &SetAttr) -> Ownership {
        let name_of = |uid: u32| {
            self.ids
                .user_name(uid)
                .ok_or_else(|| format!("uid {uid}"))
                .unwrap_or_else(|n| n)
        };
        let group_of = |gid: u32| {
            self.ids
                .group_name(gid)
                .ok_or_else(|| format!("gid {gid}"))
                .unwrap_or_else(|n| n)
        };
        Ownership {
            user: ch.uid.map(name_of),
            group: ch.gid.map(group_of),
            mode: ch.mode.map(|m| m & 0o7777),
        }
    }

    pub(super) fn may_setattr(&self, who: &Caller, a: &Attr, ch: &SetAttr) -> Result<()> {
        if who.is_root() {
            return Ok(());
        }
        let owner = who.uid == a.uid;
        let refuse = |what: &str| {
            Err(FsError::NotPermitted(format!(
                "only the owner or root may {what}"
            )))
        };
        if ch.mode.is_some() && !owner {
            return refuse("change the mode");
        }
        if ch.uid.is_some_and(|u| u != a.uid) {
            return Err(FsError::NotPermitted(
                "only root may give a file away".into(),
            ));
        }
        if let Some(g) = ch.gid
            && g != a.gid
            && !(owner && who.in_group(g))
        {
            return refuse("change the group, to one of the owner's groups");
        }
        let explicit_times = (ch.mtime.is_some() || ch.atime.is_some()) && !ch.times_now;
        if explicit_times && !owner {
            return refuse("set times");
        }
        if (ch.size.is_some() || ch.times_now) && !owner && !a.allows(who, WRITE) {
            return Err(FsError::Access);
        }
        Ok(())
    }

    /// `chmod`, `chown` and `touch` of a directory: the owner and mode are recorded in the
    /// catalog (every host shows them); the time lasts as long as this mount.
    pub(super) fn setattr_dir(&self, ino: u64, mut a: Attr, ch: &SetAttr) -> Result<Attr> {
        if ch.size.is_some() {
            return Err(FsError::IsDir);
        }
        let id = self.dir_id(ino)?;
        let own = self.ownership_change(ch);
        if own != Ownership::default() {
            self.with_cat(|c| Ok(c.write(|tx| tx.set_dir_ownership(id, &own))?))?;
            self.remembered.forget_dir(id);
            a = self.dir_attr(&self.dir_by_id(id)?);
        }
        if let Some(t) = ch.mtime {
            a.mtime = t;
            self.remembered.set_dir_mtime(a.ino, t);
        }
        // Listings hold the old mode and time (lookups are answered from them).
        self.listings.changed();
        Ok(a)
    }
}
