use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

const USAGE: &str = "usage: cairnfs [SOURCE] MOUNTPOINT [--config FILE] [-o OPTIONS] [-f]

Mounts the archive at MOUNTPOINT. SOURCE is ignored (mount -t fuse.cairnfs passes one).
  --config FILE  the configuration (default $CAIRN_CONFIG or /etc/cairn/cairn.toml);
                 also -o config=FILE
  -o OPTIONS     allow_other, allow_root, auto_unmount, ro; fstab options are accepted
  -f             stay in the foreground, logging to stderr (otherwise cairnfs returns
                 once mounted and logs to daemon.log_dir, if set)";

fn main() -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut positional: Vec<PathBuf> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut foreground = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "-o" => match args.next() {
                Some(o) => options.push(o),
                None => return usage("-o needs a value"),
            },
            "-f" | "--foreground" => foreground = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            o if o.starts_with("-o") => options.push(o[2..].to_owned()),
            other if !other.starts_with('-') => positional.push(PathBuf::from(other)),
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let mountpoint = match positional.len() {
        1 => positional.remove(0),
        2 => positional.remove(1),
        0 => return usage("missing MOUNTPOINT"),
        _ => return usage("too many arguments"),
    };
    let (opts, from_o) = match cairn_fs::MountOptions::parse(&options) {
        Ok(x) => x,
        Err(e) => return usage(&format!("{e:#}")),
    };
    let config_path = config_path.or(from_o.map(PathBuf::from));
    let config = match cairn_catalog::Config::load(config_path.as_deref())
        .context("failed to load the configuration")
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairnfs: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    // In the background, stderr goes away once mounted: log to daemon.log_dir if there is
    // one (the same daily files as cairnd). In the foreground, stderr (or the journal).
    match (&config.daemon.log_dir, foreground) {
        (Some(dir), false) => {
            match cairn_node::logfile::DailyLog::open(dir, config.daemon.log_keep_days) {
                Ok(log) => builder.with_writer(move || log.writer()).init(),
                Err(e) => {
                    eprintln!(
                        "cairnfs: cannot write logs in {} (daemon.log_dir): {e}",
                        dir.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => builder.with_writer(std::io::stderr).init(),
    }
    // fuser logs through the `log` crate: its warnings and errors go to this log too.
    if log::set_logger(&FuserLog).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    // Two malloc arenas, not glibc's eight per core: memory one FUSE thread freed is reused
    // by the next instead of staying in its own arena (a walk of millions of files would
    // otherwise leave the mount at several times its [fs] cache_memory).
    #[cfg(target_env = "gnu")]
    // SAFETY: no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Blocks of 128 KiB and more (a large directory's listing, a reply to the kernel) are
        // mapped and unmapped on their own, as glibc does at first; left to itself it raises
        // that threshold to the largest block freed, and such blocks then come from the heap,
        // whose holes between what lives on stay resident.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    if !foreground && let Err(e) = daemonize() {
        eprintln!("cairnfs: {e:#}");
        return ExitCode::FAILURE;
    }
    match cairn_fs::mount(&config, &mountpoint, &opts, report_mounted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("cairnfs: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// Goes to the background: the parent waits until the child has mounted (or failed) and exits
/// with its result, so `mount -t fuse.cairnfs` and fstab see success only once it works.
fn daemonize() -> anyhow::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two-element array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: no other thread runs yet, so fork is safe.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork"),
        0 => {
            // SAFETY: closing our copy of the read end; setsid has no memory effects.
            unsafe {
                libc::close(fds[0]);
                libc::setsid();
            }
            READY_FD.store(fds[1], std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        _child => {
            // SAFETY: closing the write end, then reading one byte into a buffer we own.
            unsafe { libc::close(fds[1]) };
            let mut b = [0u8; 1];
            let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            std::process::exit(if n == 1 && b[0] == b'1' { 0 } else { 1 });
        }
    }
}

static READY_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// In the background child, once the mount is up: tells the waiting parent and lets go of the
/// caller's stdio. (If the child fails first, its exit closes the pipe and the parent exits 1;
/// the error is on stderr.) In the foreground it does nothing.
fn report_mounted() {
    let fd = READY_FD.swap(-1, std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: writing one byte from a static buffer to our pipe end, then closing it.
    unsafe {
        libc::write(fd, b"1".as_ptr().cast(), 1);
        libc::close(fd);
    }
    detach_stdio();
}

/// Points stdin, stdout and stderr at /dev/null, so whoever started cairnfs (mount(8), a
/// shell capturing its output) is not held by our copies of its pipes.
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we hold open.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
}

/// Forwards fuser's `log` records (info and above) to this process's log.
struct FuserLog;

impl log::Log for FuserLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record) {
        match r.level() {
            log::Level::Error => tracing::error!(target: "fuser", "{}", r.args()),
            log::Level::Warn => tracing::warn!(target: "fuser", "{}", r.args()),
            _ => tracing::info!(target: "fuser", "{}", r.args()),
        }
    }

    fn flush(&self) {}
}
