//! The embedded job store (redb): every job record, so that `graft list` and the jobs
//! themselves survive a coordinator restart.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::job::{JobId, JobRecord};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("job store: {0}")]
    Db(String),
    /// A record could not be read back.
    #[error("job store: record {id} is damaged: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// What failed.
        reason: String,
    },
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be opened (another coordinator holds it, say).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let tx = db.begin_write().map_err(dberr)?;
        {
            tx.open_table(JOBS).map_err(dberr)?;
            tx.open_table(META).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(Self { db })
    }

    /// Writes a job record (insert or replace), durably.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn put(&self, job: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).map_err(dberr)?;
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(JOBS).map_err(dberr)?;
            t.insert(job.id.0.as_str(), bytes.as_slice())
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)
    }

    /// Every job record, by id.
    ///
    /// # Errors
    /// [`StoreError`] when the database or a record cannot be read.
    pub fn all(&self) -> Result<Vec<JobRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let t = tx.open_table(JOBS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let rec: JobRecord =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    id: k.value().to_string(),
                    reason: e.to_string(),
                })?;
            out.push(rec);
        }
        Ok(out)
    }

    /// The next job number (persisted, so ids are never reused).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn next_job_id(&self) -> Result<JobId, StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        let n = {
            let mut t = tx.open_table(META).map_err(dberr)?;
            let n = t.get("next_job").map_err(dberr)?.map_or(1, |v| v.value());
            t.insert("next_job", n + 1).map_err(dberr)?;
            n
        };
        tx.commit().map_err(dberr)?;
        Ok(JobId(format!("job-{n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    fn spec() -> graft_transfer::JobSpec {
        crate::testing::moons_spec((1, 1), 3)
    }

    #[test]
    fn records_and_ids_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobs.redb");
        {
            let s = Store::open(&path).expect("opens");
            let id = s.next_job_id().expect("id");
            assert_eq!(id.0, "job-1");
            let mut rec = JobRecord::new(id, spec(), 3);
            rec.state = JobState::Running;
            s.put(&rec).expect("writes");
        }
        let s = Store::open(&path).expect("reopens");
        let all = s.all().expect("reads");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, JobState::Running);
        assert_eq!(s.next_job_id().expect("id").0, "job-2");
    }
}
