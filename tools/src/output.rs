//! How the CLI talks to people: aligned tables, `Continue? [y/N]`, JSON for scripts.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use cairn_catalog::units::{format_size, format_time, format_time_short};

/// A table printed with aligned columns and a dashed rule under the header.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in a cell (a newline in a file name) are shown escaped,
    /// so that one row stays one line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| escape_controls(&c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad + 2));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Asks `Continue? [y/N]` after the caller printed what would happen. `--force` skips the
/// question; without a terminal to ask on, the answer is no, with an error saying so.
pub fn confirm(force: bool) -> Result<bool> {
    if force {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to continue without confirmation: no terminal to ask on (use --force)");
    }
    print!("Continue? [y/N]: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

/// A name as one line of text: control characters (newline, tab, escape, DEL …) written as
/// `\n`, `\t`, `\x1b`, `\u{9b}`. Other characters, `é` included, are shown as they are.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Prints `Label: value`, or just `Label:` when the value is empty (control characters
/// escaped, as in tables).
pub fn field(label: &str, value: impl std::fmt::Display) {
    let v = escape_controls(&value.to_string());
    if v.is_empty() {
        println!("{label}:");
    } else {
        println!("{label}: {v}");
    }
}

/// Prints a value as pretty JSON.
pub fn json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `4 files (50 B)`, `1 file (12 B)`.
pub fn count_size(n: usize, bytes: u64) -> String {
    format!(
        "{n} {} ({})",
        plural(n, "file", "files"),
        size_or_dash(bytes)
    )
}

pub fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// A size, or `-` for zero (as alpenhorn prints an empty node).
pub fn size_or_dash(bytes: u64) -> String {
    if bytes == 0 {
        "-".into()
    } else {
        format_size(bytes)
    }
}

pub fn opt_size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), format_size)
}

pub fn opt_time(ts: Option<i64>) -> String {
    ts.map_or_else(|| "-".into(), format_time)
}

pub fn opt_time_short(ts: Option<i64>) -> String {
    ts.map_or_else(|| "-".into(), format_time_short)
}

pub fn opt_str(s: Option<&str>) -> &str {
    s.unwrap_or("")
}

pub fn on_off(b: bool) -> &'static str {
    if b { "On" } else { "Off" }
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["Name", "File Count"]);
        t.row(vec!["demo_storage1".into(), "5".into()]);
        assert_eq!(
            t.render(),
            "Name           File Count\n-------------  ----------\ndemo_storage1  5\n"
        );
    }

    #[test]
    fn control_characters_are_escaped_in_tables() {
        let mut t = Table::new(&["Path", "Size"]);
        t.row(vec![
            "a\nb\tc\x1b[31m\u{9b}d\u{7f}.dat".into(),
            "1 B".into(),
        ]);
        t.row(vec!["é/plain.dat".into(), "2 B".into()]);
        let out = t.render();
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(
            out.contains("a\\nb\\tc\\x1b[31m\\u{9b}d\\x7f.dat  1 B"),
            "{out}"
        );
        assert!(out.contains("é/plain.dat"), "{out}");
    }

    #[test]
    fn count_size_pluralises() {
        assert_eq!(count_size(1, 12), "1 file (12 B)");
        assert_eq!(count_size(4, 50), "4 files (50 B)");
    }
}
