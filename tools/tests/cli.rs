//! The `cairn` binary, run as a user runs it, against a fresh SQLite catalog.
//!
//! cairnd does not exist yet, so where seed 004 waits for the daemon, these tests record what
//! the daemon would have recorded (an import, a finished pull, a failed verify) through the
//! catalog library, then check what the CLI shows and requests next.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use cairn_catalog::Catalog;
use cairn_catalog::catalog::NewFile;
use cairn_catalog::md5::md5_hex;
use cairn_catalog::model::Has;

struct Archive {
    dir: tempfile::TempDir,
    url: String,
}

impl Archive {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = format!("sqlite://{}/catalog.db", dir.path().display());
        std::fs::write(dir.path().join("cairn.toml"), "").unwrap();
        Archive { dir, url }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cairn.toml")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env("CAIRN_CATALOG", &self.url)
            .env("CAIRN_CONFIG", self.config())
            .stdin(Stdio::null())
            .output()
            .expect("cairn runs")
    }

    /// Runs cairn, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs cairn, asserts it fails with `code`, returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.url).expect("the catalog opens")
    }

    /// What cairnd records when it imports `path` with `contents` on `node`.
    fn import(&self, node: &str, path: &str, contents: &str) {
        let md5 = md5_hex(contents.as_bytes());
        let acq = path.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        self.catalog()
            .write(|tx| {
                let n = tx.node(node)?;
                let f = NewFile {
                    path: path.to_owned(),
                    acq: acq.clone(),
                    size: contents.len() as u64,
                    md5: md5.clone(),
                    mtime: 1_740_179_228,
                    own: Default::default(),
                };
                let (file, _) = tx.register_file(&f, 1_740_179_228)?;
                tx.record_copy(file.id, n.id, Has::Yes, Some(4096), 1_740_179_228)?;
                Ok(())
            })
            .unwrap();
    }

    /// What cairnd records when it has checked the copy of `path` on `node`.
    fn verified(&self, node: &str, path: &str, has: Has) {
        self.catalog()
            .write(|tx| {
                let n = tx.node(node)?;
                let f = tx.file(path)?;
                let c = tx.copy_on(f.id, n.id)?.expect("a copy to verify");
                tx.record_verify(c.id, has, 1_740_179_400)
            })
            .unwrap();
    }

    /// What cairnd records when a copy of `path` arrives on `node`.
    fn set_copy(&self, node: &str, path: &str, has: Has) {
        self.catalog()
            .write(|tx| {
                let n = tx.node(node)?;
                let f = tx.file(path)?;
                tx.record_copy(f.id, n.id, has, Some(4096), 1_740_179_300)?;
                Ok(())
            })
            .unwrap();
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim_end).collect()
}

