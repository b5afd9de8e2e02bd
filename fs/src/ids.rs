//! Who is asking: the process behind a request, for the permission checks (POSIX's rules,
//! [`crate::attr::Attr::allows`]). User and group names are `cairn_node::ids`'s.

/// Who is asking: the process behind a request, with its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    /// The mount itself (tests of the core, and work it does on its own account).
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the process is in group `gid`: its primary group, or one of its supplementary
    /// groups (from `/proc/PID/status`, as the kernel has them now).
    pub fn in_group(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_in_its_own_groups() {
        // SAFETY: getgid cannot fail.
        let gid = unsafe { libc::getgid() };
        let me = Caller {
            uid: 0,
            gid,
            pid: std::process::id(),
        };
        assert!(me.in_group(gid));
        assert!(!me.in_group(4_000_000_001));
    }
}
