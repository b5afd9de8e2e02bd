//! MD5 helpers: the catalog records every file's md5 as 32 lowercase hex digits, and every copy
//! is checked against it.
//!
//! [`Hasher`] hashes a stream and counts its bytes; [`Md5Writer`] hashes what passes through a
//! writer, so a copy's md5 is known the moment its last byte is written.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::md5fast::Md5;

/// Buffer size for reading whole files.
const READ_BUFFER: usize = 1 << 20;

/// The md5 of `bytes` as 32 lowercase hex digits.
pub fn md5_hex(bytes: &[u8]) -> String {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.finish_hex()
}

/// The md5 of each of `bufs`, as 32 lowercase hex digits, in order: several at once where the
/// CPU allows ([`crate::md5lanes`]).
pub fn md5_hex_many(bufs: &[&[u8]]) -> Vec<String> {
    crate::md5lanes::md5_many(bufs)
        .iter()
        .map(|d| to_hex(d))
        .collect()
}

/// Whether `s` is an md5 as the catalog stores it: exactly 32 lowercase hex digits.
pub fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The size and md5 (lowercase hex) of the file at `path`, read in 1 MiB blocks.
pub fn md5_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buffer = vec![0; READ_BUFFER];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher.len(), hasher.finish_hex()))
}

/// A streaming md5 that also counts the bytes it has seen.
///
/// It is an [`io::Write`] too, so `io::copy(&mut reader, &mut hasher)` hashes a reader.
#[derive(Clone, Default)]
pub struct Hasher {
    md5: Md5,
    len: u64,
}

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The md5 of everything hashed, as 32 lowercase hex digits.
    pub fn finish_hex(self) -> String {
        to_hex(&self.md5.finalize())
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes every byte the inner writer accepts.
///
/// Only bytes the inner writer reports as written are hashed, so short writes and errors leave
/// the hash matching what actually reached it.
#[derive(Debug)]
pub struct Md5Writer<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Md5Writer<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    /// The hash of what has been written so far.
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, e.g. to `sync_all` a file. Writing to it directly bypasses the hash.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer and the hash of everything written through this one.
    pub fn into_parts(self) -> (W, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<W: Write> Write for Md5Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    const DEMO_FIRST: &[u8] = b"This is the first acquisition in the alpenhorn demo\n";

    #[test_case(b"", "d41d8cd98f00b204e9800998ecf8427e")]
    #[test_case(b"abc", "900150983cd24fb0d6963f7d28e17f72")]
    #[test_case(DEMO_FIRST, "4f2a66c1ff5eb90a5013522d53ea2e91"; "alpenhorn demo first acq")]
    #[test_case(b"0 1 2 3 4 5\n", "4c79018e00ddef11af0b9cfc14dd3261"; "alpenhorn demo numbers")]
    fn known_vectors(input: &[u8], expected: &str) {
        assert_eq!(md5_hex(input), expected);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, input).unwrap();
        assert_eq!(
            md5_file(&path).unwrap(),
            (input.len() as u64, expected.to_owned())
        );
    }

    #[test]
    fn md5_file_spans_several_buffers() {
        let data: Vec<u8> = (0..READ_BUFFER * 2 + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        assert_eq!(
            md5_file(file.path()).unwrap(),
            (data.len() as u64, md5_hex(&data))
        );
    }

    #[test]
    fn md5_file_missing_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let error = md5_file(&dir.path().join("absent")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn writer_hashes_what_it_passes_on() {
        let mut writer = Md5Writer::new(Vec::new());
        writer.write_all(b"This is the first acquisition ").unwrap();
        writer.write_all(b"in the alpenhorn demo\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.hasher().len(), DEMO_FIRST.len() as u64);
        let (inner, hasher) = writer.into_parts();
        assert_eq!(inner, DEMO_FIRST);
        assert_eq!(hasher.finish_hex(), "4f2a66c1ff5eb90a5013522d53ea2e91");
    }

    /// Accepts at most 3 bytes per write, like a pipe under pressure.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_hashes_only_accepted_bytes() {
        let mut writer = Md5Writer::new(Trickle(Vec::new()));
        assert_eq!(writer.write(b"0 1 2 3 4 5\n").unwrap(), 3);
        writer.write_all(b" 2 3 4 5\n").unwrap();
        let (inner, hasher) = writer.into_parts();
        assert_eq!(inner.0, b"0 1 2 3 4 5\n");
        assert_eq!(hasher.finish_hex(), "4c79018e00ddef11af0b9cfc14dd3261");
    }

    #[test]
    fn hasher_is_an_io_sink() {
        let mut hasher = Hasher::new();
        assert!(hasher.is_empty());
        io::copy(&mut &DEMO_FIRST[..], &mut hasher).unwrap();
        assert_eq!(hasher.len(), DEMO_FIRST.len() as u64);
        assert_eq!(hasher.finish_hex(), "4f2a66c1ff5eb90a5013522d53ea2e91");
    }

    #[test_case("d41d8cd98f00b204e9800998ecf8427e", true)]
    #[test_case("D41D8CD98F00B204E9800998ECF8427E", false; "uppercase")]
    #[test_case("d41d8cd98f00b204e9800998ecf8427", false; "31 digits")]
    #[test_case("d41d8cd98f00b204e9800998ecf8427e0", false; "33 digits")]
    #[test_case("g41d8cd98f00b204e9800998ecf8427e", false; "not hex")]
    #[test_case("", false)]
    fn md5_hex_shape(s: &str, expected: bool) {
        assert_eq!(is_md5_hex(s), expected);
    }

    proptest! {
        #[test]
        fn chunked_updates_match_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (a, b) = data.split_at(cut.index(data.len() + 1));
            let mut hasher = Hasher::new();
            hasher.update(a);
            hasher.update(b);
            let hex = hasher.finish_hex();
            prop_assert!(is_md5_hex(&hex));
            prop_assert_eq!(hex, md5_hex(&data));
        }
    }
}
