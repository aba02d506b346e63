//! `graft-worker bench-peer` (hidden): one of the W processes of `graft bench allreduce`.
//! It sums a gradient of S bytes with this crate's ring (over raw TCP links or gRPC streams
//! to its own CollectiveService, which share one port) or through a real coordinator's star, then streams raw bytes round the same ring over plain
//! TCP, every link busy at once: the transport's bound, against which the ring is read.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use graft_common::bench::PeerReport;
use graft_proto::v1 as pb;
use graft_transfer::StepStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hidden `graft-worker bench-peer`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Index of this process in the ring (0..workers).
    #[arg(long)]
    pub rank: usize,
    /// Processes.
    #[arg(long)]
    pub workers: usize,
    /// Gradient bytes.
    #[arg(long)]
    pub bytes: u64,
    /// Timed iterations (one more runs untimed first).
    #[arg(long)]
    pub iters: usize,
    /// `ring` or `star`.
    #[arg(long)]
    pub algorithm: String,
    /// The ring's transport: `tcp` or `grpc`.
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// Where the peers leave their addresses.
    #[arg(long)]
    pub dir: PathBuf,
    /// The coordinator (star).
    #[arg(long)]
    pub coordinator: Option<String>,
}

/// Reads every peer's addresses once all have written them.
async fn peer_addrs(dir: &Path, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut out = Vec::new();
        for r in 0..n {
            match std::fs::read_to_string(dir.join(format!("peer-{r}"))) {
                Ok(t) => {
                    let (a, b) = t
                        .trim()
                        .split_once(' ')
                        .with_context(|| format!("peer file {r}: {t:?}"))?;
                    out.push((a.to_string(), b.to_string()));
                }
                Err(_) => break,
            }
        }
        if out.len() == n {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} peers started within 60 s", out.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One peer's part: the all-reduce, then the raw TCP ring; one JSON line on stdout.
///
/// # Errors
/// When a peer cannot be reached or the reduction fails.
pub async fn run_peer(a: PeerArgs) -> anyhow::Result<()> {
    use crate::ring::{
        CollectiveApi, Inbox, RING_WINDOW, RightLink, Ring, StepFeed, TcpLink, connect,
    };
    let (w, rank) = (a.workers, a.rank);
    let n = (a.bytes / 4) as usize;
    let timeout = Duration::from_secs(120);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inbox = std::sync::Arc::new(Inbox::default());
    // The benchmark's peers share a fixed key: they run no job, and only prove the ring's
    // per-stream check costs what it costs in a job.
    let key = graft_common::group_key::GroupKey::derive(&[0; 32], "bench", 1);
    let rx = inbox.open(
        "bench",
        1,
        crate::ring::Gate {
            key: key.clone(),
            left: ((rank + w - 1) % w) as u32,
        },
    );
    let probe_key = graft_common::group_key::random().map_err(|e| anyhow::anyhow!(e))?;
    let svc = graft_proto::v1::collective_service_server::CollectiveServiceServer::new(
        CollectiveApi::new(inbox.clone(), timeout).with_probe_key(probe_key),
    )
    .max_decoding_message_size(graft_proto::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(graft_proto::MAX_MESSAGE_BYTES);
    let grpc_addr = grpc.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(RING_WINDOW)
            .initial_connection_window_size(RING_WINDOW)
            .max_frame_size(Some(1 << 20))
            .add_service(svc)
            .serve_with_incoming(crate::ring::split_incoming(grpc, inbox.clone(), timeout)),
    );
    let tmp = a.dir.join(format!(".peer-{rank}"));
    std::fs::write(&tmp, format!("{grpc_addr} {}", tcp.local_addr()?))?;
    std::fs::rename(&tmp, a.dir.join(format!("peer-{rank}")))?;
    let addrs = peer_addrs(&a.dir, w).await?;
    let right = (rank + 1) % w;
    let grad: Vec<f32> = (0..n).map(|i| ((i + rank) % 7) as f32 * 0.25).collect();
    let mut reduce_s = Vec::new();

    if a.algorithm == "ring" {
        let client = if w < 2 {
            None
        } else if a.transport == "grpc" {
            Some(RightLink::from(
                connect(
                    &addrs[right].0,
                    graft_common::auth::Bearer::new(None)?,
                    timeout,
                    right,
                )
                .await?,
            ))
        } else {
            Some(RightLink::Tcp(
                TcpLink::connect(
                    &addrs[right].0,
                    "bench",
                    1,
                    rank as u32,
                    &key,
                    timeout,
                    right,
                )
                .await?,
            ))
        };
        let mut ring = Ring::new(
            rank,
            w,
            "bench",
            1,
            key,
            client,
            addrs[right].0.clone(),
            rx,
            timeout,
        );
        let mut spare = Vec::new();
        for i in 0..=a.iters {
            let (btx, brx) = tokio::sync::mpsc::unbounded_channel();
            let (stx, srx) = tokio::sync::oneshot::channel();
            // Last iteration's sum holds this one's gradient: a fresh gradient-sized
            // allocation per iteration would time the kernel zeroing its pages.
            let mut g = std::mem::take(&mut spare);
            g.clear();
            g.extend_from_slice(&grad);
            let started = Instant::now();
            let _ = btx.send(g);
            let _ = stx.send((
                StepStats {
                    loss_sum: 0.0,
                    samples: 1,
                    correct: 0,
                },
                0,
            ));
            let feed = StepFeed {
                buckets: brx,
                stats: srx,
            };
            let sum = ring.all_reduce(i as u64, 1, feed).await?;
            if i > 0 {
                reduce_s.push(started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                sum.sum.len() == n,
                "the ring returned {} values",
                sum.sum.len()
            );
            spare = sum.sum;
        }
    } else {
        reduce_s = star_peer(&a, &grad, &grpc_addr.to_string(), probe_key).await?;
    }

    // Raw TCP round the same ring: send S bytes right while receiving S bytes from the left.
    let accept = tokio::spawn(async move { tcp.accept().await.map(|(s, _)| s) });
    let mut out = loop {
        match tokio::net::TcpStream::connect(&addrs[right].1).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    out.set_nodelay(true)?;
    let mut inp = accept.await??;
    let block = vec![7u8; 1 << 20];
    let mut tcp_s = Vec::new();
    for i in 0..=a.iters {
        let total = a.bytes as usize;
        let started = Instant::now();
        let send = async {
            let mut left = total;
            while left > 0 {
                let k = left.min(block.len());
                out.write_all(&block[..k]).await?;
                left -= k;
            }
            out.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        let recv = async {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = total;
            while left > 0 {
                let k = left.min(buf.len());
                let got = inp.read(&mut buf[..k]).await?;
                if got == 0 {
                    return Err(std::io::Error::other("the left neighbour closed"));
                }
                left -= got;
            }
            Ok(())
        };
        let (s, r) = tokio::join!(send, recv);
        s?;
        r?;
        if i > 0 {
            tcp_s.push(started.elapsed().as_secs_f64());
        }
    }
    println!(
        "{}",
        serde_json::to_string(&PeerReport {
            rank,
            reduce_s,
            tcp_s
        })?
    );
    Ok(())
}

/// The star: this peer registers with the coordinator as a worker of the bench job and
/// reduces through its ReduceGradients, step after step.
async fn star_peer(
    a: &PeerArgs,
    grad: &[f32],
    collective: &str,
    probe_key: [u8; graft_common::group_key::KEY_BYTES],
) -> anyhow::Result<Vec<f64>> {
    let url = a
        .coordinator
        .clone()
        .context("the star needs --coordinator")?;
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let bearer = graft_common::auth::Bearer::new(None)?;
    let mut c = crate::rpc::cluster(channel.clone(), bearer.clone());
    let reg = c
        .register(pb::RegisterRequest {
            protocol_version: graft_proto::PROTOCOL_VERSION,
            name: format!("bench-{}", a.rank),
            device: "cpu".into(),
            // The coordinator admits only a worker that answers its probe here.
            collective_addr: collective.to_string(),
            held: None,
            probe_key: probe_key.to_vec(),
        })
        .await?
        .into_inner();
    let worker = reg.worker_id;
    let mut c = crate::rpc::cluster(channel, bearer.with_worker_secret(&reg.worker_secret)?);
    let assignment = loop {
        let r = c
            .next_assignment(pb::NextAssignmentRequest {
                worker_id: worker.clone(),
                held: None,
            })
            .await?
            .into_inner();
        if let Some(x) = r.assignment {
            break x;
        }
    };
    let (rank, world) = (assignment.rank, assignment.world_size);
    let stage = assignment
        .stages
        .first()
        .and_then(|s| s.streams.first())
        .context("bench job without a stream")?;
    let samples = graft_transfer::shard::local_part(stage.batch as usize, world, rank).len();
    let mut times = Vec::new();
    for step in 0..=a.iters as u64 {
        let started = Instant::now();
        let r = crate::rpc::reduce(
            &mut c,
            &worker,
            &assignment.job_id,
            rank,
            step,
            assignment.generation,
            grad,
            StepStats {
                loss_sum: 0.0,
                samples: samples as u64,
                correct: 0,
            },
            None,
        )
        .await?;
        if step > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            r.mean.len() == grad.len(),
            "the star returned {} values",
            r.mean.len()
        );
    }
    Ok(times)
}
