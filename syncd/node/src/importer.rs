//! Which files may be imported, and which acquisition each belongs to (`[import]`).

use cairn_catalog::config::ImportConfig;
use regex_lite::Regex;

#[derive(Debug)]
pub struct Importer {
    acq_depth: Option<u32>,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

/// The importer's answer for one path below a node root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Import { acq: String },
    Skip(String),
}

impl Importer {
    pub fn new(config: &ImportConfig) -> Result<Importer, regex_lite::Error> {
        let compile = |ps: &[String]| ps.iter().map(|p| Regex::new(p)).collect::<Result<_, _>>();
        Ok(Importer {
            acq_depth: config.acq_depth,
            include: compile(&config.include)?,
            exclude: compile(&config.exclude)?,
        })
    }

    /// Whether `path` (relative, `/`-separated) may be imported, and into which acquisition.
    pub fn check(&self, path: &str) -> Verdict {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.starts_with('.') {
            return Verdict::Skip("names starting with '.' are never imported".into());
        }
        if crate::root::NodeRoot::is_cairn_area(path) {
            return Verdict::Skip("cairn's own area".into());
        }
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(path)) {
            return Verdict::Skip("matches no [import] include pattern".into());
        }
        if let Some(r) = self.exclude.iter().find(|r| r.is_match(path)) {
            return Verdict::Skip(format!("matches [import] exclude pattern {:?}", r.as_str()));
        }
        let acq = match self.acq_depth {
            Some(depth) => dir
                .split('/')
                .filter(|c| !c.is_empty())
                .take(depth as usize)
                .collect::<Vec<_>>()
                .join("/"),
            None => dir.to_owned(),
        };
        Verdict::Import {
            acq: if acq.is_empty() { ".".into() } else { acq },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn importer(depth: Option<u32>, include: &[&str], exclude: &[&str]) -> Importer {
        Importer::new(&ImportConfig {
            acq_depth: depth,
            include: include.iter().map(|s| (*s).to_owned()).collect(),
            exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
            ..ImportConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn acquisition_from_depth_or_directory() {
        let deep = importer(Some(3), &[], &[]);
        let acq = |i: &Importer, p: &str| match i.check(p) {
            Verdict::Import { acq } => acq,
            Verdict::Skip(why) => panic!("{p} skipped: {why}"),
        };
        assert_eq!(acq(&deep, "2025/02/21/23/1324.dat"), "2025/02/21");
        assert_eq!(acq(&deep, "2025/02/21/meta.txt"), "2025/02/21");
        assert_eq!(acq(&deep, "2025/x.dat"), "2025");
        let plain = importer(None, &[], &[]);
        assert_eq!(acq(&plain, "2025/02/21/23/1324.dat"), "2025/02/21/23");
        assert_eq!(acq(&plain, "top.dat"), ".");
        assert_eq!(acq(&plain, ".hidden_dir/x.dat"), ".hidden_dir");
    }

    #[test]
    fn dotfiles_and_patterns_are_skipped() {
        let i = importer(None, &[r"^\d{4}/"], &[r"\.tmp$"]);
        assert!(matches!(i.check("2025/02/.x.dat"), Verdict::Skip(_)));
        assert!(matches!(i.check("notes/x.dat"), Verdict::Skip(w) if w.contains("include")));
        assert!(matches!(i.check("2025/x.dat.tmp"), Verdict::Skip(w) if w.contains("exclude")));
        assert!(matches!(i.check("2025/x.dat"), Verdict::Import { .. }));
        assert!(matches!(i.check(".cairn/tmp/x"), Verdict::Skip(_)));
    }
}
