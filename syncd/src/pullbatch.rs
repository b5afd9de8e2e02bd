//! Batched pulls: many small copies from one host in one HTTP request. The wire format lives
//! here, once; the server side is in [`crate::http`], the client in [`crate::transfer`], the
//! task that installs and records a batch in `tasks/pull_batch.rs`.
//!
//! - Request: `GET /v1/batch?copies=ID,ID,…` (copy ids, in the catalog of both hosts), with
//!   the same credentials as a single pull (the bearer token, or the client certificate over
//!   mutual TLS). At most [`MAX_FILES`] ids; more, none, or one that is not a number, and the
//!   request is refused whole (400).
//! - Response: `200`, then for each id, in the order asked, a header line and the bytes:
//!   `ID SIZE MD5\n` followed by exactly `SIZE` bytes, or `ID - REASON\n` and no bytes when
//!   this host cannot serve that copy (not a healthy copy of a node available here, a path
//!   that leads out of its root, larger than [`MAX_FILE`], unreadable). The `MD5` is the
//!   catalog's, for the logs: the receiver checks the bytes against its own catalog.
//! - Each file is read whole before its header is sent, so a header's size is the size of
//!   the bytes that follow, and a file that fails to read fails alone. A stream that ends
//!   early (the source died) fails the files not yet received, which are retried.
//!
//! Only small files go in a batch (at most [`MAX_FILE`] each, [`MAX_BYTES`] in all): a large
//! file keeps its own request, which `Range` can resume.

use cairn_catalog::model::CopyId;

/// The path of the batch endpoint.
pub const PATH: &str = "/v1/batch";

/// Files above this size are pulled on their own.
pub const MAX_FILE: u64 = 1 << 20;

/// At most this many files in one batch.
pub const MAX_FILES: usize = 256;

/// At most this many bytes of files in one batch (the receiver holds a batch in memory until
/// it lands).
pub const MAX_BYTES: u64 = 16 << 20;

/// The longest header line a receiver accepts (a reason is cut to fit).
pub const MAX_HEADER: usize = 512;

/// The query string of a batch request for `ids`.
pub fn query(ids: &[CopyId]) -> String {
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("copies={}", list.join(","))
}

/// The copy ids of a batch request's query string; `None` if it is not one.
pub fn parse_query(query: &str) -> Option<Vec<CopyId>> {
    let list = query.strip_prefix("copies=")?;
    let ids: Vec<CopyId> = list
        .split(',')
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (!ids.is_empty() && ids.len() <= MAX_FILES).then_some(ids)
}

/// One file's header in a batch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// `SIZE` bytes follow.
    File {
        copy_id: CopyId,
        size: u64,
        md5: String,
    },
    /// The source cannot serve this copy; no bytes follow.
    Refused { copy_id: CopyId, reason: String },
}

impl Header {
    pub fn copy_id(&self) -> CopyId {
        match self {
            Header::File { copy_id, .. } | Header::Refused { copy_id, .. } => *copy_id,
        }
    }

    /// The header line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Header::File { copy_id, size, md5 } => format!("{copy_id} {size} {md5}\n"),
            Header::Refused { copy_id, reason } => {
                let mut reason: String = reason
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let room = MAX_HEADER - 40;
                if reason.len() > room {
                    let mut cut = room;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                }
                format!("{copy_id} - {reason}\n")
            }
        }
    }

    /// Parses a header line (without its newline); `None` if it is not one.
    pub fn parse(line: &str) -> Option<Header> {
        let (id, rest) = line.split_once(' ')?;
        let copy_id = id.parse().ok()?;
        if let Some(reason) = rest.strip_prefix("- ") {
            return Some(Header::Refused {
                copy_id,
                reason: reason.to_owned(),
            });
        }
        let (size, md5) = rest.split_once(' ')?;
        Some(Header::File {
            copy_id,
            size: size.parse().ok()?,
            md5: md5.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_written() {
        for h in [
            Header::File {
                copy_id: CopyId(7),
                size: 4096,
                md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
            },
            Header::Refused {
                copy_id: CopyId(8),
                reason: "no healthy copy of \"a b.dat\" on node \"n1\"".into(),
            },
        ] {
            let line = h.encode();
            assert!(line.ends_with('\n') && line.len() <= MAX_HEADER);
            assert_eq!(Header::parse(line.trim_end_matches('\n')), Some(h));
        }
    }

    #[test]
    fn a_long_or_multiline_reason_stays_one_short_line() {
        let h = Header::Refused {
            copy_id: CopyId(1),
            reason: "é\n".repeat(1000),
        };
        let line = h.encode();
        assert!(line.len() <= MAX_HEADER, "{}", line.len());
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn queries() {
        let ids = vec![CopyId(1), CopyId(22), CopyId(333)];
        assert_eq!(parse_query(&query(&ids)), Some(ids));
        assert_eq!(parse_query("copies="), None);
        assert_eq!(parse_query("copies=1,x"), None);
        assert_eq!(parse_query("ids=1"), None);
        let too_many: Vec<CopyId> = (0..=MAX_FILES as i64).map(CopyId).collect();
        assert_eq!(parse_query(&query(&too_many)), None);
    }

    #[test]
    fn garbage_is_not_a_header() {
        for line in ["", "x 1 abc", "1", "1 x abc", "HTTP/1.1 200 OK"] {
            assert_eq!(Header::parse(line), None, "{line:?}");
        }
    }
}
