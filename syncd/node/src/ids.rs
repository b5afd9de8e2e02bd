//! Owners by name. The catalog records who owns a file or directory by user and group *name*,
//! because numeric ids differ between sites; each mount maps them to this host's ids, and the
//! ids of the processes that write through it back to names. A name this host does not know
//! shows as `[fs] unknown_owner` (default `nobody`).
//!
//! Lookups go through the system's user and group databases (`getpwnam_r` and friends, so
//! NSS sources such as LDAP count) and are cached: a name found stays found for the mount's
//! life; a name not found is asked again after a minute (an account added meanwhile).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name or id that was not found is remembered as unknown.
const RETRY_UNKNOWN: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Cache {
    uid_by_name: HashMap<String, (Option<u32>, Instant)>,
    gid_by_name: HashMap<String, (Option<u32>, Instant)>,
    name_by_uid: HashMap<u32, (Option<String>, Instant)>,
    name_by_gid: HashMap<u32, (Option<String>, Instant)>,
}

/// This host's users and groups, by name and by id.
pub struct Ids {
    /// What an unknown owner shows as (uid, gid).
    unknown: (u32, u32),
    cache: Mutex<Cache>,
}

fn fresh<T: Clone>(e: Option<&(Option<T>, Instant)>) -> Option<Option<T>> {
    match e {
        Some((Some(v), _)) => Some(Some(v.clone())),
        Some((None, at)) if at.elapsed() < RETRY_UNKNOWN => Some(None),
        _ => None,
    }
}

impl Ids {
    /// `unknown_owner`: the user (and that user's group) names this host does not know show
    /// as; `nobody` when it is itself unknown here, 65534.
    pub fn new(unknown_owner: &str) -> Ids {
        let unknown = passwd_by_name(unknown_owner).unwrap_or((65534, 65534));
        Ids {
            unknown,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The uid of user `name`, or the unknown owner's.
    pub fn uid(&self, name: &str) -> u32 {
        let mut c = self.cache.lock().expect("ids");
        let found = match fresh(c.uid_by_name.get(name)) {
            Some(v) => v,
            None => {
                let v = passwd_by_name(name).map(|(uid, _)| uid);
                c.uid_by_name.insert(name.to_owned(), (v, Instant::now()));
                v
            }
        };
        found.unwrap_or(self.unknown.0)
    }

    /// The gid of group `name`, or the unknown owner's group.
    pub fn gid(&self, name: &str) -> u32 {
        self.find_gid(name).unwrap_or(self.unknown.1)
    }

    /// The gid of group `name`, if this host has it.
    pub fn find_gid(&self, name: &str) -> Option<u32> {
        let mut c = self.cache.lock().expect("ids");
        match fresh(c.gid_by_name.get(name)) {
            Some(v) => v,
            None => {
                let v = group_by_name(name);
                c.gid_by_name.insert(name.to_owned(), (v, Instant::now()));
                v
            }
        }
    }

    /// The name of user `uid`, if this host has one.
    pub fn user_name(&self, uid: u32) -> Option<String> {
        let mut c = self.cache.lock().expect("ids");
        match fresh(c.name_by_uid.get(&uid)) {
            Some(v) => v,
            None => {
                let v = passwd_by_uid(uid);
                c.name_by_uid.insert(uid, (v.clone(), Instant::now()));
                v
            }
        }
    }

    /// The name of group `gid`, if this host has one.
    pub fn group_name(&self, gid: u32) -> Option<String> {
        let mut c = self.cache.lock().expect("ids");
        match fresh(c.name_by_gid.get(&gid)) {
            Some(v) => v,
            None => {
                let v = group_by_gid(gid);
                c.name_by_gid.insert(gid, (v.clone(), Instant::now()));
                v
            }
        }
    }
}

/// Runs a `get*_r` call with a buffer that grows while it says ERANGE.
fn with_buf<T>(
    mut call: impl FnMut(&mut Vec<libc::c_char>) -> Result<Option<T>, i32>,
) -> Option<T> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        match call(&mut buf) {
            Ok(v) => return v,
            Err(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(_) => return None,
        }
    }
}

fn passwd_by_name(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    with_buf(|buf| {
        // SAFETY: all pointers are valid for the call; `pwd` is written by getpwnam_r and read
        // only when it reports success through `out`.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            );
            if rc != 0 {
                return Err(rc);
            }
            Ok((!out.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)))
        }
    })
}

fn passwd_by_uid(uid: u32) -> Option<String> {
    with_buf(|buf| {
        // SAFETY: as in `passwd_by_name`; pw_name points into `buf`, copied before it goes.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            Ok(
                (!out.is_null())
                    .then(|| CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned()),
            )
        }
    })
}

fn group_by_name(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    with_buf(|buf| {
        // SAFETY: as in `passwd_by_name`, for the group database.
        unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            );
            if rc != 0 {
                return Err(rc);
            }
            Ok((!out.is_null()).then_some(grp.gr_gid))
        }
    })
}

fn group_by_gid(gid: u32) -> Option<String> {
    with_buf(|buf| {
        // SAFETY: as in `passwd_by_uid`, for the group database.
        unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut out);
            if rc != 0 {
                return Err(rc);
            }
            Ok(
                (!out.is_null())
                    .then(|| CStr::from_ptr(grp.gr_name).to_string_lossy().into_owned()),
            )
        }
    })
}

/// The owner and group names and the mode of a file on a node, for the catalog.
pub fn ownership_of(ids: &Ids, meta: &std::fs::Metadata) -> cairn_catalog::model::Ownership {
    use std::os::unix::fs::MetadataExt;
    cairn_catalog::model::Ownership {
        user: ids.user_name(meta.uid()),
        group: ids.group_name(meta.gid()),
        mode: Some(meta.mode() & 0o7777),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_by_name_and_id() {
        let ids = Ids::new("nobody");
        assert_eq!(ids.uid("root"), 0);
        assert_eq!(ids.user_name(0).as_deref(), Some("root"));
        assert_eq!(ids.gid("root"), 0);
        assert_eq!(ids.group_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn an_unknown_name_shows_as_the_unknown_owner() {
        let ids = Ids::new("root");
        assert_eq!(ids.uid("no-such-user-here-x9"), 0);
        let ids = Ids::new("no-such-user-either-x9");
        assert_eq!(ids.uid("no-such-user-here-x9"), 65534);
        assert_eq!(ids.find_gid("no-such-group-x9"), None);
        assert_eq!(ids.user_name(4_000_000_000), None);
    }
}
