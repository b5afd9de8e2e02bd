//! The local unix socket of cairnd (`daemon.socket`): its protocol, typed, and the nudge client.
//!
//! A client writes one request line; cairnd answers some of them with reply lines.
//!
//! - `wake`: look for work now (from the CLI and the mount, after they wrote a request into the
//!   catalog). No answer.
//! - `fetch FILE_ID`: cairnfs asks for a file with no copy on this host to be fetched into the
//!   cache. Answered by:
//!   - `ready PATH`: the file is in the cache, complete and md5-checked;
//!   - `part PATH`: it is being fetched into `PATH`, which grows from byte 0, and a last line
//!     follows when the fetch ends:
//!   - `done PATH`: the fetch finished and the whole file matched its md5 (`PATH` is its final
//!     name in the cache);
//!   - `error MESSAGE`: no copy could be fetched, or the bytes did not match the md5.
//! - `ahead FILE_ID`: cairnfs sees a program read the files of FILE_ID's directory one after
//!   another: fetch that directory's other small files into the cache, in batches. No answer.
//!
//! [`Request`] and [`Reply`] parse (`FromStr`) and print (`Display`, without the newline) these
//! lines, so the words are written once.
//!
//! Nudging ([`nudge`]) is best effort: no daemon on this machine, or one that is busy, is not
//! an error — the request is in the catalog and will be found at the next loop anyway.

use std::fmt;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cairn_catalog::model::FileId;

/// A line a client sends to cairnd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Look for work now.
    Wake,
    /// Fetch the file with this catalog id into the cache.
    Fetch(FileId),
    /// Fetch the small files of this file's directory into the cache, in batches.
    Ahead(FileId),
}

/// A line cairnd answers a [`Request::Fetch`] with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The file is in the cache, complete and checked.
    Ready(PathBuf),
    /// The file is arriving in this part file; [`Reply::Done`] or [`Reply::Error`] follows.
    Part(PathBuf),
    /// The fetch finished; the checked file is here.
    Done(PathBuf),
    /// No copy could be fetched, or its bytes were wrong.
    Error(String),
}

/// A line that is not a request or a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed fetch request")]
    MalformedFetch,
    #[error("unknown line {0:?}")]
    Unknown(String),
}

impl FromStr for Request {
    type Err = ProtocolError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let line = line.trim();
        if line == "wake" {
            return Ok(Request::Wake);
        }
        if let Some(id) = line.strip_prefix("ahead ") {
            return id
                .trim()
                .parse()
                .map(Request::Ahead)
                .map_err(|_| ProtocolError::MalformedFetch);
        }
        match line.strip_prefix("fetch ") {
            Some(id) => id
                .trim()
                .parse()
                .map(Request::Fetch)
                .map_err(|_| ProtocolError::MalformedFetch),
            None => Err(ProtocolError::Unknown(line.to_owned())),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Wake => f.write_str("wake"),
            Request::Fetch(id) => write!(f, "fetch {id}"),
            Request::Ahead(id) => write!(f, "ahead {id}"),
        }
    }
}

impl FromStr for Reply {
    type Err = ProtocolError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Ok(match word {
            "ready" => Reply::Ready(PathBuf::from(rest)),
            "part" => Reply::Part(PathBuf::from(rest)),
            "done" => Reply::Done(PathBuf::from(rest)),
            "error" => Reply::Error(rest.to_owned()),
            _ => return Err(ProtocolError::Unknown(line.to_owned())),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ready(p) => write!(f, "ready {}", p.display()),
            Reply::Part(p) => write!(f, "part {}", p.display()),
            Reply::Done(p) => write!(f, "done {}", p.display()),
            // One line: a message never carries a newline into the protocol.
            Reply::Error(m) => write!(f, "error {}", m.replace('\n', " ")),
        }
    }
}

/// Tells the cairnd listening on `socket` to look for work now. Returns whether one heard it.
pub fn nudge(socket: &Path) -> bool {
    tell(socket, &Request::Wake)
}

/// Sends `request`, one that has no answer, to the cairnd listening on `socket`. Returns
/// whether one heard it.
pub fn tell(socket: &Path, request: &Request) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    s.write_all(format!("{request}\n").as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Wake,
            Request::Fetch(FileId(42)),
            Request::Ahead(FileId(9)),
        ] {
            assert_eq!(r.to_string().parse::<Request>(), Ok(r));
        }
        assert_eq!("wake\n".parse::<Request>(), Ok(Request::Wake));
        assert_eq!(
            "fetch  7 ".parse::<Request>(),
            Ok(Request::Fetch(FileId(7)))
        );
    }

    #[test]
    fn a_malformed_fetch_is_told_apart_from_an_unknown_line() {
        assert_eq!(
            "fetch x".parse::<Request>(),
            Err(ProtocolError::MalformedFetch)
        );
        assert!(matches!(
            "hello".parse::<Request>(),
            Err(ProtocolError::Unknown(_))
        ));
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ready("/var/cache/cairn/abc".into()),
            Reply::Part("/var/cache/cairn/abc.part".into()),
            Reply::Done("/c/a b".into()),
            Reply::Error("no reachable copy of x".into()),
        ] {
            assert_eq!(r.to_string().parse::<Reply>(), Ok(r));
        }
        assert_eq!("error".parse::<Reply>(), Ok(Reply::Error(String::new())));
        assert!("sure".parse::<Reply>().is_err());
    }

    #[test]
    fn nudging_nobody_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!nudge(&dir.path().join("none.sock")));
    }
}