/// A table row, whitespace-collapsed, for comparing with the seed's console text.
fn row_of(table: &str, first: &str) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn seed_004_cli_half_replays() {
    let a = Archive::new();
    assert_eq!(
        a.ok(&["db", "init"]),
        format!(
            "Catalog schema version {} initialised at {}.\n",
            cairn_catalog::schema::SCHEMA_VERSION,
            a.url
        )
    );
    assert_eq!(
        a.ok(&["group", "create", "demo_storage1"]),
        "Created storage group \"demo_storage1\".\n"
    );
    let out = a.ok(&[
        "node",
        "create",
        "demo_storage1",
        "--group=demo_storage1",
        "--auto-import",
        "--root=/data",
        "--host=alpenhost1",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Created host \"alpenhost1\".",
            "Created storage node \"demo_storage1\"."
        ]
    );
    assert_eq!(
        a.ok(&["node", "activate", "demo_storage1"]),
        "Storage node \"demo_storage1\" activated.\n"
    );
    assert_eq!(
        a.ok(&["node", "init", "demo_storage1"]),
        "Requested initialisation of Node \"demo_storage1\".\n"
    );

    // Import: cairnd registers what arrives on the node.
    a.import(
        "demo_storage1",
        "2025/02/21/meta.txt",
        "This is the first acquisition in the alpenhorn demo\n",
    );
    a.import("demo_storage1", "2025/02/21/23/1324.dat", "0 1 2 3 4 5\n");
    let stats = a.ok(&["node", "stats"]);
    assert_eq!(row_of(&stats, "demo_storage1"), "demo_storage1 2 64 B -");
    let details = a.ok(&["file", "list", "--node=demo_storage1", "--details"]);
    assert_eq!(
        row_of(&details, "2025/02/21/meta.txt"),
        "2025/02/21/meta.txt 52 B 4f2a66c1ff5eb90a5013522d53ea2e91 Fri Feb 21 23:07:08 2025 UTC \
         Healthy 4.000 kiB"
    );

    assert_eq!(
        a.ok(&["node", "modify", "demo_storage1", "--no-auto-import"]),
        "Node updated.\n"
    );
    let show = a.ok(&["node", "show", "demo_storage1"]);
    for want in [
        "Storage Node: demo_storage1",
        "Storage Group: demo_storage1",
        "Active: Yes",
        "Type: -",
        "I/O Class: Default",
        "Daemon Host: alpenhost1",
        "Auto-Import: Off",
        "Auto-Verify: Off",
        "Max Total: -",
    ] {
        assert!(
            lines(&show).contains(&want),
            "{want:?} missing from\n{show}"
        );
    }

    assert_eq!(
        a.ok(&[
            "file",
            "import",
            "--register-new",
            "2025/02/21/23/1330.dat",
            "demo_storage1"
        ]),
        "Added new import request.\n"
    );
    assert_eq!(
        a.ok(&[
            "node",
            "scan",
            "demo_storage1",
            "--register-new",
            "2025/02/21"
        ]),
        "Added request for scan of \"2025/02/21\" on Node \"demo_storage1\".\n"
    );
    a.import("demo_storage1", "2025/02/21/23/1330.dat", "0 1 2 3 4 5\n");
    a.import("demo_storage1", "2025/02/21/23/1342.dat", "3 4 5 6 7 8\n");
    a.import("demo_storage1", "2025/02/21/23/1349.dat", "9 10 11 12 13\n");
    assert_eq!(
        row_of(&a.ok(&["node", "stats"]), "demo_storage1"),
        "demo_storage1 5 102 B -"
    );

    // Syncing files between nodes.
    let out = a.ok(&[
        "node",
        "create",
        "demo_storage2",
        "--create-group",
        "--root=/data",
        "--host=alpenhost2",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Created storage group \"demo_storage2\".",
            "Created host \"alpenhost2\".",
            "Created storage node \"demo_storage2\"."
        ]
    );
    a.ok(&["node", "init", "demo_storage2"]);
    let all = a.ok(&["node", "show", "demo_storage2", "--all"]);
    assert!(all.contains("Active: No"), "{all}");
    assert!(all.contains("Total Files: 0"), "{all}");
    assert!(all.contains("Pending import requests:"), "{all}");
    assert!(
        row_of(&all, "[Node").starts_with("[Node Init] - -"),
        "{all}"
    );
    assert!(all.contains("Pending outbound transfers:"), "{all}");
    assert_eq!(
        row_of(&a.ok(&["node", "stats"]), "demo_storage2"),
        "demo_storage2 0 - -"
    );
    assert_eq!(
        a.ok(&[
            "node",
            "modify",
            "demo_storage1",
            "--username",
            "root",
            "--address",
            "alpenhost1"
        ]),
        "Node updated.\n"
    );
    assert_eq!(
        a.ok(&[
            "node",
            "activate",
            "demo_storage2",
            "--username",
            "root",
            "--address",
            "alpenhost2"
        ]),
        "Storage node \"demo_storage2\" activated.\n"
    );
    assert_eq!(
        a.ok(&[
            "file",
            "sync",
            "--from",
            "demo_storage1",
            "--to",
            "demo_storage2",
            "2025/02/21/meta.txt"
        ]),
        "Request submitted.\n"
    );
    let pending = a.ok(&["request", "list"]);
    assert!(
        row_of(&pending, "1")
            .contains("2025/02/21/meta.txt 52 B demo_storage1 demo_storage2 Pending 0"),
        "{pending}"
    );
    let out = a.ok(&["node", "show", "demo_storage1", "--all"]);
    assert_eq!(row_of(&out, "demo_storage2"), "demo_storage2 1 52 B");
    a.set_copy("demo_storage2", "2025/02/21/meta.txt", Has::Yes);
    assert_eq!(
        row_of(&a.ok(&["node", "stats"]), "demo_storage2"),
        "demo_storage2 1 52 B -"
    );

    // Bulk sync counts only files absent from the target group.
    let out = a.ok(&[
        "node",
        "sync",
        "demo_storage1",
        "demo_storage2",
        "--show-files",
        "--force",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Would sync 4 files (50 B) from Node \"demo_storage1\" to Group \"demo_storage2\":",
            "2025/02/21/23/1324.dat",
            "2025/02/21/23/1330.dat",
            "2025/02/21/23/1342.dat",
            "2025/02/21/23/1349.dat",
            "Syncing 4 files (50 B) from Node \"demo_storage1\" to Group \"demo_storage2\".",
            "Added 4 new copy requests.",
        ]
    );
    for p in ["1324", "1330", "1342", "1349"] {
        a.set_copy("demo_storage2", &format!("2025/02/21/23/{p}.dat"), Has::Yes);
    }
    assert_eq!(
        a.ok(&["group", "sync", "demo_storage2", "demo_storage1", "--force"]),
        "No files to sync.\n"
    );

    // Corruption and recovery.
    let show = a.ok(&["file", "show", "2025/02/21/23/1324.dat"]);
    for want in [
        "Name: 1324.dat",
        "Acquisition: 2025/02/21",
        "Path: 2025/02/21/23/1324.dat",
        "Size: 12 B",
        "MD5 Hash: 4c79018e00ddef11af0b9cfc14dd3261",
    ] {
        assert!(
            lines(&show).contains(&want),
            "{want:?} missing from\n{show}"
        );
    }
    let out = a.ok(&[
        "node",
        "verify",
        "--all",
        "--acq=2025/02/21",
        "demo_storage1",
        "--force",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Would request verification of 5 files (102 B).",
            "Requesting verification of 5 files (102 B).",
            "Updated 5 files.",
        ]
    );
    for p in [
        "meta.txt",
        "23/1324.dat",
        "23/1330.dat",
        "23/1342.dat",
        "23/1349.dat",
    ] {
        let has = if p == "23/1324.dat" {
            Has::Corrupt
        } else {
            Has::Yes
        };
        a.verified("demo_storage1", &format!("2025/02/21/{p}"), has);
    }
    let extra = a.ok(&["node", "stats", "--extra-stats"]);
    assert_eq!(
        row_of(&extra, "demo_storage1"),
        "demo_storage1 4 90 B - 1 - -"
    );
    assert_eq!(
        row_of(&extra, "demo_storage2"),
        "demo_storage2 5 102 B - - - -"
    );
    assert_eq!(
        a.ok(&["file", "state", "2025/02/21/23/1324.dat", "demo_storage1"]),
        "Corrupt Keep\n"
    );
    let out = a.ok(&["node", "sync", "demo_storage2", "demo_storage1", "--force"]);
    assert_eq!(
        lines(&out),
        [
            "Would sync 1 file (12 B) from Node \"demo_storage2\" to Group \"demo_storage1\".",
            "Syncing 1 file (12 B) from Node \"demo_storage2\" to Group \"demo_storage1\".",
            "Added 1 new copy request.",
        ]
    );
    a.set_copy("demo_storage1", "2025/02/21/23/1324.dat", Has::Yes);

    // Deleting files: the CLI accepts the request; the daemon will refuse until two archive
    // copies exist elsewhere.
    assert_eq!(
        a.ok(&[
            "file",
            "clean",
            "--now",
            "--node=demo_storage1",
            "2025/02/21/meta.txt"
        ]),
        "Released \"2025/02/21/meta.txt\" for immediate removal on Node \"demo_storage1\".\n"
    );
    assert_eq!(
        a.ok(&["file", "state", "2025/02/21/meta.txt", "demo_storage1"]),
        "Healthy Release-now\n"
    );
    assert_eq!(
        a.ok(&["node", "modify", "--archive", "demo_storage2"]),
        "Node updated.\n"
    );
    assert!(
        a.ok(&["node", "show", "demo_storage2"])
            .contains("Type: Archive")
    );
    let out = a.ok(&[
        "node",
        "create",
        "demo_storage3",
        "--create-group",
        "--archive",
        "--root=/data",
        "--host=alpenhost3",
        "--username",
        "root",
        "--address",
        "alpenhost3",
        "--init",
        "--activate",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Created storage group \"demo_storage3\".",
            "Created host \"alpenhost3\".",
            "Created storage node \"demo_storage3\".",
            "Requested initialisation of Node \"demo_storage3\".",
            "Storage node \"demo_storage3\" activated.",
        ]
    );
    let out = a.ok(&["node", "sync", "--force", "demo_storage2", "demo_storage3"]);
    assert!(out.contains("Added 5 new copy requests."), "{out}");
    for p in [
        "2025/02/21/meta.txt",
        "2025/02/21/23/1324.dat",
        "2025/02/21/23/1330.dat",
        "2025/02/21/23/1342.dat",
        "2025/02/21/23/1349.dat",
    ] {
        a.set_copy("demo_storage3", p, Has::Yes);
    }
    let out = a.ok(&[
        "node",
        "clean",
        "demo_storage1",
        "--now",
        "--target",
        "demo_storage3",
        "--force",
    ]);
    assert_eq!(
        lines(&out),
        [
            "Would release 4 files (50 B).",
            "Releasing 4 files (50 B).",
            "Updated 4 files."
        ],
        "meta.txt was released already, so four remain"
    );
    // cairnd deletes them once two archive copies exist (here: demo_storage2 and 3).
    for p in [
        "meta.txt",
        "23/1324.dat",
        "23/1330.dat",
        "23/1342.dat",
        "23/1349.dat",
    ] {
        a.verified("demo_storage1", &format!("2025/02/21/{p}"), Has::No);
    }
    assert_eq!(
        row_of(&a.ok(&["node", "stats"]), "demo_storage1"),
        "demo_storage1 0 - -"
    );

    // Auto-actions.
    assert_eq!(
        a.ok(&["group", "autosync", "demo_storage2", "demo_storage1"]),
        "Auto-sync from \"demo_storage1\" started\n"
    );
    let show = a.ok(&["group", "show", "demo_storage2", "--actions"]);
    assert_eq!(
        row_of(&show, "demo_storage1"),
        "demo_storage1 Auto-sync File added to that node"
    );
    assert_eq!(
        a.ok(&["node", "autoclean", "demo_storage1", "demo_storage3"]),
        "Auto-clean trigger: Group \"demo_storage3\" added\n"
    );
    let show = a.ok(&["node", "show", "demo_storage1", "--actions"]);
    assert_eq!(
        row_of(&show, "demo_storage2"),
        "demo_storage2 Auto-sync File added to this node"
    );
    assert_eq!(
        row_of(&show, "demo_storage3"),
        "demo_storage3 Auto-clean File added to that group"
    );

    // Transport group and node.
    a.ok(&["group", "create", "--class=Transport", "transport_group"]);
    let out = a.ok(&[
        "node",
        "create",
        "transport1",
        "--transport",
        "--group",
        "transport_group",
        "--host=alpenhost3",
        "--root=/mnt/transport",
        "--init",
        "--activate",
    ]);
    assert!(
        out.contains("Created storage node \"transport1\"."),
        "{out}"
    );
    let out = a.ok(&[
        "node",
        "sync",
        "demo_storage3",
        "transport_group",
        "--target=demo_storage1",
        "--force",
    ]);
    assert!(
        out.starts_with(
            "Would sync 5 files (102 B) from Node \"demo_storage3\" to Group \"transport_group\"."
        ),
        "{out}"
    );
    let show = a.ok(&["group", "show", "--node-stats", "transport_group"]);
    assert!(show.contains("I/O Class: Transport"), "{show}");
    assert_eq!(row_of(&show, "transport1"), "transport1 0 - -");
    assert_eq!(
        a.ok(&["node", "deactivate", "transport1"]),
        "Storage node \"transport1\" deactivated.\n"
    );
    assert_eq!(
        a.ok(&[
            "node",
            "activate",
            "transport1",
            "--host=alpenhost1",
            "--username=root",
            "--address=alpenhost1",
            "--root=/mnt/transport",
        ]),
        "Storage node \"transport1\" activated.\n"
    );
    let node: serde_json::Value =
        serde_json::from_str(&a.ok(&["node", "show", "transport1", "--json"])).unwrap();
    assert_eq!(node["host"], "alpenhost1");
    assert_eq!(node["active"], true);
    assert_eq!(node["kind"], "transport");
}

