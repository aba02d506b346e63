//! TensorBoard event files beside each job's checkpoints, so that
//! `tensorboard --logdir <state-dir>` shows every job as a run (`jobs/<id>`).
//!
//! An event file is a TFRecord stream (for each record: its length as a little-endian u64,
//! the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data) of
//! `tensorflow.Event` protobuf messages: first one with the file version, then one per step
//! and per evaluation with `Summary` scalar values. The few messages needed are declared
//! here with prost derives, field numbers as in TensorFlow's `event.proto` and
//! `summary.proto`, rather than vendoring TensorFlow's protos.
//!
//! Each coordinator process opens a new file per job (named, as TensorBoard expects, with
//! `tfevents`, the time and the process id), so a restarted coordinator appends nothing to
//! a file another process wrote; TensorBoard merges the files of a run. Writes are buffered
//! and flushed at each evaluation and at the job's end, so the state lock that the events
//! are recorded under costs a memory copy, not a disk write, per step. A failure to write is
//! logged once per file and ends that file: the event files are a convenience, as the curves.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use graft_proto::v1 as pb;
use graft_transfer::methods::GrlSchedule;
use prost::Message;

use crate::job::{JobId, now_ms};
use crate::state::State;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value` with the one member of its `value` oneof graft writes.
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`: what TensorBoard shows under a tag's name, and which of
/// its plugins draws it (metadata without a plugin is not taken for a scalar).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    display_name: String,
    #[prost(string, tag = "3")]
    summary_description: String,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// The tag of the training loss, and what it is for DANN.
pub const LOSS_TAG: &str = "train/loss";
const DANN_LOSS: &str = "The combined loss DANN minimises: the label cross-entropy on the \
    source batch plus the domain head's binary cross-entropy (the mean over the source and \
    the target batch), whose gradient the reversal layer scales by -lambda for the features.";

/// What one job event adds to the job's event file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scalars {
    /// The step TensorBoard files them under (steps done; 0 for an evaluation at the start).
    pub step: u64,
    /// Tag and value.
    pub values: Vec<(String, f64)>,
    /// Write them to disk now (an evaluation, the end).
    pub flush: bool,
    /// The job ended: close the file.
    pub last: bool,
    /// The job is DANN (its loss is described as the combined loss).
    pub dann: bool,
}

impl Scalars {
    /// The scalars of `event` for `job`: a step's loss, training accuracy, learning rate and
    /// (DANN) λ, or an evaluation's metrics (accuracies, domain accuracy, losses). λ is
    /// computed as the workers compute it, from the method's schedule and the step's place
    /// in its stage.
    pub fn of(state: &State, job: &JobId, event: &pb::JobEvent) -> Option<Self> {
        let entry = state.jobs.get(job)?;
        let dann = GrlSchedule::of(&entry.record.spec.method);
        match event.event.as_ref()? {
            pb::job_event::Event::Progress(p) => {
                let mut values = vec![
                    (LOSS_TAG.to_string(), p.loss),
                    ("train/accuracy".to_string(), p.train_accuracy),
                    ("train/learning_rate".to_string(), p.lr),
                ];
                let step0 = p.step.saturating_sub(1);
                if let (Some(schedule), Some((_, stage))) =
                    (dann, entry.data.as_ref().and_then(|d| d.stage_of(step0)))
                {
                    let lambda = schedule.lambda(step0 - stage.first_step, stage.steps);
                    values.push(("train/lambda".to_string(), lambda));
                }
                Some(Self {
                    step: p.step,
                    values,
                    dann: dann.is_some(),
                    ..Self::default()
                })
            }
            pb::job_event::Event::Evaluation(e) => Some(Self {
                step: e.step,
                values: e
                    .metrics
                    .iter()
                    .map(|(k, v)| (format!("eval/{k}"), *v))
                    .collect(),
                flush: true,
                dann: dann.is_some(),
                last: false,
            }),
            pb::job_event::Event::Finished(_) => Some(Self {
                flush: true,
                last: true,
                ..Self::default()
            }),
            _ => None,
        }
    }
}

/// One job's event file in this process, opened at its first event.
#[derive(Debug, Default)]
pub struct JobBoard {
    file: Mutex<Option<Open>>,
}

#[derive(Debug)]
enum Open {
    Writing {
        out: BufWriter<File>,
        path: PathBuf,
        described: bool,
    },
    /// Writing failed once (logged); nothing more is tried for this job in this process.
    Failed,
}

