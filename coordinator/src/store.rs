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
    /// Opens the store at `path`, creating it when there is no file. A file that is there
    /// but empty or damaged is refused, never replaced by an empty store: the jobs it held,
    /// and the ids they used, would be forgotten.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be opened (another coordinator holds it, say),
    /// or is empty or damaged (the message says so and what to do).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let damaged = |why: String| {
            StoreError::Db(format!(
                "{} is {why}; the coordinator will not start over an empty store in its place (that would forget its jobs and reuse their ids): restore it from a backup, or move it aside to start afresh",
                path.display()
            ))
        };
        let db = match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => return Err(damaged("empty (0 bytes)".into())),
            Ok(_) => {
                // redb asserts on some truncated files instead of returning an error: a
                // panic while opening is a damaged file, reported as such.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let opened = std::panic::catch_unwind(|| Database::open(path));
                std::panic::set_hook(hook);
                match opened {
                    Ok(Ok(db)) => db,
                    Ok(Err(e)) => return Err(damaged(format!("damaged ({e})"))),
                    Err(_) => return Err(damaged("damaged (truncated?)".into())),
                }
            }
            Err(_) => Database::create(path).map_err(dberr)?,
        };
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

    /// Removes a job record, durably (a record that is not there is no error).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn remove(&self, id: &JobId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(JOBS).map_err(dberr)?;
            t.remove(id.0.as_str()).map_err(dberr)?;
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

    /// Makes sure job numbers up to `n` are never handed out (their directories exist).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn reserve_job_numbers(&self, n: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = tx.open_table(META).map_err(dberr)?;
            let next = t.get("next_job").map_err(dberr)?.map_or(1, |v| v.value());
            if next <= n {
                t.insert("next_job", n + 1).map_err(dberr)?;
            }
        }
        tx.commit().map_err(dberr)
    }

    /// The next job id: `job-N-<suffix>`, with N persisted (ids are never reused while the
    /// store lives) and a random suffix (they are not reused after it is lost either, and
    /// cannot be guessed from the ones seen).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn next_job_id(&self, suffix: &str) -> Result<JobId, StoreError> {
        let tx = self.db.begin_write().map_err(dberr)?;
        let n = {
            let mut t = tx.open_table(META).map_err(dberr)?;
            let n = t.get("next_job").map_err(dberr)?.map_or(1, |v| v.value());
            t.insert("next_job", n + 1).map_err(dberr)?;
            n
        };
        tx.commit().map_err(dberr)?;
        Ok(JobId(format!("job-{n}-{suffix}")))
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
            let id = s.next_job_id("a").expect("id");
            assert_eq!(id.0, "job-1-a");
            let mut rec = JobRecord::new(id, spec(), 3);
            rec.state = JobState::Running;
            s.put(&rec).expect("writes");
        }
        let s = Store::open(&path).expect("reopens");
        let all = s.all().expect("reads");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, JobState::Running);
        assert_eq!(s.next_job_id("b").expect("id").0, "job-2-b");
        s.reserve_job_numbers(7).expect("reserves");
        assert_eq!(s.next_job_id("c").expect("id").0, "job-8-c");
        s.reserve_job_numbers(3).expect("no-op");
        assert_eq!(s.next_job_id("d").expect("id").0, "job-9-d");
    }

    #[test]
    fn an_empty_or_truncated_store_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("graft.redb");
        {
            let s = Store::open(&path).expect("opens");
            for _ in 0..3 {
                let id = s.next_job_id("e").expect("id");
                s.put(&JobRecord::new(id, spec(), 3)).expect("writes");
            }
        }
        let whole = std::fs::read(&path).expect("read");
        for (cut, what) in [(whole.len() / 2, "damaged"), (0, "empty")] {
            std::fs::write(&path, &whole[..cut]).expect("truncate");
            let e = Store::open(&path).err().expect("refused");
            let msg = e.to_string();
            assert!(msg.contains(what) && msg.contains("move it aside"), "{msg}");
            assert_eq!(
                std::fs::metadata(&path).expect("still there").len(),
                cut as u64,
                "the damaged file is left as it was"
            );
        }
    }
}