#[test]
fn bulk_changes_without_a_terminal_refuse_and_change_nothing() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    a.ok(&[
        "node",
        "create",
        "n1",
        "--create-group",
        "--root=/d",
        "--host=h1",
    ]);
    a.ok(&[
        "node",
        "create",
        "n2",
        "--create-group",
        "--archive",
        "--root=/d",
        "--host=h2",
    ]);
    a.import("n1", "2025/02/21/meta.txt", "x\n");
    let err = a.fails(&["node", "sync", "n1", "n2"], 1);
    assert!(err.contains("no terminal to ask on (use --force)"), "{err}");
    let err = a.fails(&["node", "clean", "n1", "--now"], 1);
    assert!(err.contains("use --force"), "{err}");
    let listed = a.ok(&["request", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        v["copy_requests"].as_array().unwrap().len(),
        0,
        "no request was made"
    );
    assert_eq!(
        a.ok(&["file", "state", "2025/02/21/meta.txt", "n1"]),
        "Healthy Keep\n"
    );
}

#[test]
fn confirmation_on_a_terminal_is_asked_and_honoured() {
    // `script` gives cairn a pseudo-terminal and passes our stdin to it.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "script(1) is required in CI"
        );
        eprintln!("SKIPPED: script(1) from util-linux is not installed");
        return;
    }
    let a = Archive::new();
    a.ok(&["db", "init"]);
    a.ok(&[
        "node",
        "create",
        "n1",
        "--create-group",
        "--root=/d",
        "--host=h1",
    ]);
    a.ok(&[
        "node",
        "create",
        "n2",
        "--create-group",
        "--root=/d",
        "--host=h2",
    ]);
    a.import("n1", "2025/02/21/meta.txt", "x\n");
    let on_tty = |answer: &str| {
        let cmd = format!("{} node sync n1 n2", env!("CARGO_BIN_EXE_cairn"));
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("CAIRN_CATALOG", &a.url)
            .env("CAIRN_CONFIG", a.config())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let no = on_tty("n\n");
    assert!(no.contains("Continue? [y/N]: "), "{no}");
    assert!(no.contains("Cancelled."), "{no}");
    assert!(a.ok(&["request", "list"]).contains("Copy requests:\nnone"));
    let yes = on_tty("y\n");
    assert!(yes.contains("Added 1 new copy request."), "{yes}");
}

