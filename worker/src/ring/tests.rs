//! The ring end to end: in-process ranks on loopback, each behind its own gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use graft_common::auth::Bearer;
use graft_common::group_key::GroupKey;
use graft_common::reduce::reduce_in_rank_order;
use graft_proto::v1 as pb;
use graft_proto::v1::collective_service_server::CollectiveService;
use graft_transfer::StepStats;
use graft_transfer::rng::SplitMix64;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::*;

/// W in-process ring members on loopback, each behind its own gRPC server, linked by gRPC
/// streams.
async fn rings(world: usize, generation: u64, timeout: Duration, chunk: usize) -> Vec<Ring> {
    rings_at(world, generation, timeout, chunk).await.0
}

/// [`rings`], and the members' collective addresses.
async fn rings_at(
    world: usize,
    generation: u64,
    timeout: Duration,
    chunk: usize,
) -> (Vec<Ring>, Vec<SocketAddr>) {
    rings_over(false, world, generation, timeout, chunk).await
}

/// Both transports, gRPC streams first.
const TRANSPORTS: [bool; 2] = [false, true];

/// W ring members linked over raw TCP (`tcp`) or gRPC streams, and their addresses.
async fn rings_over(
    tcp: bool,
    world: usize,
    generation: u64,
    timeout: Duration,
    chunk: usize,
) -> (Vec<Ring>, Vec<SocketAddr>) {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut boxes = Vec::new();
    for _ in 0..world {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        let inbox = Arc::new(Inbox::default());
        let api = CollectiveApi::new(inbox.clone(), timeout);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    graft_proto::v1::collective_service_server::CollectiveServiceServer::new(api),
                )
                .serve_with_incoming(split_incoming(listener, inbox.clone(), timeout)),
        );
        boxes.push(inbox);
    }
    let receivers: Vec<_> = boxes
        .iter()
        .enumerate()
        .map(|(r, inbox)| inbox.open("job", generation, gate(r, world, generation)))
        .collect();
    let mut out = Vec::new();
    for (r, rx) in receivers.into_iter().enumerate() {
        let right = (r + 1) % world;
        let addr = addrs[right].to_string();
        let client = if world < 2 {
            None
        } else if tcp {
            Some(RightLink::Tcp(
                TcpLink::connect(
                    &addr,
                    "job",
                    generation,
                    r as u32,
                    &key(generation),
                    timeout,
                    right,
                )
                .await
                .expect("link"),
            ))
        } else {
            Some(RightLink::from(
                connect(&addr, Bearer::new(None).expect("bearer"), timeout, right)
                    .await
                    .expect("connect"),
            ))
        };
        out.push(
            Ring::new(
                r,
                world,
                "job",
                generation,
                key(generation),
                client,
                addr,
                rx,
                timeout,
            )
            .with_chunk_bytes(chunk),
        );
    }
    (out, addrs)
}

fn key(generation: u64) -> GroupKey {
    GroupKey::derive(&[5; 32], "job", generation)
}

fn gate(rank: usize, world: usize, generation: u64) -> Gate {
    Gate {
        key: key(generation),
        left: ((rank + world - 1) % world) as u32,
    }
}

fn grad(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.normal() as f32).collect()
}

fn stats(r: usize) -> StepStats {
    StepStats {
        loss_sum: 0.5 + r as f64,
        samples: 3 + r as u64,
        correct: r as u64,
    }
}

/// Runs one step on every ring member with `plan` buckets of each rank's gradient.
async fn step(
    rings: &mut [Ring],
    step: u64,
    grads: &[Vec<f32>],
    plan: &[usize],
) -> Vec<Result<RingSum, RingError>> {
    let mut tasks = Vec::new();
    for (r, ring) in rings.iter_mut().enumerate() {
        let (btx, brx) = mpsc::unbounded_channel();
        let (stx, srx) = oneshot::channel();
        let mut at = 0;
        for &n in plan {
            btx.send(grads[r][at..at + n].to_vec()).expect("feed");
            at += n;
        }
        stx.send((stats(r), if r == 0 { 9 } else { 0 }))
            .expect("feed");
        let feed = StepFeed {
            buckets: brx,
            stats: srx,
        };
        tasks.push(ring.all_reduce(step, plan.len(), feed));
    }
    futures::future::join_all(tasks).await
}

