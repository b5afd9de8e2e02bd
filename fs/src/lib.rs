//! cairnfs, the whole archive as one file system on every host.
//!
//! [`core`] holds what every operation does, with typed results; [`fuse`] is the thin fuser
//! adapter; [`fetch`] streams files that live only on other hosts through cairnd's cache;
//! [`staged`] writes new files with their md5 computed on the way. [`mount`] puts it together
//! and runs until unmounted or signalled.

pub mod attr;
pub mod core;
pub mod dying;
pub mod error;
pub mod fetch;
pub mod fuse;
pub mod handles;
pub mod ids;
pub mod ino;
pub mod interrupts;
pub mod listings;
pub mod localdirs;
pub mod locals;
pub mod nodes;
pub mod staged;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_catalog::Config;
use tracing::info;

/// How the mount was asked for on the command line (`-o` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub allow_root: bool,
    pub auto_unmount: bool,
    pub read_only: bool,
    /// The kernel checks modes too (`-o default_permissions`). cairnfs checks them itself in
    /// any case; with the kernel's check, writing a `user.cairn.` attribute also needs write
    /// permission on the entry (xattr(7)), so only root may ask for copies of archived files.
    pub default_permissions: bool,
}

impl MountOptions {
    /// Parses `-o` values. Options that only mean something to mount(8) and fstab are accepted
    /// and ignored; anything else is an error naming it.
    pub fn parse(list: &[String]) -> Result<(MountOptions, Option<String>)> {
        let mut o = MountOptions::default();
        let mut config = None;
        for opt in list.iter().flat_map(|l| l.split(',')) {
            match opt.trim() {
                "" => {}
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "auto_unmount" => o.auto_unmount = true,
                "ro" => o.read_only = true,
                "default_permissions" => o.default_permissions = true,
                "rw" | "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev"
                | "nofail" | "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime"
                | "noatime" | "relatime" | "async" => {}
                o if o.starts_with("x-") || o.starts_with("comment=") => {}
                o if o.starts_with("config=") => config = Some(o["config=".len()..].to_owned()),
                other => bail!("unknown mount option {other:?}"),
            }
        }
        Ok((o, config))
    }
}