#[test]
fn unknown_names_are_named_and_exit_1() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    a.ok(&[
        "node",
        "create",
        "demo_storage1",
        "--create-group",
        "--root=/d",
        "--host=h",
    ]);
    for (args, want) in [
        (
            vec!["node", "show", "demo_storag2"],
            "node \"demo_storag2\" not found",
        ),
        (vec!["group", "show", "nope"], "group \"nope\" not found"),
        (vec!["host", "show", "nope"], "host \"nope\" not found"),
        (
            vec!["file", "show", "2025/x.dat"],
            "file \"2025/x.dat\" not found",
        ),
        (
            vec!["acq", "show", "2025/02/30"],
            "acquisition \"2025/02/30\" not found",
        ),
        (
            vec!["node", "sync", "demo_storage1", "nogroup"],
            "group \"nogroup\" not found",
        ),
        (
            vec!["node", "create", "x", "--group", "nogroup"],
            "group \"nogroup\" not found",
        ),
        (
            vec!["request", "cancel", "42"],
            "copy request \"#42\" not found",
        ),
    ] {
        let err = a.fails(&args, 1);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn duplicates_and_bad_values_change_nothing() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    a.ok(&["group", "create", "g"]);
    let err = a.fails(&["group", "create", "g"], 1);
    assert!(err.contains("group \"g\" already exists"), "{err}");
    a.ok(&["node", "create", "n", "--group", "g"]);
    let err = a.fails(&["node", "create", "n", "--group", "g"], 1);
    assert!(err.contains("node \"n\" already exists"), "{err}");
    // --create-group of an existing group fails whole: no node is left behind.
    let err = a.fails(&["node", "create", "g", "--create-group"], 1);
    assert!(err.contains("group \"g\" already exists"), "{err}");
    let err = a.fails(
        &["node", "create", "m", "--group", "g", "--max-total", "12XB"],
        2,
    );
    assert!(err.contains("invalid size \"12XB\""), "{err}");
    let err = a.fails(&["node", "modify", "n", "--min-avail", "lots"], 2);
    assert!(err.contains("invalid size \"lots\""), "{err}");
    let err = a.fails(
        &["node", "create", "m", "--group", "g", "--auto-verify", "10"],
        2,
    );
    assert!(err.contains("missing unit"), "{err}");
    let err = a.fails(
        &[
            "node",
            "create",
            "m",
            "--group",
            "g",
            "--root",
            "relative/dir",
        ],
        1,
    );
    assert!(err.contains("must be an absolute path"), "{err}");
    let err = a.fails(&["host", "create", "h", "--address", "nohostport"], 1);
    assert!(err.contains("expected HOST:PORT"), "{err}");
    let err = a.fails(&["group", "create", "bad name"], 1);
    assert!(err.contains("invalid group name"), "{err}");
    let nodes: serde_json::Value =
        serde_json::from_str(&a.ok(&["node", "list", "--json"])).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    let groups: serde_json::Value =
        serde_json::from_str(&a.ok(&["group", "list", "--json"])).unwrap();
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&a.ok(&["host", "list", "--json"])).unwrap(),
        serde_json::json!([])
    );
    // Usage errors exit 2.
    a.fails(&["node", "frobnicate"], 2);
    a.fails(&["node", "create"], 2);
}

