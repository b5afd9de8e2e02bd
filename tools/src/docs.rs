//! Man pages and shell completions of the three programs, generated from their clap
//! definitions (`cairn`'s here, `cairnd`'s and `cairnfs`'s in `cairn_node::cli`), so they
//! never drift from what the programs accept. The package installs what
//! `cairn generate-docs DIR` writes; `cairn completions SHELL` prints one script.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

/// A program whose completions or man pages are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Program {
    Cairn,
    Cairnd,
    Cairnfs,
}

impl Program {
    const ALL: [Program; 3] = [Program::Cairn, Program::Cairnd, Program::Cairnfs];

    fn command(self) -> clap::Command {
        match self {
            Program::Cairn => crate::Cli::command(),
            Program::Cairnd => cairn_node::cli::Cairnd::command(),
            Program::Cairnfs => cairn_node::cli::Cairnfs::command(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Program::Cairn => "cairn",
            Program::Cairnd => "cairnd",
            Program::Cairnfs => "cairnfs",
        }
    }
}

/// Writes the completion script of `program` for `shell`.
pub fn completions(shell: Shell, program: Program, out: &mut dyn Write) -> Result<()> {
    let mut cmd = program.command();
    clap_complete::generate(shell, &mut cmd, program.name(), out);
    Ok(())
}

/// Where each shell looks for completions, as Debian's packages install them (below
/// `/usr/share`), and the file name it expects.
fn completion_file(shell: Shell, program: Program) -> String {
    let name = program.name();
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_owned(),
    }
}

/// The sections after the generated ones on a program's own page, in roff.
fn extra_sections(p: Program) -> &'static str {
    match p {
        Program::Cairn => {
            r#".SH FILES
.TP
\fI/etc/cairn/cairn.toml\fR
the configuration; \fBcatalog.url\fR names the catalog
.SH ENVIRONMENT
.TP
\fBCAIRN_CONFIG\fR
the configuration file, when \fB\-\-config\fR is not given
.TP
\fBCAIRN_CATALOG\fR
the catalog URL, overriding \fBcatalog.url\fR
.SH EXIT STATUS
0 on success, 1 on failure, 2 for a bad command line.
.SH SEE ALSO
\fBcairnd\fR(1), \fBcairnfs\fR(1), \fBcairn\-node\fR(1), \fBcairn\-file\fR(1)
"#
        }
        Program::Cairnd => {
            r#".SH FILES
.TP
\fI/etc/cairn/cairn.toml\fR
the configuration
.TP
\fI/var/lib/cairn/\fR
the embedded SQLite catalog, by default
.TP
\fI/var/cache/cairn/\fR
files fetched from other hosts for the mount
.TP
\fI/run/cairn/\fR
the socket that \fBcairn\fR and \fBcairnfs\fR wake cairnd on, and the instance lock
.SH ENVIRONMENT
.TP
\fBCAIRN_CONFIG\fR
the configuration file, when \fB\-\-config\fR is not given
.TP
\fBCAIRN_LOG\fR
the log level and filter: \fBinfo\fR (the default), \fBdebug\fR, \fBwarn\fR
.SH EXIT STATUS
0 after a clean stop (SIGTERM or SIGINT), 1 when it cannot start or fails, 2 for a bad
command line.
.SH SEE ALSO
\fBcairn\fR(1), \fBcairnfs\fR(1), \fBsystemctl\fR(1) (the unit is \fIcairnd.service\fR)
"#
        }
        Program::Cairnfs => {
            r#".SH EXAMPLES
.nf
cairnfs /archive
mount \-t fuse.cairnfs cairn /archive \-o config=/etc/cairn/cairn.toml
.fi
.PP
An fstab line:
.PP
.nf
cairn  /archive  fuse.cairnfs  config=/etc/cairn/cairn.toml,_netdev,nofail  0 0
.fi
.SH FILES
.TP
\fI/etc/cairn/cairn.toml\fR
the configuration: \fB[fs]\fR and \fB[cache]\fR
.TP
\fI/sbin/mount.fuse\fR
fuse3's helper, which \fBmount\fR(8) runs for \fBfuse.cairnfs\fR: it starts
\fBcairnfs\fR \fISOURCE MOUNTPOINT\fR \fB\-o\fR \fIOPTIONS\fR
.SH ENVIRONMENT
.TP
\fBCAIRN_CONFIG\fR
the configuration file, when neither \fB\-\-config\fR nor \fB\-o config=\fR is given
.TP
\fBCAIRN_LOG\fR
the log level and filter, \fBinfo\fR by default
.SH SEE ALSO
\fBcairnd\fR(1), \fBcairn\fR(1), \fBmount.fuse3\fR(8), \fBfstab\fR(5) (the unit is
\fIcairnfs.service\fR)
"#
        }
    }
}

/// A program's own page: clap's sections, then files, environment, exit status, examples.
fn render_page(p: Program, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = p.command().disable_help_subcommand(true);
    cmd.build();
    let has_subcommands = cmd.get_subcommands().any(|s| !s.is_hide_set());
    let has_version = cmd.get_version().is_some();
    let man = clap_mangen::Man::new(cmd).manual("cairn");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if has_subcommands {
        man.render_subcommands_section(out)?;
    }
    out.write_all(extra_sections(p).as_bytes())?;
    if has_version {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// Writes `DIR/man/*.1` (a page for each program and each `cairn` subcommand, like
/// `cairn-node-sync.1`) and `DIR/completions/{bash,zsh,fish}/…`.
pub fn generate(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("failed to create {}", man.display()))?;
    for p in Program::ALL {
        clap_mangen::generate_to(p.command(), &man)
            .with_context(|| format!("failed to write the man pages of {}", p.name()))?;
        let page = man.join(format!("{}.1", p.name()));
        std::fs::File::create(&page)
            .and_then(|mut f| render_page(p, &mut f))
            .with_context(|| format!("failed to write {}", page.display()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let sub = dir.join("completions").join(shell.to_string());
        std::fs::create_dir_all(&sub)
            .with_context(|| format!("failed to create {}", sub.display()))?;
        for p in Program::ALL {
            let path = sub.join(completion_file(shell, p));
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            completions(shell, p, &mut f)?;
        }
    }
    Ok(())
}
