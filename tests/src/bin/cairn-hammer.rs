//! Writes into a catalog as fast as it can, for the concurrent-writers test:
//! `cairn-hammer URL WRITER COUNT NODE GROUP` registers COUNT files under `hammer/WRITER/`,
//! each with a copy on NODE and a copy request into GROUP, one transaction per file, and
//! reads node totals every 50 files. Prints `ok COUNT` when all committed.

use std::process::ExitCode;

use cairn_catalog::Catalog;
use cairn_catalog::catalog::{NewCopyRequest, NewFile};
use cairn_catalog::model::Has;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, writer, count, node, group] = args.as_slice() else {
        eprintln!("usage: cairn-hammer URL WRITER COUNT NODE GROUP");
        return ExitCode::from(2);
    };
    let count: u64 = count.parse().expect("COUNT is a number");
    match hammer(url, writer, count, node, group) {
        Ok(()) => {
            println!("ok {count}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn-hammer {writer}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hammer(
    url: &str,
    writer: &str,
    count: u64,
    node: &str,
    group: &str,
) -> Result<(), cairn_catalog::CatalogError> {
    let mut cat = Catalog::open(url)?;
    let (node_id, group_id) = cat.read(|tx| Ok((tx.node(node)?.id, tx.group(group)?.id)))?;
    for i in 0..count {
        let path = format!("hammer/{writer}/{i:05}.dat");
        let md5 = format!("{:032x}", i);
        cat.write(|tx| {
            let f = NewFile {
                path: path.clone(),
                acq: "hammer".into(),
                size: i,
                md5: md5.clone(),
                mtime: 0,
                own: Default::default(),
            };
            let (file, _) = tx.register_file(&f, 1)?;
            tx.record_copy(file.id, node_id, Has::Yes, None, 1)?;
            tx.create_copy_request(
                NewCopyRequest {
                    file_id: file.id,
                    from_node: node_id,
                    to_group: group_id,
                },
                1,
            )?;
            Ok(())
        })?;
        if i % 50 == 0 {
            cat.read(|tx| tx.node_stats(None))?;
        }
    }
    Ok(())
}
