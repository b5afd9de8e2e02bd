//! The MD5 of many buffers at once: a batch of pulled files is checked in one pass.
//!
//! One MD5 is a single dependency chain ([`crate::md5fast`]): a core runs it at the latency of
//! one step, with most of its execution units idle. Sixteen independent MD5s fit in the 16
//! 32-bit lanes of an AVX-512 register, each step one vector add, `vpternlogd` (the round's
//! boolean function) and `vprold` (the rotation), so a core hashes sixteen buffers in about
//! the time it hashes one.
//!
//! Each lane takes the next buffer when its own is done, so buffers of any sizes share the
//! lanes; the lanes hash whole 64-byte blocks only, and each buffer's tail and padding are
//! finished by the scalar [`Md5`] from the lane's state. Without AVX-512 (or with fewer than
//! two buffers) every buffer is hashed by the scalar code.

use crate::md5fast::Md5;

/// The MD5 of each of `bufs`, in order.
pub fn md5_many(bufs: &[&[u8]]) -> Vec<[u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    if bufs.len() > 1 && std::arch::is_x86_feature_detected!("avx512f") {
        let mut out = vec![[0u8; 16]; bufs.len()];
        // SAFETY: the CPU has AVX-512F, checked just above.
        unsafe { avx512::many(bufs, &mut out) };
        return out;
    }
    bufs.iter().map(|b| scalar(b)).collect()
}

