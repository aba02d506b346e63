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
