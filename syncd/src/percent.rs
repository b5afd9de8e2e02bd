//! Archive paths in URLs: `GET /v1/copy/{node}/{path}` carries them percent-encoded (the
//! puller in [`crate::transfer`] encodes, the server in [`crate::http`] decodes).

/// Decodes `%XX` escapes (paths are sent percent-encoded); `None` on a malformed escape or
/// invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes an archive path for a URL (keeps `/` and unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for p in ["2025/02/21/meta.txt", "a b/ü%.dat", "x/.hidden"] {
            assert_eq!(percent_decode(&percent_encode(p)).as_deref(), Some(p));
        }
        assert_eq!(percent_decode("%2e%2e/x").as_deref(), Some("../x"));
        assert_eq!(percent_decode("%zz"), None);
    }
}