/// Mounts the archive at `mountpoint` and serves it until it is unmounted (`fusermount3 -u`,
/// `umount`) or the process gets SIGTERM, SIGINT or SIGHUP, which unmount it cleanly.
///
/// `mounted` runs once the file system is mounted (to tell a waiting parent process).
pub fn mount(
    config: &Config,
    mountpoint: &Path,
    opts: &MountOptions,
    mounted: impl FnOnce(),
) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "cannot mount {}: /dev/fuse is missing (load the fuse module: modprobe fuse)",
            mountpoint.display()
        );
    }
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("cannot mount on {}: not a directory", mountpoint.display());
    }
    if is_mount_point(mountpoint) {
        bail!(
            "cannot mount on {}: something is already mounted there (unmount it first)",
            mountpoint.display()
        );
    }
    let mut core_opts = core::Options::from_config(config);
    if opts.read_only {
        core_opts.write_node = None;
    }
    // A thirty-second of `[fs] cache_memory` for SQLite's page caches, on top of it.
    cairn_catalog::db::sqlite::limit_memory(core_opts.cache_memory as u64 / 32);
    let core =
        Arc::new(core::Core::new(core_opts, &config.import).context("cannot start the mount")?);
    core.start_importer();
    core.start_prefetcher();
    let fs = fuse::CairnFs::new(core.clone(), config.fs.io_uring.unwrap_or(true));
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("cairn".into()),
        fuser::MountOption::Subtype("cairnfs".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if opts.auto_unmount {
        cfg.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    if opts.default_permissions {
        cfg.mount_options
            .push(fuser::MountOption::DefaultPermissions);
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    cfg.acl = if opts.allow_other || (root && !opts.allow_root) {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    // Enough threads that reads waiting for a remote file never hold up `ls` elsewhere.
    cfg.n_threads = Some(8);
    cfg.clone_fd = true;
    // Over io_uring: two threads per CPU to start with; a CPU's queue grows by a thread when
    // all of its threads hold a request (see fuser's `uring.rs`).
    cfg.uring_threads = 2;

    let signals = block_signals();
    let session = fuser::spawn_mount(fs, mountpoint, &cfg).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => " (the mount point is busy)",
            Some(libc::ENOENT) => " (is fusermount3 installed? apt-get install fuse3)",
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " (not allowed: mount as root, or allow user mounts in /etc/fuse.conf)"
            }
            _ => "",
        };
        anyhow::anyhow!("cannot mount {}: {e}{hint}", mountpoint.display())
    })?;
    // The inodes of files just imported, for the kernel to forget (Core::set_kernel_forgetter).
    let notifier = session.notifier();
    let (forget_tx, forget_rx) = std::sync::mpsc::channel::<core::Forget>();
    core.set_kernel_forgetter(forget_tx);
    std::thread::Builder::new()
        .name("forgetter".into())
        .spawn(move || {
            for f in forget_rx {
                let name = std::ffi::OsStr::new(&f.name);
                let (parent, ino) = (fuser::INodeNo(f.parent), fuser::INodeNo(f.ino));
                // ENOENT: the kernel had dropped the name already, or it names another
                // inode by now; then the name alone goes, if it is there.
                if notifier.delete(parent, ino, name).is_err() {
                    let _ = notifier.inval_entry(parent, name);
                }
            }
        })
        .context("cannot start the mount's forgetter thread")?;
    info!(
        "Mounted the archive at {} (host {}, write node {}).",
        mountpoint.display(),
        core.opts.host,
        core.opts.write_node.as_deref().unwrap_or("none: read-only")
    );
    mounted();
    loop {
        if session.guard.is_finished() {
            info!("{} was unmounted.", mountpoint.display());
            core.finish_imports();
            core.shutdown();
            // Unmounted from outside (`fusermount3 -u`, `umount`): the session must not
            // unmount again when it is dropped, or it could take down a new mount at the same
            // place (fuser 0.18 tries, and its check that the old mount is gone is not
            // reliable). So it is forgotten, and only its thread is joined.
            let mut session = session;
            let guard = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
            std::mem::forget(session);
            return match guard.join() {
                Ok(r) => r.context("the mount ended with an error"),
                Err(_) => Err(anyhow::anyhow!("the file system thread panicked")),
            };
        }
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(200)) {
            info!("Signal {sig}: unmounting {}.", mountpoint.display());
            core.finish_imports();
            core.shutdown();
            if let Err(e) = session.umount_and_join() {
                // Busy (a process has a file open): detach it now; it goes when they close.
                let lazy = std::process::Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(mountpoint)
                    .status();
                if !lazy.is_ok_and(|s| s.success()) {
                    bail!("cannot unmount {}: {e}", mountpoint.display());
                }
            }
            return Ok(());
        }
    }
}

/// Whether `path` is the root of a mounted filesystem (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Some(parent) = canon.parent() else {
        return true;
    };
    match (std::fs::metadata(&canon), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        // A dead FUSE mount ("transport endpoint is not connected") is a mount too.
        (Err(_), _) => true,
        _ => false,
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; pthread_sigmask only reads it.
    // Blocking before any thread starts makes every thread inherit the mask, so the signals
    // wait for `wait_signal` instead of killing the process mid-write.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is an initialised signal set and `ts` a valid timespec; no info is asked.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// The vendored fuser's layout of io_uring request buffers: its tests run here, the vendored
/// crate's own do not run in the workspace.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../vendor/fuser/src/uring_wire.rs"]
mod fuser_uring_wire;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_options_are_accepted_and_config_is_taken() {
        let (o, c) = MountOptions::parse(&[
            "rw,_netdev,nofail,allow_other,default_permissions".into(),
            "config=/etc/cairn/site.toml".into(),
        ])
        .unwrap();
        assert!(o.allow_other && o.default_permissions);
        assert_eq!(c.as_deref(), Some("/etc/cairn/site.toml"));
    }

    #[test]
    fn unknown_options_are_named() {
        let e = MountOptions::parse(&["rw,bogus".into()]).unwrap_err();
        assert_eq!(e.to_string(), "unknown mount option \"bogus\"");
    }
}
