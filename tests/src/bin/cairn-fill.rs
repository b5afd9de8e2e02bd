//! Fills a catalog with many files at once, for the scale benchmark (`tests/bench/scale.sh`):
//! `cairn-fill URL DIRS FILES BIG` registers DIRS directories `scale/dDDDD` of FILES files each,
//! plus one directory `scale/big` of BIG files, every file of 1 byte, in transactions of
//! 20,000 files. No copies: listings, `find` and `du` need none. Prints the files registered
//! per second.

use std::process::ExitCode;
use std::time::Instant;

use cairn_catalog::Catalog;
use cairn_catalog::catalog::NewFile;

const BATCH: usize = 20_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dirs, files, big] = args.as_slice() else {
        eprintln!("usage: cairn-fill URL DIRS FILES BIG");
        return ExitCode::from(2);
    };
    let (Ok(dirs), Ok(files), Ok(big)) = (dirs.parse(), files.parse(), big.parse()) else {
        eprintln!("cairn-fill: DIRS, FILES and BIG are numbers");
        return ExitCode::from(2);
    };
    match fill(url, dirs, files, big) {
        Ok(n) => {
            println!("{n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn-fill: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fill(
    url: &str,
    dirs: usize,
    files: usize,
    big: usize,
) -> Result<String, cairn_catalog::CatalogError> {
    let mut cat = Catalog::open(url)?;
    // The md5 of one byte, "x".
    let md5 = cairn_catalog::md5::md5_hex(b"x");
    let paths = (0..dirs)
        .flat_map(|d| (0..files).map(move |f| format!("scale/d{d:04}/f{f:05}.dat")))
        .chain((0..big).map(|f| format!("scale/big/f{f:06}.dat")));
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut n = 0usize;
    let flush = |batch: &mut Vec<NewFile>, cat: &mut Catalog| {
        let t = cairn_catalog::units::now();
        cat.write(|tx| tx.register_files(batch, t))?;
        batch.clear();
        Ok::<_, cairn_catalog::CatalogError>(())
    };
    for path in paths {
        batch.push(NewFile {
            path,
            acq: "scale".into(),
            size: 1,
            md5: md5.clone(),
            mtime: 1_740_000_000,
            own: Default::default(),
        });
        n += 1;
        if batch.len() == BATCH {
            flush(&mut batch, &mut cat)?;
        }
    }
    flush(&mut batch, &mut cat)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{n} files in {secs:.1} s ({:.0} files/s)",
        n as f64 / secs
    ))
}