/// The ring's sum equals the star's (rank-order) sum to float tolerance, for W = 2..6
/// and lengths that do not divide evenly, including lengths smaller than W, in one
/// bucket and in several; every rank gets bit-identical results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ring_sum_equals_star_sum() {
    for (tcp, world) in TRANSPORTS
        .into_iter()
        .flat_map(|t| (2..=6usize).map(move |w| (t, w)))
    {
        let mut rs = rings_over(tcp, world, 1, Duration::from_secs(10), 20)
            .await
            .0;
        let mut s = 0u64;
        for len in [1usize, world - 1, world, world + 1, 37, 1001, 4099] {
            for plan in [vec![len], vec![len / 3, len - len / 3]] {
                let plan: Vec<usize> = plan.into_iter().filter(|&n| n > 0).collect();
                let grads: Vec<Vec<f32>> =
                    (0..world).map(|r| grad(s * 31 + r as u64, len)).collect();
                let out = step(&mut rs, s, &grads, &plan).await;
                s += 1;
                let parts: Vec<(Vec<f32>, StepStats)> = grads
                    .iter()
                    .enumerate()
                    .map(|(r, g)| (g.clone(), stats(r)))
                    .collect();
                let star = reduce_in_rank_order(&parts);
                let first = out[0].as_ref().expect("rank 0").clone();
                for (r, o) in out.iter().enumerate() {
                    let o = o
                        .as_ref()
                        .unwrap_or_else(|e| panic!("W={world} len={len} rank {r}: {e}"));
                    assert_eq!(o, &first, "tcp={tcp} W={world} len={len}: rank {r} differs");
                }
                assert_eq!(first.stats, star.stats, "W={world} len={len}");
                assert_eq!(first.stop_at, 9);
                assert_eq!(first.sum.len(), len);
                let inv = 1.0 / star.stats.samples as f32;
                for (i, (a, b)) in first.sum.iter().zip(&star.grad).enumerate() {
                    let a = a * inv;
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "W={world} len={len} element {i}: ring {a} star {b}"
                    );
                }
            }
        }
    }
}

/// A rank that never joins the step fails it on its neighbours within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_neighbour_fails_the_step_within_the_timeout() {
    for tcp in TRANSPORTS {
        let timeout = Duration::from_millis(400);
        let mut rs = rings_over(tcp, 3, 1, timeout, 1 << 20).await.0;
        let grads: Vec<Vec<f32>> = (0..3).map(|r| grad(r, 100)).collect();
        let started = std::time::Instant::now();
        let (live, _silent) = rs.split_at_mut(2);
        let out = step(live, 0, &grads, &[100]).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "tcp={tcp}: {:?}",
            started.elapsed()
        );
        for (r, o) in out.iter().enumerate() {
            let e = o.as_ref().expect_err("must fail").to_string();
            assert!(e.contains("step 0"), "tcp={tcp} rank {r}: {e}");
        }
    }
}

/// Over raw TCP, a member that goes away fails its neighbours' next step at once (the
/// connection ends), not at the collective timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_tcp_link_fails_the_step_at_once() {
    let timeout = Duration::from_secs(20);
    let mut rs = rings_over(true, 2, 1, timeout, 64).await.0;
    let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 1000)).collect();
    for o in step(&mut rs, 0, &grads, &[1000]).await {
        o.expect("step 0");
    }
    drop(rs.pop());
    let started = std::time::Instant::now();
    let out = step(&mut rs, 1, &grads, &[1000]).await;
    let e = out[0].as_ref().expect_err("rank 0 fails").to_string();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}: {e}",
        started.elapsed()
    );
    assert!(e.contains("step 1"), "{e}");
}

/// Over raw TCP, a link that does not prove the generation's key, or comes from another
/// rank than the left neighbour, is refused at connect time with the reason, and the ring's
/// own links go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_tcp_links_are_refused_at_connect_and_the_steps_go_on() {
    let timeout = Duration::from_secs(5);
    let (mut rs, addrs) = rings_over(true, 2, 1, timeout, 1 << 20).await;
    let target = addrs[1].to_string();
    for (what, k, from, says) in [
        (
            "another group's key",
            GroupKey::derive(&[6; 32], "job", 1),
            0u32,
            "does not prove",
        ),
        ("the next generation's key", key(2), 0, "does not prove"),
        ("not the left neighbour", key(1), 1, "only from rank 0"),
    ] {
        let e = TcpLink::connect(&target, "job", 1, from, &k, timeout, 1)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        assert!(e.contains(says), "{what}: {e}");
    }
    let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 100)).collect();
    for s in 0..2 {
        for o in step(&mut rs, s, &grads, &[100]).await {
            o.expect("the ring's own links");
        }
    }
}

/// A neighbour that takes the whole of a step but never answers it: a process stopped,
/// or cut off, just after the last chunk arrived.
struct NeverAnswers(CollectiveApi);

#[tonic::async_trait]
impl CollectiveService for NeverAnswers {
    type FetchReplicaStream = <CollectiveApi as CollectiveService>::FetchReplicaStream;

    async fn fetch_replica(
        &self,
        req: Request<pb::FetchReplicaRequest>,
    ) -> Result<Response<Self::FetchReplicaStream>, Status> {
        self.0.fetch_replica(req).await
    }