impl JobBoard {
    /// Appends `scalars` to the job's event file in `dir` (created on first use).
    pub fn write(&self, dir: &Path, job: &JobId, scalars: Option<Scalars>) {
        let Some(s) = scalars else { return };
        let Ok(mut file) = self.file.lock() else {
            return;
        };
        if file.is_none() && !s.last {
            *file = Some(match open(dir) {
                Ok((out, path)) => Open::Writing {
                    out,
                    path,
                    described: false,
                },
                Err(e) => {
                    tracing::warn!(%job, dir = %dir.display(), error = %e, "cannot create the TensorBoard event file");
                    Open::Failed
                }
            });
        }
        let Some(Open::Writing {
            out,
            path,
            described,
        }) = file.as_mut()
        else {
            return;
        };
        let result = (|| {
            if !s.values.is_empty() {
                let describe = s.dann && !*described;
                *described |= describe;
                write_record(out, &scalar_event(&s, describe))?;
            }
            if s.flush {
                out.flush()?;
            }
            Ok::<_, std::io::Error>(())
        })();
        match result {
            Err(e) => {
                tracing::warn!(%job, path = %path.display(), error = %e, "cannot write the TensorBoard event file");
                *file = Some(Open::Failed);
            }
            Ok(()) if s.last => *file = None,
            Ok(()) => {}
        }
    }
}

fn open(dir: &Path) -> std::io::Result<(BufWriter<File>, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let now = now_ms();
    let path = dir.join(format!(
        "events.out.tfevents.{}.graft-coordinator.{}.{}",
        now / 1000,
        std::process::id(),
        now % 1000
    ));
    let mut out = BufWriter::with_capacity(64 << 10, File::create(&path)?);
    let version = Event {
        wall_time: now as f64 / 1e3,
        step: 0,
        what: Some(What::FileVersion("brain.Event:2".into())),
    };
    write_record(&mut out, &version)?;
    out.flush()?;
    Ok((out, path))
}

fn scalar_event(s: &Scalars, describe: bool) -> Event {
    Event {
        wall_time: now_ms() as f64 / 1e3,
        step: i64::try_from(s.step).unwrap_or(i64::MAX),
        what: Some(What::Summary(Summary {
            value: s
                .values
                .iter()
                .map(|(tag, v)| Value {
                    tag: tag.clone(),
                    simple_value: Some(*v as f32),
                    metadata: (describe && tag == LOSS_TAG).then(|| SummaryMetadata {
                        // The scalars plugin's data is an empty ScalarPluginData (version 0).
                        plugin_data: Some(PluginData {
                            plugin_name: "scalars".into(),
                            content: Vec::new(),
                        }),
                        display_name: "combined loss (label + domain)".into(),
                        summary_description: DANN_LOSS.into(),
                    }),
                })
                .collect(),
        })),
    }
}

/// CRC-32C as TFRecord stores it: rotated and offset, so that a CRC of data holding CRCs
/// stays well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn write_record(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    let data = event.encode_to_vec();
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(&data)?;
    out.write_all(&masked_crc(&data).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing of one record, read back as a TFRecord reader does.
    fn read_records(bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
            assert_eq!(crc, masked_crc(len_bytes), "length CRC");
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(
                bytes[at + 12 + len..at + 16 + len]
                    .try_into()
                    .expect("4 bytes"),
            );
            assert_eq!(crc, masked_crc(data), "data CRC");
            out.push(Event::decode(data).expect("an Event"));
            at += 16 + len;
        }
        out
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorBoard's own masked_crc32c(b"123456789"), the CRC-32C check value 0xe3069283
        // rotated and offset.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn writes_a_version_record_then_scalars_and_flushes_on_evaluation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let board = JobBoard::default();
        let job = JobId::from("job-1");
        let step = Scalars {
            step: 3,
            values: vec![(LOSS_TAG.into(), 0.5), ("train/lambda".into(), 0.25)],
            dann: true,
            ..Scalars::default()
        };
        board.write(dir.path(), &job, Some(step.clone()));
        board.write(
            dir.path(),
            &job,
            Some(Scalars {
                step: 3,
                values: vec![("eval/target_accuracy".into(), 0.75)],
                flush: true,
                ..Scalars::default()
            }),
        );
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_records(&std::fs::read(&files[0]).expect("file"));
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let Some(What::Summary(s)) = &events[1].what else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(events[1].step, 3);
        assert_eq!(s.value[0].simple_value, Some(0.5));
        assert!(
            s.value[0]
                .metadata
                .as_ref()
                .is_some_and(|m| m.display_name.contains("combined"))
        );
        assert_eq!(s.value[1].tag, "train/lambda");
        assert!(s.value[1].metadata.is_none());
        // The end closes the file; a later event (another run) opens a new one.
        board.write(
            dir.path(),
            &job,
            Some(Scalars {
                flush: true,
                last: true,
                ..Scalars::default()
            }),
        );
        assert!(board.file.lock().expect("lock").is_none());
    }
}
