//! Who may join the cluster: what a `Register` may say of itself, and the probe that proves
//! the registering process serves the ring at the address it names.
//!
//! Without the probe, anyone who can reach the coordinator could register fakes that attract
//! jobs and then stall them (a group waits for its members), or register in the name of a
//! real worker's address. The probe asks that address to answer a fresh challenge with the
//! key the `Register` named: only the process that drew the key can.

use std::time::Duration;

use graft_common::auth::Bearer;
use graft_common::group_key::{KEY_BYTES, probe_holds, random};
use graft_proto::v1 as pb;
use graft_proto::v1::collective_service_client::CollectiveServiceClient;
use tonic::Status;

/// How long the probe of a registering worker may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest worker name taken.
pub const MAX_NAME_CHARS: usize = 128;
/// The longest device name taken (`cuda:N`, `libtorch-cpu`, …).
pub const MAX_DEVICE_CHARS: usize = 32;
/// The longest address taken (a DNS name is at most 253 characters, plus a port).
pub const MAX_ADDR_CHARS: usize = 260;

/// What is wrong with a name people read in logs and tables, if anything: it must be
/// bounded, and printable (no control characters, which would let it rewrite a terminal or
/// forge log lines).
pub fn name_problem(name: &str, max_chars: usize) -> Option<String> {
    let n = name.chars().count();
    if n > max_chars {
        return Some(format!("{n} characters, at most {max_chars} are taken"));
    }
    name.chars().find(|c| c.is_control()).map(|c| {
        format!(
            "control character {c:?} in {:?}; only printable characters are taken",
            name.escape_debug().to_string()
        )
    })
}

/// [`name_problem`] as a refusal naming `what`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `what` and what is wrong.
pub fn check_name(what: &str, name: &str, max_chars: usize) -> Result<(), Status> {
    match name_problem(name, max_chars) {
        Some(why) => Err(Status::invalid_argument(format!("{what}: {why}"))),
        None => Ok(()),
    }
}

/// A device name as workers report them: `cpu`, `libtorch-cpu` or `cuda:N` with N < 1024.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the device.
pub fn check_device(device: &str) -> Result<(), Status> {
    check_name("device", device, MAX_DEVICE_CHARS)?;
    let ok = match device.strip_prefix("cuda:") {
        Some(n) => n.parse::<u16>().is_ok_and(|n| n < 1024) && !n.starts_with('+'),
        None => {
            !device.is_empty()
                && device
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }
    };
    if !ok {
        return Err(Status::invalid_argument(format!(
            "device: {:?} is not a device name (cpu, libtorch-cpu, cuda:N with N < 1024)",
            device.escape_debug().to_string()
        )));
    }
    Ok(())
}

/// A `host:port` (or `[v6]:port`) address with a port in 1..=65535 and a host.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the address and what is wrong with it.
pub fn check_addr(what: &str, addr: &str) -> Result<(), Status> {
    check_name(what, addr, MAX_ADDR_CHARS)?;
    let bad = |why: &str| {
        Status::invalid_argument(format!(
            "{what}: {:?} {why}",
            addr.escape_debug().to_string()
        ))
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("is not host:port"))?;
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("needs a port in 1..=65535")),
        Ok(_) => Ok(()),
    }
}

/// Asks the worker at `addr` to answer a fresh challenge under `probe_key`.
///
/// # Errors
/// `UNAVAILABLE` when the address does not answer within [`PROBE_TIMEOUT`] (the worker
/// retries), `PERMISSION_DENIED` when what answers there does not hold the key.
pub async fn probe(
    addr: &str,
    probe_key: &[u8],
    cluster_token: Option<&str>,
) -> Result<(), Status> {
    if probe_key.len() != KEY_BYTES {
        return Err(Status::invalid_argument(format!(
            "probe_key: {} bytes, a worker draws {KEY_BYTES}",
            probe_key.len()
        )));
    }
    let challenge = random::<KEY_BYTES>().map_err(Status::internal)?;
    let unreachable = |e: String| {
        Status::unavailable(format!(
            "the coordinator cannot reach this worker's CollectiveService at {addr}: {e}; \
             a worker is admitted only once it answers there (check `listen` and `advertise`)"
        ))
    };
    let bearer = Bearer::new(cluster_token).map_err(|e| Status::internal(e.to_string()))?;
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .map_err(|e| unreachable(graft_common::tls::chain(&e)))?;
        CollectiveServiceClient::with_interceptor(channel, bearer)
            .probe(pb::ProbeRequest {
                challenge: challenge.to_vec(),
            })
            .await
            .map_err(|s| unreachable(s.message().to_string()))
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {PROBE_TIMEOUT:?}")))??;
    if !probe_holds(probe_key, &challenge, &answer.into_inner().proof) {
        return Err(Status::permission_denied(format!(
            "what answers at {addr} does not hold this worker's probe key: the address \
             belongs to another process"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_devices_and_addresses_are_bounded_and_printable() {
        assert!(check_name("name", "worker-0", 128).is_ok());
        let e = check_name("name", &"x".repeat(4 << 20), 128).expect_err("long");
        assert!(e.message().contains("4194304 characters"), "{e:?}");
        let e = check_name("name", "a\u{1b}[31mred", 128).expect_err("ansi");
        assert!(e.message().contains("control character"), "{e:?}");
        assert!(check_name("name", "nul\0", 128).is_err());
        for ok in ["cpu", "libtorch-cpu", "cuda:0", "cuda:7"] {
            assert!(check_device(ok).is_ok(), "{ok}");
        }
        for bad in ["", "cuda:99999", "cuda:", "cuda:+1", "cpu 0", "cuda:-1"] {
            assert!(check_device(bad).is_err(), "{bad:?}");
        }
        for ok in ["127.0.0.1:7071", "[::1]:80", "worker-0.graft:7071"] {
            assert!(check_addr("collective_addr", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            ":7071",
            "a b:1",
        ] {
            let e = check_addr("collective_addr", bad).expect_err(bad);
            assert!(e.message().starts_with("collective_addr"), "{e:?}");
        }
    }
}
