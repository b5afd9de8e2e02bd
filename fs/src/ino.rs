//! Inode numbers, typed.
//!
//! Every number the kernel holds stands for one of four things, told apart by its two low
//! bits: the root (1), a catalog directory `d` (`d << 2`), a catalog file `f` (`f << 2 | 1`),
//! or a file that exists only on this host — being written, or kept under a dot name — which
//! gets `n << 2 | 2` for as long as this mount lives. Catalog ids are stable, so the numbers of
//! archived files and directories are the same on every mount and after a remount. Tag 3 is
//! never handed out; such a number reads as a local inode this mount does not have.
//!
//! The root directory has a catalog id like any other; [`Ino::dir`] maps it to 1, so that the
//! kernel's root and the catalog's agree.

use cairn_catalog::model::{DirId, FileId};

/// The root's inode number, as FUSE fixes it.
pub const ROOT_INO: u64 = 1;

/// What an inode number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ino {
    Root,
    /// A catalog directory other than the root.
    Dir(DirId),
    /// A catalog file.
    File(FileId),
    /// A file only this host has; the number itself, the key of the locals table.
    Local(u64),
}

impl From<u64> for Ino {
    fn from(n: u64) -> Ino {
        match n & 3 {
            _ if n == ROOT_INO => Ino::Root,
            0 => Ino::Dir(DirId((n >> 2) as i64)),
            1 => Ino::File(FileId((n >> 2) as i64)),
            _ => Ino::Local(n),
        }
    }
}

impl From<Ino> for u64 {
    fn from(i: Ino) -> u64 {
        match i {
            Ino::Root => ROOT_INO,
            Ino::Dir(id) => (id.0 as u64) << 2,
            Ino::File(id) => (id.0 as u64) << 2 | 1,
            Ino::Local(n) => n,
        }
    }
}

impl Ino {
    /// The inode of catalog directory `id`, given the root directory's id.
    pub fn dir(id: DirId, root_dir: DirId) -> Ino {
        if id == root_dir {
            Ino::Root
        } else {
            Ino::Dir(id)
        }
    }

    /// The number of a local inode: the `n`-th this mount made.
    pub fn local(n: u64) -> Ino {
        Ino::Local(n << 2 | 2)
    }

    /// The catalog directory this inode is, given the root directory's id.
    pub fn dir_id(self, root_dir: DirId) -> Option<DirId> {
        match self {
            Ino::Root => Some(root_dir),
            Ino::Dir(id) => Some(id),
            Ino::File(_) | Ino::Local(_) => None,
        }
    }

    pub fn is_dir(self) -> bool {
        matches!(self, Ino::Root | Ino::Dir(_))
    }

    pub fn is_local(self) -> bool {
        matches!(self, Ino::Local(_))
    }
}

/// The inode number of catalog file `id`.
pub fn file_ino(id: FileId) -> u64 {
    Ino::File(id).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_comes_back_as_itself() {
        for i in [
            Ino::Root,
            Ino::Dir(DirId(7)),
            Ino::File(FileId(7)),
            Ino::local(7),
        ] {
            assert_eq!(Ino::from(u64::from(i)), i);
        }
    }

    #[test]
    fn kinds_with_the_same_id_have_different_numbers() {
        let n: Vec<u64> = [Ino::Dir(DirId(7)), Ino::File(FileId(7)), Ino::local(7)]
            .into_iter()
            .map(u64::from)
            .collect();
        assert_eq!(n, vec![28, 29, 30]);
    }

    #[test]
    fn the_root_directory_is_inode_one() {
        assert_eq!(Ino::dir(DirId(5), DirId(5)), Ino::Root);
        assert_eq!(u64::from(Ino::dir(DirId(5), DirId(5))), ROOT_INO);
        assert_eq!(Ino::dir(DirId(6), DirId(5)), Ino::Dir(DirId(6)));
        assert_eq!(Ino::Root.dir_id(DirId(5)), Some(DirId(5)));
        assert_eq!(Ino::File(FileId(6)).dir_id(DirId(5)), None);
    }

    #[test]
    fn the_unused_tag_is_no_catalog_inode() {
        assert!(Ino::from(7 << 2 | 3).is_local());
    }
}