    async fn probe(
        &self,
        req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        self.0.probe(req).await
    }

    async fn ring(
        &self,
        req: Request<Streaming<pb::RingMessage>>,
    ) -> Result<Response<pb::RingAck>, Status> {
        let _ = self.0.ring(req).await;
        std::future::pending().await
    }
}

/// A rank whose right neighbour never confirms the step gives up as soon as the job is
/// stopped (the coordinator re-forms the group without the neighbour), not after the
/// collective timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_job_does_not_wait_for_a_confirmation_that_never_comes() {
    use graft_proto::v1::collective_service_server::CollectiveServiceServer;
    let timeout = Duration::from_secs(20);
    let mut addrs = Vec::new();
    let mut inboxes = Vec::new();
    for r in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(listener.local_addr().expect("addr").to_string());
        let inbox = Arc::new(Inbox::default());
        let api = CollectiveApi::new(inbox.clone(), timeout);
        let mut builder = tonic::transport::Server::builder();
        // Rank 1's server never answers rank 0's stream.
        let router = if r == 0 {
            builder.add_service(CollectiveServiceServer::new(api))
        } else {
            builder.add_service(CollectiveServiceServer::new(NeverAnswers(api)))
        };
        tokio::spawn(router.serve_with_incoming(graft_common::net::nodelay_incoming(listener)));
        inboxes.push(inbox);
    }
    let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut rs = Vec::new();
    for (r, inbox) in inboxes.iter().enumerate() {
        let right = 1 - r;
        let client = connect(
            &addrs[right],
            Bearer::new(None).expect("bearer"),
            timeout,
            right,
        )
        .await
        .expect("connect");
        rs.push(
            Ring::new(
                r,
                2,
                "job",
                1,
                key(1),
                Some(RightLink::from(client)),
                addrs[right].clone(),
                inbox.open("job", 1, gate(r, 2, 1)),
                timeout,
            )
            .with_abort(abort.clone()),
        );
    }
    let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 100)).collect();
    let a = abort.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let started = std::time::Instant::now();
    let out = step(&mut rs, 0, &grads, &[100]).await;
    assert!(out[1].is_ok(), "rank 1's neighbour answered: {:?}", out[1]);
    let e = out[0].as_ref().expect_err("rank 0 gives up").to_string();
    assert!(e.contains("the job was stopped"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A stream of another step is refused, naming both steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_of_another_step_is_refused() {
    for tcp in TRANSPORTS {
        another_step_is_refused(tcp).await;
    }
}

async fn another_step_is_refused(tcp: bool) {
    let mut rs = rings_over(tcp, 2, 1, Duration::from_secs(2), 1 << 20)
        .await
        .0;
    let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 10)).collect();
    let (a, b) = rs.split_at_mut(1);
    let feed = |r: usize| {
        let (btx, brx) = mpsc::unbounded_channel();
        let (stx, srx) = oneshot::channel();
        btx.send(grads[r].clone()).expect("feed");
        stx.send((stats(r), 0)).expect("feed");
        StepFeed {
            buckets: brx,
            stats: srx,
        }
    };
    let (ra, rb) = tokio::join!(
        a[0].all_reduce(4, 1, feed(0)),
        b[0].all_reduce(5, 1, feed(1))
    );
    let ea = ra.expect_err("rank 0 refuses").to_string();
    let eb = rb.expect_err("rank 1 refuses").to_string();
    assert!(
        ea.contains("step 5") || eb.contains("step 4"),
        "rank 0: {ea}; rank 1: {eb}"
    );
}

