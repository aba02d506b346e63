//! `graft`: submit and follow jobs, run a local cluster, or run the demo. `graft local` and
//! `graft demo` start the `graft-coordinator` and `graft-worker` binaries installed beside
//! this one, so the CLI links neither.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use graft_client::local::{DEFAULT_MAX_RESTARTS, LocalCluster, LocalOptions, Supervision, run_dir};
use graft_client::watch::{Outcome, follow, follow_with_notices, run_seconds};
use graft_client::{Client, jobfile, summary};
use graft_common::logging::{self, LogFormat};
use graft_common::wire::state_name;
use graft_proto::v1 as pb;
use graft_transfer::JobSpec;

mod data;

/// mimalloc keeps freed megabyte buffers for reuse where glibc unmaps them; see the
/// allocator section of docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "graft: distributed data-parallel transfer learning"
)]
struct Cli {
    /// The coordinator's URL. `local`, `demo` and `bench` start their own coordinator and
    /// refuse `--coordinator`, `--token` and `--tls-ca` (they ignore GRAFT_URL,
    /// GRAFT_API_TOKEN and GRAFT_TLS_CA).
    #[arg(
        long,
        global = true,
        env = "GRAFT_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// API token (sent as `authorization: Bearer`).
    #[arg(long, global = true, env = "GRAFT_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// coordinator.
    #[arg(long, global = true, env = "GRAFT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Log format of the client.
    #[arg(long, global = true, default_value = "plain")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Run every example job of the transfer methods (W = 2) and write docs/RESULTS.md.
    Methods {
        /// Only these example files (by name, e.g. dann-moons.toml; `FILE@SEED` runs a file at
        /// another seed); earlier results of the others are kept.
        #[arg(long = "only")]
        only: Vec<String>,
        /// The examples folder.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// Where RESULTS.md and RESULTS.json go.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Workers per job.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Only rewrite RESULTS.md from RESULTS.json, running nothing.
        #[arg(long)]
        rewrite: bool,
    },
    /// Time graft's all-reduce (real processes on loopback) against raw TCP round the same
    /// ring in the same run.
    Allreduce {
        /// Processes (a comma-separated list runs each).
        #[arg(long, value_delimiter = ',', default_values_t = vec![2usize, 4, 8])]
        workers: Vec<usize>,
        /// Gradient sizes, e.g. 4KiB,1MiB,256MiB.
        #[arg(long, value_delimiter = ',', value_parser = graft_client::perf::parse_bytes,
              default_values = ["4KiB", "64KiB", "1MiB", "16MiB", "64MiB", "256MiB"])]
        bytes: Vec<u64>,
        /// `ring` or `star` (a comma-separated list runs each).
        #[arg(long, value_delimiter = ',', default_values = ["ring"])]
        algorithm: Vec<String>,
        /// The ring's transports: `tcp` (raw TCP links, the default of jobs), `grpc` (a
        /// gRPC stream per step); a comma-separated list runs each. The star ignores it.
        #[arg(long, value_delimiter = ',', default_values = ["tcp", "grpc"])]
        transport: Vec<String>,
        /// Timed iterations (default: more for small sizes).
        #[arg(long)]
        iters: Option<usize>,
        /// One JSON object per configuration.
        #[arg(long)]
        json: bool,
    },
    /// Time whole training steps (coordinator and workers on generated data) and show where
    /// the time goes.
    Train {
        /// `mlp` (784-512-512-10, 128 per worker) or `dann` (digits CNN + domain head, 64 + 64).
        #[arg(long, default_value = "mlp")]
        workload: String,
        /// Workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Device of the workers: cpu, libtorch-cpu, cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Steps (the first fifth are a warm-up and not measured).
        #[arg(long, default_value_t = 100)]
        steps: u64,
        /// `ring` or `star`.
        #[arg(long, default_value = "ring")]
        allreduce: String,
        /// The ring's transport: `tcp` (the jobs' default) or `grpc`.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "grpc"])]
        ring_transport: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rounds of a real job (coordinator and 3 workers as processes) under random faults —
    /// worker kill -9, SIGSTOP, SIGTERM, coordinator kill -9 — against an uninterrupted run:
    /// each must complete, exactly once per epoch, at the same accuracy.
    Chaos {
        /// Rounds with faults.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Seed of the faults' kinds, steps and pauses.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave out killing the coordinator.
        #[arg(long)]
        no_coordinator_kills: bool,
        /// One JSON object per round (and the uninterrupted run and the totals).
        #[arg(long)]
        json: bool,
        /// Write the report to --out.
        #[arg(long)]
        write: bool,
        /// The report --write writes (and the run's records beside it, as .json).
        #[arg(long, default_value = "docs/RELIABILITY.md")]
        out: PathBuf,
        /// Only rewrite --out from the .json beside it, running nothing.
        #[arg(long)]
        rewrite: bool,
        /// Directory for the rounds' stores, checkpoints and logs (default:
        /// graft-runs/chaos-<time>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The datasets' directory, for the coordinator (default: its own, or GRAFT_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Download the catalog's datasets from their pinned sources, check them by SHA-256 and
    /// convert them into the files graft reads; what is already there is skipped.
    Fetch {
        /// Datasets (or sources, as `graft data list` names them); none: all.
        names: Vec<String>,
        /// The data directory to fill (default: GRAFT_DATA_DIR, else graft/data in the
        /// user's cache directory, which graft also reads by default).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Fetch the originals from this base URL instead, under their paths in the data
        /// directory (`URL/usps/usps.h5`); they are checked against the same SHA-256.
        #[arg(long)]
        mirror: Option<String>,
        /// Attempts per file before giving up.
        #[arg(long, default_value_t = 3)]
        attempts: u32,
    },
    /// Read a dataset file of your own (npz, npy-pair, csv, image-folder, idx) and say what
    /// it holds: samples, shape, scaling, value range and classes; or what is wrong with it.
    Show {
        /// The file (or, for image-folder, the folder).
        path: PathBuf,
        /// npz, npy-pair, csv, image-folder or idx (default: from the name).
        #[arg(long, value_parser = data::format)]
        format: Option<graft_transfer::data::files::FileFormat>,
        /// npy-pair and idx: the labels file.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// npz: the features array (default x).
        #[arg(long)]
        x_key: Option<String>,
        /// npz: the labels array (default y).
        #[arg(long)]
        y_key: Option<String>,
        /// csv: the label column, by header name or 0-based index (default the last).
        #[arg(long)]
        label_column: Option<String>,
        /// csv: whether the first row is a header (default: guessed).
        #[arg(long)]
        header: Option<bool>,
        /// image-folder: 1 (grayscale) or 3 (RGB).
        #[arg(long)]
        channels: Option<usize>,
        /// image-folder: resize every image to this square size.
        #[arg(long)]
        image_size: Option<usize>,
    },
    /// Show every dataset of the catalog, where its files are found and where they come from.
    List {
        /// Look here first (default: ../shared/data, the coordinator's default data_dir);
        /// then in the directory `graft data fetch` fills.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The layouts `graft export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportLayout {
    /// graft's names, linear weights [in, out]: the checkpoint as it is.
    Graft,
    /// An nn.Sequential's names, PyTorch's layout, metadata for `load_state_dict`.
    Torch,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download or list the catalog's datasets.
    #[command(subcommand)]
    Data(DataCmd),
    /// Submit a job file.
    Submit {
        /// The job file (TOML).
        file: PathBuf,
        /// Follow the job to its end.
        #[arg(long)]
        watch: bool,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// List the jobs.
    List {
        /// One JSON object per job.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Status {
        /// The job's id.
        id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job to its end.
    Watch {
        /// The job's id.
        id: String,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Delete a finished job with its checkpoints, manifests and curves.
    Delete {
        /// The job's id.
        id: String,
    },
    /// List a job's checkpoints.
    Checkpoints {
        /// The job's id.
        id: String,
        /// One JSON object per checkpoint.
        #[arg(long)]
        json: bool,
    },
    /// Write a checkpoint's weights as safetensors.
    Export {
        /// The job's id.
        id: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// The checkpoint's step (default: the latest).
        #[arg(long)]
        step: Option<u64>,
        /// The file's layout: `graft` (the checkpoint as it is: graft's names, linear
        /// weights [in, out]) or `torch` (an nn.Sequential's names and PyTorch's layout, with
        /// the architecture, graft's version and the job spec in the metadata).
        #[arg(long, value_enum, default_value_t = ExportLayout::Graft)]
        format: ExportLayout,
    },
    /// Run a job file on a coordinator and workers started here, on loopback.
    Local {
        /// The job file (TOML).
        file: PathBuf,
        /// Workers to start; the job's workers.min and workers.max are set to it.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Device of the workers and of the evaluation: cpu, libtorch-cpu, cuda:N (the last
        /// two need the `tch` build).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Directory for the store, checkpoints and logs (default: graft-runs/local-<time>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// How many times, over the whole run, a worker that exits is started again (a
        /// fresh process under the same name, which rejoins the job when its group
        /// re-forms), as torchrun's --max-restarts. Past it, a worker that exits stays down.
        #[arg(long, default_value_t = DEFAULT_MAX_RESTARTS)]
        max_restarts: u32,
        /// How long the job waits for workers when its group is below workers.min (the
        /// coordinator's regroup_timeout_ms; default its 600000) before it fails.
        #[arg(long)]
        regroup_timeout_ms: Option<u64>,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run the built-in demonstration (two moons rotated by 35°: source-only vs DANN).
    Demo {
        /// Workers to start.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Directory for the store, checkpoints and logs (default: graft-runs/demo-<time>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// One JSON object per job.
        #[arg(long)]
        json: bool,
    },
}

/// The subcommands that start their own coordinator and workers.
const OWN_CLUSTER: [&str; 3] = ["local", "demo", "bench"];

/// The global flags that say which coordinator to talk to, by argument id, with the flag and
/// the environment variable they are also read from.
const REMOTE_FLAGS: [(&str, &str, &str); 3] = [
    ("coordinator", "--coordinator", "GRAFT_URL"),
    ("token", "--token", "GRAFT_API_TOKEN"),
    ("tls_ca", "--tls-ca", "GRAFT_TLS_CA"),
];

/// Parses the command line; a subcommand that starts its own cluster refuses the flags that
/// name another coordinator, which it would silently ignore. Only flags given on the command
/// line are refused: the environment variables are there for the other subcommands and are
/// ignored.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    if let Some(msg) = refused_flag(&matches) {
        return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, msg));
    }
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Why the command line is refused, if it gives `local`, `demo` or `bench` a remote flag.
fn refused_flag(matches: &ArgMatches) -> Option<String> {
    let (sub, _) = matches.subcommand()?;
    if !OWN_CLUSTER.contains(&sub) {
        return None;
    }
    // A global flag may stand before the subcommand or after it (or after `bench train`):
    // each level's matches are looked at.
    let mut levels = vec![matches];
    while let Some((_, m)) = levels.last().and_then(|m| m.subcommand()) {
        levels.push(m);
    }
    REMOTE_FLAGS.iter().find_map(|(id, flag, env)| {
        levels
            .iter()
            .any(|m| m.value_source(id) == Some(ValueSource::CommandLine))
            .then(|| {
                format!(
                    "graft {sub} starts its own coordinator and workers and talks to no other: {flag} does not apply to it (nor does {env}, which it ignores)"
                )
            })
    })
}

fn state_of(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or_default()
}

fn finish(o: &Outcome, json: bool) -> bool {
    if json {
        println!("{}", summary::json_line(&o.job, o.seconds));
    } else {
        print!("{}", summary::human(o));
    }
    state_of(&o.job) == pb::JobState::Completed
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(Client::connect_tls(
        &cli.coordinator,
        cli.token.as_deref(),
        cli.tls_ca.as_deref(),
    )
    .await?)
}

/// The signals that end `graft local`: each must take the local cluster down with it.
struct Stop {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// The name of the first signal to arrive.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// How `local` and `demo` run their cluster.
struct LocalRun<'a> {
    workers: u32,
    device: &'a str,
    state_dir: PathBuf,
    json: bool,
    log_format: LogFormat,
    max_restarts: u32,
    regroup_timeout_ms: Option<u64>,
}

/// Runs `specs` one after the other on a local cluster; whether all completed, and each
/// job's final metrics. A worker that exits is started again while `max_restarts` allow;
/// the coordinator exiting ends the run.
async fn run_local_jobs(
    specs: Vec<JobSpec>,
    run: LocalRun<'_>,
) -> anyhow::Result<(bool, Vec<(String, std::collections::HashMap<String, f64>)>)> {
    let LocalRun {
        workers,
        device,
        state_dir,
        json,
        log_format,
        max_restarts,
        regroup_timeout_ms,
    } = run;
    let mut results = Vec::new();
    // Before the processes start, so that no signal can end this process without them.
    let mut stop = Stop::new()?;
    let mut cluster = LocalCluster::start(&LocalOptions {
        workers: workers as usize,
        device,
        state_dir: &state_dir,
        heartbeat_timeout_ms: 5_000,
        log_format,
        regroup_timeout_ms,
        max_restarts,
    })?;
    let mut client = Client::connect(&cluster.url, None).await?;
    let mut all_ok = true;
    for mut spec in specs {
        // workers.min too: a worker that is lost and restarted makes the job wait in
        // RECONFIGURING for it and re-form once, whole, as torchrun's fixed-size groups do.
        spec.workers.min = workers;
        spec.workers.max = workers;
        let job = client.submit(&spec).await?;
        if !json {
            eprintln!(
                "submitted {} ({}) to a local cluster of {workers} worker(s) at {}; logs in {}",
                job.id,
                spec.name,
                cluster.url,
                cluster.state_dir.join("logs").display()
            );
        }
        // Restart lines go to the watcher, which prints them above its progress bar.
        let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = follow_with_notices(&mut client, &job.id, !json, Some(notices_rx));
        tokio::pin!(watcher);
        let outcome = loop {
            tokio::select! {
                o = &mut watcher => break o?,
                // A supervisor's SIGTERM (or a closed terminal's SIGHUP) would otherwise end
                // this process alone and leave the coordinator and workers training. They
                // get the same signal's grace; dropping the cluster kills what is left.
                sig = stop.recv() => {
                    cluster.terminate(std::time::Duration::from_secs(5));
                    anyhow::bail!("stopped by {sig}; the local cluster was shut down");
                }
                // On this task, whose thread started the cluster: a restarted worker's
                // parent-death signal is tied to the thread that starts it.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    for event in cluster.supervise() {
                        if let Supervision::Fatal(msg) = event {
                            anyhow::bail!("{msg}");
                        }
                        let _ = notices.send(format!("graft: {event}"));
                    }
                }
            }
        };
        all_ok &= finish(&outcome, json);
        results.push((spec.name.clone(), outcome.job.metrics.clone()));
    }
    drop(cluster);
    Ok((all_ok, results))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Cmd::Data(DataCmd::Fetch {
            names,
            to,
            mirror,
            attempts,
        }) => {
            let to = match to {
                Some(t) => t.clone(),
                None => data::default_dir()?,
            };
            let opts = data::FetchOptions {
                names: names.clone(),
                to: to.clone(),
                mirror: mirror.clone(),
                attempts: *attempts,
                progress: true,
            };
            tokio::task::spawn_blocking(move || data::fetch(&opts))
                .await
                .context("graft data fetch")?
                .with_context(|| format!("graft data fetch into {}", to.display()))?;
            println!("{}", to.display());
            Ok(true)
        }
        Cmd::Data(DataCmd::Show {
            path,
            format,
            labels,
            x_key,
            y_key,
            label_column,
            header,
            channels,
            image_size,
        }) => {
            let opts = graft_transfer::data::files::FileOptions {
                format: *format,
                labels: labels.clone(),
                x_key: x_key.clone(),
                y_key: y_key.clone(),
                label_column: label_column.as_deref().map(data::label_column),
                header: *header,
                channels: *channels,
                image_size: *image_size,
            };
            print!("{}", data::show(path, &opts)?);
            Ok(true)
        }
        Cmd::Data(DataCmd::List { dir }) => {
            let dir = dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("../shared/data"));
            print!(
                "{}",
                data::list(&graft_transfer::data::location::search_path(&dir))
            );
            Ok(true)
        }
        Cmd::Submit { file, watch, json } => {
            let spec = jobfile::read(file)?;
            let mut c = connect(&cli).await?;
            let job = c.submit(&spec).await?;
            if !watch {
                if *json {
                    println!("{}", summary::json_line(&job, 0.0));
                } else {
                    println!("{}", job.id);
                }
                return Ok(true);
            }
            let o = follow(&mut c, &job.id, !json).await?;
            Ok(finish(&o, *json))
        }
        Cmd::List { json } => {
            let mut c = connect(&cli).await?;
            let jobs = c.list().await?;
            if *json {
                for j in &jobs {
                    println!("{}", summary::json_line(j, 0.0));
                }
            } else {
                println!(
                    "{:<18} {:<14} {:<22} {:<12} {:>12} {:>7}  reason",
                    "ID", "STATE", "NAME", "METHOD", "STEP", "WORKERS"
                );
                for j in &jobs {
                    // What a peer sent is shown escaped: a name or reason with control
                    // characters must not rewrite the terminal.
                    let name = j.spec.as_ref().map_or("", |s| s.name.as_str());
                    println!(
                        "{:<18} {:<14} {:<22} {:<12} {:>12} {:>7}  {}",
                        j.id.escape_debug().to_string(),
                        state_name(state_of(j)),
                        name.escape_debug().to_string(),
                        j.method.escape_debug().to_string(),
                        format!("{}/{}", j.step, j.total_steps),
                        j.workers,
                        j.reason.escape_debug()
                    );
                }
            }
            Ok(true)
        }
        Cmd::Status { id, json } => {
            let mut c = connect(&cli).await?;
            let job = c.get(id).await?;
            // Running time so far, or start to end for a finished job.
            let seconds = run_seconds(&job, graft_common::clock::now_ms());
            let o = Outcome {
                job,
                last_evaluation: None,
                seconds,
            };
            if *json {
                println!("{}", summary::json_line(&o.job, o.seconds));
            } else {
                print!("{}", summary::human(&o));
            }
            Ok(!matches!(
                state_of(&o.job),
                pb::JobState::Failed | pb::JobState::Cancelled
            ))
        }
        Cmd::Watch { id, json } => {
            let mut c = connect(&cli).await?;
            let o = follow(&mut c, id, !json).await?;
            Ok(finish(&o, *json))
        }
        Cmd::Cancel { id } => {
            let mut c = connect(&cli).await?;
            let job = c.cancel(id).await?;
            println!("{} {}", job.id, state_name(state_of(&job)));
            Ok(true)
        }
        Cmd::Delete { id } => {
            let mut c = connect(&cli).await?;
            let job = c.delete(id).await?;
            println!("{} deleted", job.id);
            Ok(true)
        }
        Cmd::Checkpoints { id, json } => {
            let mut c = connect(&cli).await?;
            for ck in c.checkpoints(id).await? {
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({"step": ck.step, "path": ck.path, "manifest": ck.manifest, "sha256": ck.sha256, "metrics": ck.metrics.iter().collect::<std::collections::BTreeMap<_, _>>()})
                    );
                } else {
                    println!(
                        "{:>8}  {}  sha256:{}",
                        ck.step,
                        ck.path,
                        &ck.sha256[..ck.sha256.len().min(16)]
                    );
                }
            }
            Ok(true)
        }
        Cmd::Export {
            id,
            out,
            step,
            format,
        } => {
            let mut c = connect(&cli).await?;
            let format = match format {
                ExportLayout::Graft => pb::ExportFormat::Graft,
                ExportLayout::Torch => pb::ExportFormat::Torch,
            };
            let (at, bytes) = c.export(id, *step, format).await?;
            std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} bytes, step {at})", out.display(), bytes.len());
            Ok(true)
        }
        Cmd::Local {
            file,
            workers,
            device,
            state_dir,
            max_restarts,
            regroup_timeout_ms,
            json,
        } => {
            let mut spec = jobfile::read(file)?;
            jobfile::resolve_paths(
                &mut spec,
                &jobfile::folder_of(file).context("the job file's folder")?,
            );
            let run = LocalRun {
                workers: *workers,
                device,
                state_dir: state_dir.clone().unwrap_or_else(|| run_dir("local")),
                json: *json,
                log_format: cli.log_format,
                max_restarts: *max_restarts,
                regroup_timeout_ms: *regroup_timeout_ms,
            };
            run_local_jobs(vec![spec], run).await.map(|(ok, _)| ok)
        }
        Cmd::Bench(BenchCmd::Methods {
            only,
            examples,
            out,
            workers,
            rewrite,
        }) => {
            let paths = graft_client::bench::Paths {
                examples: examples.clone(),
                markdown: out.join("RESULTS.md"),
                json: out.join("RESULTS.json"),
            };
            let (only, workers, rewrite) = (only.clone(), *workers, *rewrite);
            tokio::task::spawn_blocking(move || {
                graft_client::bench::run_methods(&paths, &only, workers, rewrite)
            })
            .await?
        }
        Cmd::Bench(BenchCmd::Allreduce {
            workers,
            bytes,
            algorithm,
            transport,
            iters,
            json,
        }) => {
            if let Some(t) = transport.iter().find(|t| *t != "tcp" && *t != "grpc") {
                anyhow::bail!("--transport: {t:?} is not tcp or grpc");
            }
            if !json {
                println!(
                    "{:<9} {:>9} {:>7} {:>12} {:>11} {:>11} {:>11} {:>13} {:>8}",
                    "algorithm",
                    "transport",
                    "workers",
                    "bytes",
                    "seconds",
                    "algbw GiB/s",
                    "busbw GiB/s",
                    "TCP GiB/s",
                    "bus/TCP"
                );
            }
            for alg in algorithm {
                if alg != "ring" && alg != "star" {
                    anyhow::bail!("--algorithm: {alg:?} is not ring or star");
                }
                let transports: &[String] = if alg == "star" {
                    &transport[..1]
                } else {
                    transport
                };
                for (tr, &w) in transports
                    .iter()
                    .flat_map(|t| workers.iter().map(move |w| (t, w)))
                {
                    if w < 2 {
                        anyhow::bail!("--workers: an all-reduce needs at least 2 processes");
                    }
                    for &b in bytes {
                        let n = iters.unwrap_or_else(|| graft_client::perf::iters_for(b));
                        let r = graft_client::perf::allreduce_once(alg, tr, w, b, n).await?;
                        if *json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            println!(
                                "{:<9} {:>9} {:>7} {:>12} {:>11.6} {:>11.3} {:>11.3} {:>13.3} {:>7.0}%",
                                r.algorithm,
                                r.transport,
                                r.workers,
                                r.bytes,
                                r.seconds,
                                r.algbw_gib_s,
                                r.busbw_gib_s,
                                r.baseline_gib_s,
                                100.0 * r.busbw_gib_s / r.baseline_gib_s
                            );
                        }
                    }
                }
            }
            Ok(true)
        }
        Cmd::Bench(BenchCmd::Train {
            workload,
            workers,
            device,
            steps,
            allreduce,
            ring_transport,
            json,
        }) => {
            let transport = if ring_transport == "grpc" {
                graft_transfer::spec::RingTransport::Grpc
            } else {
                graft_transfer::spec::RingTransport::Tcp
            };
            let r =
                graft_client::perf::train(workload, *workers, device, *steps, allreduce, transport)
                    .await?;
            if *json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} on {} worker(s) ({}, {}): {:.0} samples/s; per step (medians of {} steps, which need not add up): {:.2} ms; compute {:.2}, flatten {:.2}, all-reduce wait {:.2}, optimizer {:.2}, the rest (batches, reports) {:.2}",
                    r.workload,
                    r.workers,
                    r.device,
                    if r.allreduce == "ring" {
                        format!("ring over {}", r.ring_transport)
                    } else {
                        r.allreduce.clone()
                    },
                    r.samples_per_s,
                    r.steps,
                    r.step_ms,
                    r.compute_ms,
                    r.flatten_ms,
                    r.comm_ms,
                    r.optimizer_ms,
                    r.other_ms
                );
            }
            Ok(true)
        }
        Cmd::Bench(BenchCmd::Chaos {
            rounds,
            seed,
            no_coordinator_kills,
            json,
            write,
            out,
            rewrite,
            state_dir,
            data_dir,
        }) => {
            let opts = graft_client::chaos::Options {
                rounds: *rounds,
                seed: *seed,
                coordinator_kills: !no_coordinator_kills,
                json: *json,
                write: (*write || *rewrite).then(|| out.clone()),
                state_dir: state_dir.clone().unwrap_or_else(|| run_dir("chaos")),
                data_dir: data_dir.clone(),
                rewrite: *rewrite,
            };
            // On this task: the processes it starts die with the thread that started them.
            Ok(graft_client::chaos::run(&opts)
                .await
                .context("graft bench chaos")?)
        }
        Cmd::Demo {
            workers,
            state_dir,
            json,
        } => {
            let specs = graft_client::demo::jobs().map_err(anyhow::Error::msg)?;
            let run = LocalRun {
                workers: *workers,
                device: "cpu",
                state_dir: state_dir.clone().unwrap_or_else(|| run_dir("demo")),
                json: *json,
                log_format: cli.log_format,
                max_restarts: DEFAULT_MAX_RESTARTS,
                regroup_timeout_ms: None,
            };
            let (ok, results) = run_local_jobs(specs, run).await?;
            if !json {
                eprintln!("{}", graft_client::demo::side_by_side(&results));
            }
            Ok(ok)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    logging::init(cli.log_format, "warn");
    let code: u8 = match run(cli).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("graft: {}", msg.trim());
            2
        }
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(args: &[&str]) -> Option<String> {
        match parse(args) {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
                Some(e.to_string())
            }
        }
    }

    #[test]
    fn own_cluster_subcommands_refuse_the_remote_flags_by_name() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["graft", "local", "j.toml", "--coordinator", "http://h:7070"],
                "--coordinator",
            ),
            (&["graft", "--token", "t", "demo"], "--token"),
            (
                &["graft", "local", "j.toml", "--tls-ca", "ca.pem"],
                "--tls-ca",
            ),
            (
                &["graft", "bench", "train", "--coordinator", "http://h:7070"],
                "--coordinator",
            ),
            (
                &["graft", "--tls-ca", "ca.pem", "bench", "methods"],
                "--tls-ca",
            ),
        ];
        for (args, flag) in cases {
            let msg = refusal(args).unwrap_or_else(|| panic!("{args:?} was accepted"));
            assert!(
                msg.contains(flag) && msg.contains("its own coordinator"),
                "{msg}"
            );
        }
        // Without them, and for the subcommands that talk to a coordinator, all is well.
        assert_eq!(refusal(&["graft", "local", "j.toml"]), None);
        assert_eq!(refusal(&["graft", "demo", "--workers", "3"]), None);
        assert_eq!(
            refusal(&["graft", "status", "job-1", "--coordinator", "http://h:7070"]),
            None
        );
        assert_eq!(refusal(&["graft", "--token", "t", "list"]), None);
    }
}
