//! Calls from outside a group, as an attacker would send them with stubs generated from
//! `proto/` and no tokens configured: none may fail a job or change its result.

use std::time::Duration;

use graft_proto::v1 as pb;
use graft_tests::{Cluster, last_json, log_field, show, small_mnist_job, wait_for};

/// #8 finding 2: a `LeaveJob`, `ReportStep` or `Heartbeat` that names a real worker but
/// does not carry the secret its `Register` returned is refused with PERMISSION_DENIED and
/// changes nothing: the job ends bit-identical to an untouched run.
#[test]
fn calls_that_name_a_worker_without_its_secret_are_refused_and_change_nothing() {
    let job = small_mnist_job("target", 2, 300, "ring");
    let untouched = {
        let c = Cluster::start(2, 5_000);
        let r = c.complete("calm.toml", &job);
        c.export_params(r["job"].as_str().expect("id"))
    };
    let c = Cluster::start(2, 5_000);
    let path = c.job_file("target.toml", &job);
    let out = c.graft(&["submit", path.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let id = last_json(&out)["job"].as_str().expect("id").to_string();
    wait_for(Duration::from_secs(60), || {
        (c.status(&id)["steps"].as_u64().unwrap_or(0) >= 20).then_some(())
    })
    .expect("job going");
    let victims: Vec<String> = (0..2)
        .map(|i| log_field(&c.log(&format!("worker-{i}")), "registered", "worker"))
        .collect();
    assert!(
        victims.iter().all(|v| v.len() >= 18 && v.starts_with("w-")),
        "worker ids are long random ones: {victims:?}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut cl = pb::cluster_service_client::ClusterServiceClient::connect(c.url.clone())
            .await
            .expect("connect");
        for victim in &victims {
            for secret in [None, Some("0123456789abcdef0123456789abcdef")] {
                let mut leave = tonic::Request::new(pb::LeaveJobRequest {
                    worker_id: victim.clone(),
                    job_id: id.clone(),
                    reason: "forged".into(),
                    graceful: false,
                });
                let mut report = tonic::Request::new(pb::ReportStepRequest {
                    worker_id: victim.clone(),
                    job_id: id.clone(),
                    rank: 0,
                    step: 1,
                    fingerprint: "forged".into(),
                    generation: 1,
                    stats: None,
                    times: None,
                });
                let mut beat = tonic::Request::new(pb::HeartbeatRequest {
                    worker_id: victim.clone(),
                    protocol_version: graft_proto::PROTOCOL_VERSION,
                    job_id: String::new(),
                    step: 0,
                    generation: 0,
                });
                if let Some(s) = secret {
                    for md in [
                        leave.metadata_mut(),
                        report.metadata_mut(),
                        beat.metadata_mut(),
                    ] {
                        md.insert("graft-worker-secret", s.parse().expect("ascii"));
                    }
                }
                let e = cl.leave_job(leave).await.expect_err("a forged leave");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                let e = cl.report_step(report).await.expect_err("a forged report");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                let e = cl.heartbeat(beat).await.expect_err("a forged heartbeat");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                // The streams a worker sends to the coordinator: refused before any of
                // their chunks is read.
                let mut reduce =
                    tonic::Request::new(tokio_stream::iter(vec![pb::ReduceGradientsRequest {
                        worker_id: victim.clone(),
                        job_id: id.clone(),
                        rank: 0,
                        chunk: Some(pb::TensorChunk {
                            offset: 0,
                            total_len: 1,
                            step: 1,
                            generation: 1,
                            crc32: 0,
                            data: vec![0; 4].into(),
                        }),
                        stats: None,
                        times: None,
                    }]));
                let mut upload = tonic::Request::new(tokio_stream::iter(vec![pb::StateChunk {
                    worker_id: victim.clone(),
                    job_id: id.clone(),
                    step: 1,
                    r#final: true,
                    ..Default::default()
                }]));
                if let Some(s) = secret {
                    for md in [reduce.metadata_mut(), upload.metadata_mut()] {
                        md.insert("graft-worker-secret", s.parse().expect("ascii"));
                    }
                }
                let e = cl
                    .reduce_gradients(reduce)
                    .await
                    .expect_err("a forged reduce");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                let e = cl.upload_state(upload).await.expect_err("a forged upload");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            }
        }
        // #8 finding 1, as it was sent, and with every rank and a few steps: a ring stream
        // that does not prove the group's key reaches no step.
        for w in 0..2 {
            let addr = log_field(
                &c.log(&format!("worker-{w}")),
                "serving health and the ring",
                "addr",
            );
            let mut ring = pb::collective_service_client::CollectiveServiceClient::connect(
                format!("http://{addr}"),
            )
            .await
            .expect("connect to a worker");
            for (from_rank, step) in [(999, 1_000_000_000), (0, 25), (1, 26), (0, 1 << 40)] {
                let forged = pb::RingMessage {
                    job_id: id.clone(),
                    from_rank,
                    step,
                    generation: 1,
                    nonce: vec![7; 16],
                    proof: vec![0; 32],
                    ..Default::default()
                };
                let e = ring
                    .ring(tokio_stream::iter(vec![forged]))
                    .await
                    .expect_err("a forged ring stream");
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            }
            // The same over the raw-TCP data plane (the jobs' default), written byte by byte
            // as docs/protocol.md lays it out: a link that cannot answer the challenge with
            // the group key is refused with the reason, and no frame of it is read.
            for from_rank in [0u32, 1, 7] {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut link = tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect to a worker's port");
                let mut hello = b"GRAFTRNG\x01".to_vec();
                hello.extend_from_slice(&(id.len() as u16).to_le_bytes());
                hello.extend_from_slice(id.as_bytes());
                hello.extend_from_slice(&1u64.to_le_bytes());
                hello.extend_from_slice(&from_rank.to_le_bytes());
                link.write_all(&hello).await.expect("hello");
                let mut challenge = [0u8; 16];
                link.read_exact(&mut challenge).await.expect("a challenge");
                link.write_all(&[0u8; 32]).await.expect("a forged proof");
                let mut verdict = Vec::new();
                link.read_to_end(&mut verdict).await.expect("the verdict");
                assert_eq!(verdict.first(), Some(&1), "refused: {verdict:?}");
                let reason = String::from_utf8_lossy(verdict.get(3..).unwrap_or_default());
                assert!(
                    reason.contains("does not prove") || reason.contains("comes only from rank"),
                    "{reason}"
                );
            }
        }
    });
    let r = wait_for(Duration::from_secs(120), || {
        let s = c.status(&id);
        matches!(s["state"].as_str(), Some("COMPLETED" | "FAILED")).then_some(s)
    })
    .expect("job ended");
    assert_eq!(r["state"], "COMPLETED", "{r}");
    assert_eq!(r["generation"], 1, "no forged call changed the group: {r}");
    let touched = c.export_params(&id);
    for (name, (_, a)) in &untouched {
        assert_eq!(&touched[name].1, a, "{name} differs from the untouched run");
    }
}

/// A connected `ClusterService` client and a runtime to drive it.
fn cluster_client(
    url: &str,
) -> (
    tokio::runtime::Runtime,
    pb::cluster_service_client::ClusterServiceClient<tonic::transport::Channel>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cl = rt
        .block_on(pb::cluster_service_client::ClusterServiceClient::connect(
            url.to_string(),
        ))
        .expect("connect");
    (rt, cl)
}

fn register(name: &str, device: &str, addr: &str, key: &[u8]) -> pb::RegisterRequest {
    pb::RegisterRequest {
        protocol_version: graft_proto::PROTOCOL_VERSION,
        name: name.into(),
        device: device.into(),
        collective_addr: addr.into(),
        held: None,
        probe_key: key.to_vec(),
    }
}

/// #8 admission and bounds: a `Register` whose address serves no ring, or serves another
/// worker's, is not admitted; names, devices and addresses out of bounds are refused naming
/// the field; a job no cluster of `max_workers` could run, or named with control
/// characters or megabytes, is refused at submission. No fake attracts a job: the real
/// worker runs it alone.
#[test]
fn fakes_are_not_admitted_and_names_addresses_devices_and_sizes_are_bounded() {
    let c = Cluster::start_with_args(1, 5_000, &["--max-workers", "4"]);
    wait_for(Duration::from_secs(30), || {
        c.log("worker-0").contains("registered").then_some(())
    })
    .expect("the worker registers");
    let real = log_field(&c.log("worker-0"), "serving health and the ring", "addr");
    let (rt, mut cl) = cluster_client(&c.url);
    let key = [3u8; 32];
    let nobody = format!("127.0.0.1:{}", graft_tests::free_port());
    for (req, code, says) in [
        // Nobody serves there.
        (
            register("fake", "cpu", &nobody, &key),
            tonic::Code::Unavailable,
            "cannot reach",
        ),
        // A real worker serves there, but it did not draw this key.
        (
            register("fake", "cpu", &real, &key),
            tonic::Code::PermissionDenied,
            "another process",
        ),
        (
            register(&"x".repeat(4 << 20), "cpu", &real, &key),
            tonic::Code::InvalidArgument,
            "name",
        ),
        (
            register("a\u{1b}[2Jb", "cpu", &real, &key),
            tonic::Code::InvalidArgument,
            "control character",
        ),
        (
            register("fake", "cuda:99999", &real, &key),
            tonic::Code::InvalidArgument,
            "device",
        ),
        (
            register("fake", "cpu", "127.0.0.1:99999", &key),
            tonic::Code::InvalidArgument,
            "collective_addr",
        ),
        (
            register("fake", "cpu", "", &key),
            tonic::Code::InvalidArgument,
            "collective_addr",
        ),
        (
            register("fake", "cpu", &real, &[]),
            tonic::Code::InvalidArgument,
            "probe_key",
        ),
    ] {
        let e = rt.block_on(cl.register(req)).expect_err("not admitted");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "{says}: {e:?}");
        assert!(
            e.message().len() < 1_000,
            "the refusal does not echo megabytes"
        );
    }
    // A step report that says nothing is refused, member or not.
    let e = rt
        .block_on(cl.report_step(pb::ReportStepRequest {
            worker_id: "w-nobody".into(),
            job_id: "job-nothing".into(),
            ..Default::default()
        }))
        .expect_err("an empty report");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let base = small_mnist_job("bounded", 1, 20, "ring");
    for (job, field) in [
        (
            base.replace("min = 1", "min = 5")
                .replace("max = 1", "max = 5"),
            "max_workers",
        ),
        (
            base.replace("name = \"bounded\"", "name = \"a\\u0000b\""),
            "name",
        ),
        (
            base.replace(
                "name = \"bounded\"",
                &format!("name = \"{}\"", "n".repeat(5 << 20)),
            ),
            "name",
        ),
    ] {
        let path = c.job_file("refused.toml", &job);
        let out = c.graft(&["submit", path.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
        assert!(err.len() < 10_000, "the refusal does not echo the name");
    }
    let out = c.graft(&["list", "--json"]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "no job was created: {}",
        show(&out)
    );
    // The one real worker runs a job; no fake was admitted to share it.
    let r = c.complete("ok.toml", &base);
    assert_eq!(r["state"], "COMPLETED", "{r}");
    assert_eq!(r["workers"], 1, "{r}");
}

/// #8 finding 5: `graft delete` removes a finished job with its files (and refuses a running
/// one); ids are never those of a deleted job, and `graft list` pages through many jobs.
#[test]
fn a_finished_job_can_be_deleted_and_its_id_is_never_reused() {
    let c = Cluster::start(1, 5_000);
    let first = c.complete("one.toml", &small_mnist_job("one", 1, 10, "ring"));
    let id = first["job"].as_str().expect("id").to_string();
    let dir = c.state.join("jobs").join(&id);
    assert!(dir.join("checkpoints").is_dir(), "{}", dir.display());
    let long = c.job_file("long.toml", &small_mnist_job("long", 1, 1_000_000, "ring"));
    let out = c.graft(&["submit", long.to_str().expect("utf-8"), "--json"]);
    let running = last_json(&out)["job"].as_str().expect("id").to_string();
    let out = c.graft(&["delete", &running]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancel it first"),
        "{}",
        show(&out)
    );
    assert!(c.graft(&["cancel", &running]).status.success());

    let out = c.graft(&["delete", &id]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!dir.exists(), "the job's files are gone");
    let out = c.graft(&["status", &id]);
    assert!(
        !out.status.success(),
        "a deleted job is unknown: {}",
        show(&out)
    );
    let out = c.graft(&["list", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !listed.contains(&id) && listed.contains(&running),
        "{listed}"
    );
    let again = c.complete("two.toml", &small_mnist_job("two", 1, 10, "ring"));
    let again = again["job"].as_str().expect("id");
    assert_ne!(again, id);
    assert!(
        again.starts_with("job-3-") && again.len() == "job-3-".len() + 8,
        "job-N-<8 random characters>: {again}"
    );
}

/// #8 finding 6: `graft watch` follows a job across a coordinator restart to its end.
#[test]
fn watch_follows_a_job_across_a_coordinator_restart() {
    let mut c = Cluster::start_on_fixed_port(1, 60_000);
    let path = c.job_file("long.toml", &small_mnist_job("across", 1, 600, "ring"));
    let out = c.graft(&["submit", path.to_str().expect("utf-8"), "--json"]);
    let id = last_json(&out)["job"].as_str().expect("id").to_string();
    let watcher = std::process::Command::new(graft_tests::bin("graft"))
        .args(["--coordinator", &c.url, "watch", &id, "--json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("graft watch");
    wait_for(Duration::from_secs(60), || {
        (c.status(&id)["steps"].as_u64().unwrap_or(0) >= 50).then_some(())
    })
    .expect("job going");
    c.kill_coordinator();
    std::thread::sleep(Duration::from_secs(2));
    c.start_coordinator();
    let out = watcher.wait_with_output().expect("watch ends");
    assert!(out.status.success(), "{}", show(&out));
    let end = last_json(&out);
    assert_eq!(end["state"], "COMPLETED", "{}", show(&out));
    assert_eq!(end["steps"], 600, "{end}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reconnected"),
        "{}",
        show(&out)
    );
}

/// #8 finding 6: a request over the message limit is refused RESOURCE_EXHAUSTED, and the
/// refusal names the limit.
#[test]
fn an_oversize_request_is_refused_naming_the_limit() {
    let c = Cluster::start(0, 5_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let e = rt.block_on(async {
        let mut jobs = pb::job_service_client::JobServiceClient::connect(c.url.clone())
            .await
            .expect("connect")
            .max_encoding_message_size(64 << 20);
        jobs.submit_job(pb::SubmitJobRequest {
            spec: Some(pb::JobSpec {
                name: "n".repeat(9 << 20),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("9 MiB")
    });
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let limit = graft_proto::MAX_MESSAGE_BYTES.to_string();
    assert!(e.message().contains(&limit), "{e:?}");
}
