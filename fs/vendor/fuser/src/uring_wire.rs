//! The layout of FUSE-over-io_uring request buffers (`include/uapi/linux/fuse.h`,
//! `struct fuse_uring_req_header`), and the moves between it and the layout of `/dev/fuse`.
//! Plain functions of bytes: cairn-fs compiles this file into its own tests too, since the
//! vendored crate's tests do not run in the workspace.

use std::io;
use std::io::IoSlice;

/// `FUSE_IO_URING_CMD_REGISTER`
pub(crate) const REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`
pub(crate) const COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
pub(crate) const HEADER_LEN: usize = 288;
pub(crate) const OP_IN: usize = 128;
pub(crate) const OP_IN_LEN: usize = 128;
/// `struct fuse_uring_ent_in_out`: flags, commit_id, payload_sz, padding, reserved.
pub(crate) const ENT_COMMIT_ID: usize = 256 + 8;
pub(crate) const ENT_PAYLOAD_SZ: usize = 256 + 16;
/// `struct fuse_in_header` and `struct fuse_out_header`.
pub(crate) const IN_HEADER_LEN: usize = 40;
pub(crate) const OUT_HEADER_LEN: usize = 16;

/// How many CPUs a kernel CPU list (`0-1`, `0`, `0-3,8-11`) spans: its highest number + 1.
pub(crate) fn cpus_in(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
        .map(|m| m + 1)
}

/// Lays an answer out as the kernel reads it from a request buffer: `bufs` is a
/// `fuse_out_header` then the answer's data, as for a write to `/dev/fuse`; the header goes to
/// `out`, the data to `payload`. Returns the data's length, or `None` if it does not fit.
pub(crate) fn pack(
    bufs: &[IoSlice<'_>],
    out: &mut [u8; OUT_HEADER_LEN],
    payload: &mut [u8],
) -> Option<usize> {
    let mut at = 0;
    let mut len = 0;
    for b in bufs {
        let mut b: &[u8] = b;
        if at < OUT_HEADER_LEN {
            let take = b.len().min(OUT_HEADER_LEN - at);
            out[at..at + take].copy_from_slice(&b[..take]);
            at += take;
            b = &b[take..];
        }
        payload.get_mut(len..len + b.len())?.copy_from_slice(b);
        len += b.len();
    }
    Some(len)
}

/// Rebuilds a request that came in a request buffer (`header`: `fuse_uring_req_header`;
/// `payload`: the payload buffer) as `/dev/fuse` delivers it, into `out`: the
/// `fuse_in_header`, the opcode's struct, then the rest. Returns its length and commit id.
pub(crate) fn unpack(header: &[u8], payload: &[u8], out: &mut [u8]) -> io::Result<(usize, u64)> {
    let word = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().unwrap()) as usize;
    let len = word(0);
    let payload_len = word(ENT_PAYLOAD_SZ);
    let commit_id =
        u64::from_ne_bytes(header[ENT_COMMIT_ID..ENT_COMMIT_ID + 8].try_into().unwrap());
    let op_len = len
        .checked_sub(IN_HEADER_LEN + payload_len)
        .filter(|&n| n <= OP_IN_LEN && payload_len <= payload.len() && len <= out.len())
        .ok_or_else(|| {
            io::Error::other(format!(
                "io_uring request of {len} bytes with {payload_len} bytes of payload"
            ))
        })?;
    out[..IN_HEADER_LEN].copy_from_slice(&header[..IN_HEADER_LEN]);
    out[IN_HEADER_LEN..IN_HEADER_LEN + op_len].copy_from_slice(&header[OP_IN..OP_IN + op_len]);
    out[IN_HEADER_LEN + op_len..len].copy_from_slice(&payload[..payload_len]);
    Ok((len, commit_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpus_in("0-1\n"), Some(2));
        assert_eq!(cpus_in("0"), Some(1));
        assert_eq!(cpus_in("0-3,8-11"), Some(12));
        assert_eq!(cpus_in(""), None);
        assert_eq!(cpus_in("x"), None);
    }

    #[test]
    fn an_answer_is_split_into_header_and_payload() {
        let header: Vec<u8> = (0..16).collect();
        let data = b"abcdefgh";
        let mut out = [0u8; OUT_HEADER_LEN];
        let mut payload = [0u8; 32];
        // The header and data in separate slices, and the header split across two.
        let bufs = [
            IoSlice::new(&header[..10]),
            IoSlice::new(&header[10..]),
            IoSlice::new(&data[..3]),
            IoSlice::new(&data[3..]),
        ];
        assert_eq!(pack(&bufs, &mut out, &mut payload), Some(8));
        assert_eq!(&out[..], &header[..]);
        assert_eq!(&payload[..8], data);
        // Header and data in one slice.
        let one = [header.clone(), data.to_vec()].concat();
        let mut out = [0u8; OUT_HEADER_LEN];
        assert_eq!(pack(&[IoSlice::new(&one)], &mut out, &mut payload), Some(8));
        assert_eq!(&out[..], &header[..]);
        // No data.
        assert_eq!(
            pack(&[IoSlice::new(&header)], &mut out, &mut payload),
            Some(0)
        );
        // More data than the buffer holds.
        let big = [0u8; 33];
        assert_eq!(
            pack(
                &[IoSlice::new(&header), IoSlice::new(&big)],
                &mut out,
                &mut payload
            ),
            None
        );
    }

    /// A request buffer as the kernel fills it for a request of `op` (the opcode's struct) and
    /// `rest` (the payload).
    fn filled(unique: u64, op: &[u8], rest: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut header = vec![0u8; HEADER_LEN];
        let len = (IN_HEADER_LEN + op.len() + rest.len()) as u32;
        header[..4].copy_from_slice(&len.to_ne_bytes());
        header[4..8].copy_from_slice(&16u32.to_ne_bytes());
        header[8..16].copy_from_slice(&unique.to_ne_bytes());
        header[OP_IN..OP_IN + op.len()].copy_from_slice(op);
        header[ENT_COMMIT_ID..ENT_COMMIT_ID + 8].copy_from_slice(&unique.to_ne_bytes());
        header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4]
            .copy_from_slice(&(rest.len() as u32).to_ne_bytes());
        let mut payload = vec![0xeeu8; 64];
        payload[..rest.len()].copy_from_slice(rest);
        (header, payload)
    }

    #[test]
    fn a_request_is_rebuilt_as_dev_fuse_delivers_it() {
        let op = [7u8; 40];
        let (header, payload) = filled(42, &op, b"the data");
        let mut out = vec![0u8; 256];
        let (len, commit_id) = unpack(&header, &payload, &mut out).unwrap();
        assert_eq!((len, commit_id), (IN_HEADER_LEN + 40 + 8, 42));
        assert_eq!(&out[..IN_HEADER_LEN], &header[..IN_HEADER_LEN]);
        assert_eq!(&out[IN_HEADER_LEN..IN_HEADER_LEN + 40], &op);
        assert_eq!(&out[IN_HEADER_LEN + 40..len], b"the data");
        // No opcode struct (a lookup: the name is the payload).
        let (header, payload) = filled(43, &[], b"name\0");
        let (len, _) = unpack(&header, &payload, &mut out).unwrap();
        assert_eq!(&out[IN_HEADER_LEN..len], b"name\0");
    }

    #[test]
    fn a_request_whose_sizes_do_not_add_up_is_refused() {
        // An opcode struct larger than its area.
        let (mut header, payload) = filled(1, &[1u8; 8], b"");
        header[..4].copy_from_slice(&((IN_HEADER_LEN + OP_IN_LEN + 8) as u32).to_ne_bytes());
        assert!(unpack(&header, &payload, &mut [0u8; 512]).is_err());
        // A length shorter than header and payload.
        let (mut header, payload) = filled(1, &[], b"abc");
        header[..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(unpack(&header, &payload, &mut [0u8; 512]).is_err());
        // More payload than its buffer.
        let (mut header, payload) = filled(1, &[], b"abc");
        header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&100u32.to_ne_bytes());
        header[..4].copy_from_slice(&((IN_HEADER_LEN + 100) as u32).to_ne_bytes());
        assert!(unpack(&header, &payload, &mut [0u8; 512]).is_err());
    }
}