#[test]
fn catalog_of_another_schema_version_is_refused_with_the_fix() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    let db = a.dir.path().join("catalog.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    let err = a.fails(&["group", "create", "g"], 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("schema version 99, newer than this cairn"),
        "{err}"
    );
    conn.execute("UPDATE schema_version SET version = 0", [])
        .unwrap();
    let err = a.fails(&["node", "list"], 1);
    assert!(err.contains("run `cairn db upgrade`"), "{err}");
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM storage_group", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "nothing was written");
    let err = Archive::new().fails(&["node", "list"], 1);
    assert!(err.contains("cairn db init"), "{err}");
}

#[test]
fn config_with_an_unknown_key_is_refused_naming_it() {
    let a = Archive::new();
    std::fs::write(a.config(), "[daemon]\nintervall = \"5s\"\n").unwrap();
    let err = a.fails(&["db", "init"], 1);
    assert!(err.contains("intervall"), "{err}");
    assert!(err.contains(&a.config().display().to_string()), "{err}");
    assert!(
        !a.dir.path().join("catalog.db").exists(),
        "nothing was created"
    );
    std::fs::write(a.config(), "[daemon]\ninterval = \"soon\"\n").unwrap();
    let err = a.fails(&["node", "list"], 1);
    assert!(err.contains("soon"), "{err}");
    let missing = a.dir.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--config", missing.to_str().unwrap(), "node", "list"])
        .env_remove("CAIRN_CONFIG")
        .env("CAIRN_CATALOG", &a.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn catalog_url_comes_from_the_config_file() {
    let a = Archive::new();
    std::fs::write(a.config(), format!("[catalog]\nurl = \"{}\"\n", a.url)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--config", a.config().to_str().unwrap(), "db", "init"])
        .env_remove("CAIRN_CATALOG")
        .env_remove("CAIRN_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a.dir.path().join("catalog.db").exists());
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    for i in 0..200 {
        a.import_quietly(i);
    }
    // `cairn file list | head -1`: the reader leaves after one line.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} file list | head -1",
            env!("CARGO_BIN_EXE_cairn")
        ))
        .env("CAIRN_CATALOG", &a.url)
        .env("CAIRN_CONFIG", a.config())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

impl Archive {
    /// Registers file number `i` (a stand-in for cairnd's import).
    fn import_quietly(&self, i: usize) {
        self.catalog()
            .write(|tx| {
                let md5 = md5_hex(format!("{i}").as_bytes());
                tx.register_file(
                    &NewFile {
                        path: format!("2025/01/01/{i:04}.dat"),
                        acq: "2025/01/01".into(),
                        size: 4,
                        md5: md5.clone(),
                        mtime: 0,
                        own: Default::default(),
                    },
                    1,
                )?;
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn an_unreachable_postgres_catalog_is_named_without_its_password() {
    let a = Archive::new();
    // Nothing listens on port 1 of loopback.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["status"])
        .env("CAIRN_CATALOG", "postgres://cairn:s3cret@127.0.0.1:1/cairn")
        .env("CAIRN_CONFIG", a.config())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed to open the catalog")
            && stderr.contains("postgres://cairn:***@127.0.0.1:1/cairn")
            && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn db_init_prints_the_url_without_its_password_postgres() {
    let test = "db_init_prints_the_url_without_its_password_postgres";
    let Some(server) = cairn_catalog::testing::pg_server(test) else {
        return;
    };
    let a = Archive::new();
    let db = cairn_catalog::testing::TestDatabase::create(&server);
    // The test server trusts loopback, so any password is accepted: it must still not show.
    let url = db.url.replacen("://postgres@", "://postgres:s3cret@", 1);
    assert_ne!(url, db.url, "the test server's URL names user postgres");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["db", "init"])
        .env("CAIRN_CATALOG", &url)
        .env("CAIRN_CONFIG", a.config())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("postgres:***@"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
    let status = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["status"])
        .env("CAIRN_CATALOG", &url)
        .env("CAIRN_CONFIG", a.config())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{stdout}");
    assert!(
        stdout.contains("Catalog: postgres://postgres:***@"),
        "{stdout}"
    );
}

#[test]
fn the_password_comes_from_the_password_file_or_the_environment_postgres() {
    let test = "the_password_comes_from_the_password_file_or_the_environment_postgres";
    let Some(server) = cairn_catalog::testing::pg_server(test) else {
        return;
    };
    // tests/pg.sh makes role cairn_pw_test give a password (scram-sha-256).
    const ROLE: &str = "cairn_pw_test";
    const PASSWORD: &str = "pa:ss word";
    let db = cairn_catalog::testing::TestDatabase::create(&server);
    let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
    let _ = admin.batch_execute(&format!("CREATE ROLE {ROLE} LOGIN"));
    admin
        .batch_execute(&format!(
            "ALTER ROLE {ROLE} PASSWORD 'pa:ss word'; ALTER DATABASE {} OWNER TO {ROLE}",
            db.name
        ))
        .unwrap();
    let url = db.url.replacen("://postgres@", &format!("://{ROLE}@"), 1);
    let config: postgres::Config = url.parse().unwrap();
    let port = config.get_ports()[0];
    let a = Archive::new();
    let cairn = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args)
            .env("CAIRN_CATALOG", &url)
            .env("CAIRN_CONFIG", a.config())
            .env("HOME", a.dir.path())
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(PASSWORD),
            "the password is never printed: {text}"
        );
        (out.status.code(), text)
    };

    // None anywhere: the message says where it is looked for.
    let (code, text) = cairn(&[], &["status"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("PGPASSWORD") && text.contains(".pgpass"),
        "{text}"
    );

    // ~/.pgpass, with its escapes (`\:`), and PGPASSFILE naming another file.
    let line = format!("127.0.0.1:{port}:{}:{ROLE}:pa\\:ss word\n", db.name);
    let pgpass = a.dir.path().join(".pgpass");
    std::fs::write(&pgpass, &line).unwrap();
    let (code, text) = cairn(&[], &["db", "init"]);
    assert_eq!(code, Some(0), "{text}");
    std::fs::remove_file(&pgpass).unwrap();
    let other = a.dir.path().join("catalog.pgpass");
    std::fs::write(&other, &line).unwrap();
    let (code, text) = cairn(&[("PGPASSFILE", other.to_str().unwrap())], &["status"]);
    assert_eq!(code, Some(0), "{text}");

    // PGPASSWORD, right and wrong.
    let (code, text) = cairn(&[("PGPASSWORD", PASSWORD)], &["status"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = cairn(&[("PGPASSWORD", "wrong")], &["status"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
}

#[test]
fn acq_list_complete_in_lists_only_what_is_complete_there() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    for n in ["field", "arch"] {
        a.ok(&[
            "node",
            "create",
            n,
            "--create-group",
            "--root=/data",
            "--host=h1",
        ]);
    }
    a.import("field", "2025/03/01/a.dat", "a\n");
    a.import("field", "2025/03/01/b.dat", "b\n");
    a.import("field", "2025/03/02/c.dat", "c\n");
    a.import("field", "2025/03/03/d.dat", "d\n");
    for acq in ["2025/03/01", "2025/03/02"] {
        a.ok(&["acq", "close", acq]);
    }
    // 2025/03/01: closed, both files in arch. 2025/03/02: closed, not in arch.
    // 2025/03/03: in arch, but open (more files may come).
    a.set_copy("arch", "2025/03/01/a.dat", Has::Yes);
    a.set_copy("arch", "2025/03/01/b.dat", Has::Yes);
    a.set_copy("arch", "2025/03/03/d.dat", Has::Yes);
    let table = a.ok(&["acq", "list", "--complete-in", "arch"]);
    assert_eq!(
        lines(&table),
        [
            "Name        Files  In arch  Complete",
            "----------  -----  -------  --------",
            "2025/03/01  2      2        Yes",
        ]
    );
    let names = |args: &[&str]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&a.ok(args)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&["acq", "list", "--complete-in", "arch", "--json"]),
        ["2025/03/01"]
    );
    assert_eq!(
        names(&["acq", "list", "--complete-in", "field", "--json"]),
        ["2025/03/01", "2025/03/02"]
    );
    // --all: every acquisition, with its state in the group.
    let all = a.ok(&["acq", "list", "--complete-in", "arch", "--all"]);
    assert_eq!(row_of(&all, "2025/03/01"), "2025/03/01 2 2 Yes");
    assert_eq!(row_of(&all, "2025/03/02"), "2025/03/02 1 0 No");
    assert_eq!(row_of(&all, "2025/03/03"), "2025/03/03 1 1 No");
    assert_eq!(
        names(&["acq", "list", "--complete-in", "arch", "--all", "--json"]).len(),
        3
    );
    let err = a.fails(&["acq", "list", "--all"], 2);
    assert!(err.contains("--complete-in"), "{err}");
    let err = a.fails(&["acq", "list", "--complete-in", "nowhere"], 1);
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn path_selects_a_file_at_the_top_of_the_archive() {
    let a = Archive::new();
    a.ok(&["db", "init"]);
    for n in ["field", "arch"] {
        a.ok(&[
            "node",
            "create",
            n,
            "--create-group",
            "--root=/data",
            "--host=h1",
        ]);
    }
    a.import("field", "run1.bin", "top\n");
    a.import("field", "run10.bin", "top, too\n");
    a.import("field", "t/a.txt", "below\n");
    let listed = a.ok(&["file", "list", "--path", "run1.bin"]);
    assert_eq!(lines(&listed), ["run1.bin"]);
    assert_eq!(
        lines(&a.ok(&["file", "list", "--path", "t/a.txt"])),
        ["t/a.txt"]
    );
    let out = a.ok(&[
        "node", "sync", "field", "arch", "--path", "run1.bin", "--force",
    ]);
    assert!(out.contains("1 file"), "{out}");
    let requests = a.ok(&["request", "list"]);
    assert!(requests.contains("run1.bin"), "{requests}");
    assert!(!requests.contains("run10.bin"), "{requests}");
    let out = a.ok(&["node", "clean", "field", "--path", "run1.bin", "--force"]);
    assert!(out.contains("1 file"), "{out}");
    let out = a.ok(&[
        "node", "verify", "field", "--all", "--path", "run1.bin", "--force",
    ]);
    assert!(out.contains("1 file"), "{out}");
}

#[test]
fn completions_and_man_pages_are_generated_without_a_config_or_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env("CAIRN_CONFIG", dir.path().join("missing.toml"))
            .env_remove("CAIRN_CATALOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cairn {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _cairn"), "{bash}");
    assert!(bash.contains("--complete-in"), "every subcommand's options");
    let zsh = run(&["completions", "zsh", "--program", "cairnd"]);
    assert!(zsh.starts_with("#compdef cairnd"), "{zsh}");
    assert!(zsh.contains("--config"), "{zsh}");
    let fish = run(&["completions", "fish", "--program", "cairnfs"]);
    assert!(fish.contains("complete -c cairnfs"), "{fish}");

    let out = dir.path().join("docs");
    run(&["generate-docs", out.to_str().unwrap()]);
    for page in [
        "cairn.1",
        "cairnd.1",
        "cairnfs.1",
        "cairn-node-sync.1",
        "cairn-acq-list.1",
    ] {
        let text = std::fs::read_to_string(out.join("man").join(page)).unwrap();
        assert!(text.contains(".TH "), "{page} is a man page");
    }
    let cairnd = std::fs::read_to_string(out.join("man/cairnd.1")).unwrap();
    assert!(cairnd.contains(".SH EXIT STATUS"), "{cairnd}");
    for f in [
        "bash/cairn",
        "bash/cairnfs",
        "zsh/_cairnd",
        "fish/cairn.fish",
    ] {
        assert!(out.join("completions").join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("completions/bash/cairn")).unwrap(),
        bash,
        "the installed file is what `cairn completions` prints"
    );
    assert!(
        !run(&["--help"]).contains("generate-docs"),
        "a packaging command, hidden"
    );
}