/// #8 finding 1: a stream that does not prove the group's key, that another rank than the
/// left neighbour sends, or that repeats a step already taken is refused before the step
/// reads any of it, and the steps go on to the same sums as an untouched ring's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_ring_streams_are_refused_and_the_steps_go_on() {
    let timeout = Duration::from_secs(10);
    let (mut rs, addrs) = rings_at(2, 1, timeout, 1 << 20).await;
    let mut calm = rings(2, 1, timeout, 1 << 20).await;
    let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 100)).collect();
    for o in step(&mut rs, 0, &grads, &[100]).await {
        o.expect("step 0");
    }
    let mut client = connect(
        &addrs[1].to_string(),
        Bearer::new(None).expect("bearer"),
        timeout,
        1,
    )
    .await
    .expect("connect");
    let proved = |key: &GroupKey, step: u64, from_rank: u32| {
        let nonce = [1u8; graft_common::group_key::NONCE_BYTES];
        pb::RingMessage {
            job_id: "job".into(),
            generation: 1,
            step,
            from_rank,
            nonce: nonce.to_vec(),
            proof: key.prove(
                graft_common::group_key::StreamClaim {
                    job: "job",
                    generation: 1,
                    step,
                    from_rank,
                },
                &nonce,
            ),
            ..Default::default()
        }
    };
    let forged = [
        // The finding as it was sent: no proof at all.
        pb::RingMessage {
            job_id: "job".into(),
            generation: 1,
            step: 1_000_000_000,
            from_rank: 999,
            ..Default::default()
        },
        pb::RingMessage {
            job_id: "job".into(),
            generation: 1,
            step: 1,
            from_rank: 0,
            ..Default::default()
        },
        // Another group's key.
        proved(&GroupKey::derive(&[6; 32], "job", 1), 1, 0),
        proved(&key(2), 1, 0),
        // The right key, but not from the left neighbour.
        proved(&key(1), 1, 1),
        // The right key and sender, at a step already taken.
        proved(&key(1), 0, 0),
    ];
    for (i, m) in forged.into_iter().enumerate() {
        let e = client
            .ring(tokio_stream::iter(vec![m]))
            .await
            .expect_err("a forged stream");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "case {i}: {e:?}");
    }
    for s in 1..3 {
        let got = step(&mut rs, s, &grads, &[100]).await;
        let want = step(&mut calm, s, &grads, &[100]).await;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g.as_ref().expect("step after the forgeries"),
                w.as_ref().expect("calm step")
            );
        }
    }
}

/// A frame an insider (a sender that holds the group's key) might send: any bucket, pass,
/// step, offset, length, checksum or stats.
fn arbitrary_frame() -> impl proptest::strategy::Strategy<Value = pb::RingMessage> {
    use proptest::prelude::*;
    let chunk = (
        0u64..300,
        0u64..300,
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
        0u64..3,
        0u64..3,
    )
        .prop_map(
            |(offset, total_len, data, good_crc, step, generation)| pb::TensorChunk {
                offset,
                total_len,
                step,
                generation,
                crc32: if good_crc {
                    graft_proto::chunk::checksum(&data)
                } else {
                    7
                },
                data: data.into(),
            },
        );
    let stats = (0u32..3, any::<f64>(), any::<u64>(), any::<u64>()).prop_map(
        |(rank, loss_sum, samples, correct)| pb::RankStats {
            rank,
            stats: Some(pb::StepStats {
                loss_sum,
                samples,
                correct,
            }),
            stop_at: 0,
        },
    );
    (
        0u32..3,
        0u32..3,
        0u32..3,
        0i32..4,
        prop::option::of(chunk),
        prop::option::of(stats),
        0u64..3,
        0u64..3,
    )
        .prop_map(
            |(from_rank, bucket, segment, phase, chunk, stats, step, generation)| pb::RingMessage {
                from_rank,
                bucket,
                segment,
                phase,
                chunk,
                stats,
                step,
                generation,
                ..Default::default()
            },
        )
}

proptest::proptest! {
    // Each case runs a real step with a timeout: 24 in CI, PROPTEST_CASES for a long run.
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// The ring's frame decoder against a sender that proves the key but sends anything:
    /// the step ends with an error naming what was wrong (or, for a stream that happens to
    /// be right, with a sum), never a panic or a hang past the timeout.
    #[test]
    fn an_insiders_arbitrary_frames_end_the_step_cleanly(
        frames in proptest::collection::vec(arbitrary_frame(), 1..8),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let timeout = Duration::from_millis(300);
            let (mut rs, addrs) = rings_at(2, 1, timeout, 1 << 20).await;
            let mut receiver = rs.pop().expect("rank 1");
            let mut client = connect(
                &addrs[1].to_string(),
                Bearer::new(None).expect("bearer"),
                timeout,
                1,
            )
            .await
            .expect("connect");
            let mut frames = frames;
            let nonce = [9u8; graft_common::group_key::NONCE_BYTES];
            frames[0].job_id = "job".into();
            frames[0].from_rank = 0;
            frames[0].step = 0;
            frames[0].generation = 1;
            frames[0].nonce = nonce.to_vec();
            frames[0].proof = key(1).prove(
                graft_common::group_key::StreamClaim {
                    job: "job",
                    generation: 1,
                    step: 0,
                    from_rank: 0,
                },
                &nonce,
            );
            let send = tokio::spawn(async move { client.ring(tokio_stream::iter(frames)).await });
            let (btx, brx) = mpsc::unbounded_channel();
            let (stx, srx) = oneshot::channel();
            btx.send(grad(1, 100)).expect("feed");
            stx.send((stats(1), 0)).expect("feed");
            let started = std::time::Instant::now();
            let out = receiver
                .all_reduce(0, 1, StepFeed { buckets: brx, stats: srx })
                .await;
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
            if let Err(e) = &out {
                assert!(e.to_string().contains("step 0"), "{e}");
            }
            let _ = send.await;
        });
    }
}