fn scalar(buf: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(buf);
    md5.finalize()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::md5fast::{INIT, K, Md5, rounds};

    const LANES: usize = 16;

    /// One 64-byte block of each lane, lane by lane, for the gathers that turn it word by word.
    #[repr(C, align(64))]
    struct Blocks([[u32; 16]; LANES]);

    /// Hashes `bufs` into `out` (as long as `bufs`), sixteen at a time.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn many(bufs: &[&[u8]], out: &mut [[u8; 16]]) {
        // Per lane: the buffer it hashes, and the offset of its next block.
        let mut lane: [Option<usize>; LANES] = [None; LANES];
        let mut offset = [0usize; LANES];
        let mut next = 0;
        let mut state = [[0u32; LANES]; 4];
        let zeros = [0u8; 64];
        let mut blocks = Blocks([[0; 16]; LANES]);
        // Lane l's word i is at index 16 l + i of `blocks`.
        let index = _mm512_setr_epi32(
            0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
        );
        loop {
            // Finish the lanes whose buffers have no whole block left, and give them new ones.
            for l in 0..LANES {
                if let Some(b) = lane[l] {
                    if bufs[b].len() - offset[l] >= 64 {
                        continue;
                    }
                    let s = [state[0][l], state[1][l], state[2][l], state[3][l]];
                    out[b] = finish(s, bufs[b], offset[l]);
                    lane[l] = None;
                }
                while next < bufs.len() && lane[l].is_none() {
                    if bufs[next].len() < 64 {
                        out[next] = finish(INIT, bufs[next], 0);
                    } else {
                        lane[l] = Some(next);
                        offset[l] = 0;
                        for (w, init) in state.iter_mut().zip(INIT) {
                            w[l] = init;
                        }
                    }
                    next += 1;
                }
            }
            // Every lane runs as many blocks as the shortest buffer still has.
            let Some(run) = (0..LANES)
                .filter_map(|l| lane[l].map(|b| (bufs[b].len() - offset[l]) / 64))
                .min()
            else {
                return;
            };
            let sources: [&[u8]; LANES] = std::array::from_fn(|l| match lane[l] {
                Some(b) => &bufs[b][offset[l]..offset[l] + run * 64],
                None => &zeros[..],
            });
            let step = |l: usize| usize::from(lane[l].is_some()) * 64;
            let steps: [usize; LANES] = std::array::from_fn(step);
            // SAFETY: `state` rows are 16 u32, an unaligned 512-bit load each.
            let mut a = unsafe { _mm512_loadu_si512(state[0].as_ptr().cast()) };
            let mut b = unsafe { _mm512_loadu_si512(state[1].as_ptr().cast()) };
            let mut c = unsafe { _mm512_loadu_si512(state[2].as_ptr().cast()) };
            let mut d = unsafe { _mm512_loadu_si512(state[3].as_ptr().cast()) };
            for n in 0..run {
                for l in 0..LANES {
                    let at = n * steps[l];
                    // SAFETY: each source holds `run` blocks (the zero block is reused),
                    // and a row of `blocks` is 64 bytes.
                    unsafe {
                        let v = _mm512_loadu_si512(sources[l][at..at + 64].as_ptr().cast());
                        _mm512_store_si512(blocks.0[l].as_mut_ptr().cast(), v);
                    }
                }
                // Word i of every lane.
                // SAFETY: the indices stay inside `blocks` (256 words).
                let m: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                    _mm512_i32gather_epi32::<4>(
                        _mm512_add_epi32(index, _mm512_set1_epi32(i as i32)),
                        blocks.0.as_ptr().cast(),
                    )
                });
                let (a0, b0, c0, d0) = (a, b, c, d);
                macro_rules! step {
                    ($a:ident, $b:ident, $c:ident, $d:ident, $j:expr, $s:expr, $w:expr, $f:expr) => {
                        let fun = _mm512_ternarylogic_epi32::<$f>($b, $c, $d);
                        let sum = _mm512_add_epi32(
                            _mm512_add_epi32($a, _mm512_set1_epi32(K[$j] as i32)),
                            _mm512_add_epi32(m[$w], fun),
                        );
                        $a = _mm512_add_epi32($b, _mm512_rol_epi32::<$s>(sum));
                    };
                }
                // F = b ? c : d; G = d ? b : c; H = b ^ c ^ d; I = c ^ (b | !d).
                macro_rules! f {
                    ($a:ident, $b:ident, $c:ident, $d:ident, $j:expr, $s:expr) => {
                        step!($a, $b, $c, $d, $j, $s, $j, 0xca)
                    };
                }
                macro_rules! g {
                    ($a:ident, $b:ident, $c:ident, $d:ident, $j:expr, $s:expr) => {
                        step!($a, $b, $c, $d, $j, $s, (5 * $j + 1) % 16, 0xe4)
                    };
                }
                macro_rules! h {
                    ($a:ident, $b:ident, $c:ident, $d:ident, $j:expr, $s:expr) => {
                        step!($a, $b, $c, $d, $j, $s, (3 * $j + 5) % 16, 0x96)
                    };
                }
                macro_rules! i {
                    ($a:ident, $b:ident, $c:ident, $d:ident, $j:expr, $s:expr) => {
                        step!($a, $b, $c, $d, $j, $s, (7 * $j) % 16, 0x39)
                    };
                }
                rounds!(f, g, h, i, a, b, c, d);
                a = _mm512_add_epi32(a, a0);
                b = _mm512_add_epi32(b, b0);
                c = _mm512_add_epi32(c, c0);
                d = _mm512_add_epi32(d, d0);
            }
            for (row, v) in state.iter_mut().zip([a, b, c, d]) {
                // SAFETY: a row is 16 u32.
                unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
            }
            for l in 0..LANES {
                if lane[l].is_some() {
                    offset[l] += run * 64;
                }
            }
        }
    }

    /// The digest of `buf`, whose first `done` bytes (whole blocks) made `state`.
    fn finish(state: [u32; 4], buf: &[u8], done: usize) -> [u8; 16] {
        let mut md5 = Md5::resume(state, done as u64);
        md5.update(&buf[done..]);
        md5.finalize()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn each_digest_is_the_buffers_own() {
        // Sizes across the padding boundaries, equal and unequal, more buffers than lanes.
        let sizes = [
            0,
            1,
            55,
            56,
            63,
            64,
            65,
            119,
            120,
            127,
            128,
            1000,
            4096,
            4096,
            4096,
            65_536,
            3,
            200,
            1 << 20,
            4097,
            64,
            128,
            192,
            5000,
            70_000,
            12,
        ];
        let bufs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| data(n, i as u32))
            .collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let got = md5_many(&refs);
        for (i, b) in refs.iter().enumerate() {
            assert_eq!(got[i], scalar(b), "buffer {i} of {} bytes", b.len());
        }
        assert_eq!(md5_many(&[]), Vec::<[u8; 16]>::new());
        assert_eq!(md5_many(&[b"abc"])[0], scalar(b"abc"));
    }

    #[test]
    fn sixteen_files_of_one_mib() {
        let bufs: Vec<Vec<u8>> = (0..16).map(|i| data(1 << 20, 100 + i)).collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let got = md5_many(&refs);
        for (i, b) in refs.iter().enumerate() {
            assert_eq!(got[i], scalar(b), "buffer {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matches_the_scalar_md5_for_any_sizes(
            sizes in proptest::collection::vec(0usize..3000, 0..40),
        ) {
            let bufs: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| data(n, i as u32)).collect();
            let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
            let want: Vec<[u8; 16]> = refs.iter().map(|b| scalar(b)).collect();
            prop_assert_eq!(md5_many(&refs), want);
        }
    }
}
