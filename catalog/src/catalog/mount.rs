//! Queries only the cairnfs mount makes.

use super::Tx;
use crate::error::Result;
use crate::model::{CopyRequest, DirId, FileId};
use crate::params;

impl Tx<'_> {
    /// Removes directory `dir_id` if it holds no file and no directory; returns whether it did.
    /// The root is never removed.
    pub fn remove_empty_dir(&mut self, dir_id: DirId) -> Result<bool> {
        let n = self.exec(
            "DELETE FROM dir WHERE id = ? AND parent_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM file WHERE dir_id = ?) \
             AND NOT EXISTS (SELECT 1 FROM dir c WHERE c.parent_id = ?)",
            params![dir_id, dir_id, dir_id],
        )?;
        Ok(n > 0)
    }

    /// Pending and active copy requests for one file, oldest first.
    pub fn open_requests_for_file(&mut self, file_id: FileId) -> Result<Vec<CopyRequest>> {
        self.rows(
            &format!(
                "SELECT {} FROM {} WHERE r.file_id = ? AND r.state IN ('pending', 'active') \
                 ORDER BY r.id",
                CopyRequest::COLUMNS,
                CopyRequest::FROM
            ),
            params![file_id],
        )
    }
}
