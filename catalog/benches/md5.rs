//! The md5 of a batch: 16 buffers of 1 MiB (a batched pull of 1 MiB files) and 256 of 4 KiB
//! (one of small files), hashed one after another by the scalar md5 and together in lanes
//! (`md5_hex_many`), in the same run. Prints a table; never fails on a time.
//!
//! `cargo bench -p cairn-catalog --bench md5`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cairn_catalog::md5::{md5_hex, md5_hex_many};

/// The best of `runs` timings of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn main() {
    // Under `cargo test --benches`: one quick pass, to check it runs.
    let runs = if std::env::args().any(|a| a == "--bench") {
        20
    } else {
        1
    };
    println!("| batch | one at a time | in lanes | ratio |");
    println!("|---|---|---|---|");
    for (count, size) in [(16usize, 1usize << 20), (256, 4096)] {
        let bufs: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                (0..size)
                    .map(|j| ((j as u32).wrapping_mul(2_654_435_761) >> 11) as u8 ^ i as u8)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let one: Vec<String> = refs.iter().map(|b| md5_hex(b)).collect();
        assert_eq!(
            md5_hex_many(&refs),
            one,
            "the lanes give each buffer's own md5"
        );
        let scalar = best(runs, || {
            for b in &refs {
                black_box(md5_hex(black_box(b)));
            }
        });
        let lanes = best(runs, || {
            black_box(md5_hex_many(black_box(&refs)));
        });
        let mbs = |d: Duration| (count * size) as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| {count} × {} KiB | {:.0} MB/s | {:.0} MB/s | {:.1}× |",
            size >> 10,
            mbs(scalar),
            mbs(lanes),
            scalar.as_secs_f64() / lanes.as_secs_f64()
        );
    }
}
