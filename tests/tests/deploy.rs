//! The Kubernetes manifests, checked without a cluster: what no schema checks.
//!
//! The overlays are rendered with the pinned `kubectl kustomize` of `scripts/deploy-tools.sh`
//! (`.venv/bin/kubectl`, or `GRAFT_KUBECTL`; the YAML is read through the venv's Python,
//! or `GRAFT_PYTHON`). Each container is then started the way the kubelet would start it:
//! its command and arguments (with `$(VAR)` expanded), its environment (downward-API values
//! filled in), its ConfigMap volumes written out as files, its volumes as directories. The
//! only translations are the ones a cluster makes: mount paths become local directories,
//! Service names resolve to 127.0.0.1 and each pod gets its own loopback address as its IP.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use graft_tests::{bin, health, http_get, last_json, show, terminate, wait_for};
use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn tool(env: &str, venv: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or_else(
        || Path::new(REPO).join(".venv/bin").join(venv),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "{} is missing: run scripts/deploy-tools.sh (or set {env})",
        p.display()
    );
    p
}

/// The objects of a rendered overlay.
fn render(overlay: &str) -> Vec<Value> {
    let dir = Path::new(REPO).join("deploy/k8s/overlays").join(overlay);
    let yaml = Command::new(tool("GRAFT_KUBECTL", "kubectl"))
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(yaml.status.success(), "kubectl kustomize: {}", show(&yaml));
    let mut py = Command::new(tool("GRAFT_PYTHON", "python"))
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    py.stdin
        .take()
        .expect("stdin")
        .write_all(&yaml.stdout)
        .expect("write YAML");
    let out = py.wait_with_output().expect("python");
    assert!(out.status.success(), "YAML to JSON: {}", show(&out));
    serde_json::from_slice(&out.stdout).expect("rendered JSON")
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered objects"))
}

/// Pod templates of the workloads: (kind, name, replicas, template).
fn workloads(objs: &[Value]) -> Vec<(&str, &str, u64, &Value)> {
    objs.iter()
        .filter_map(|o| {
            let kind = s(&o["kind"]);
            let replicas = match kind {
                "StatefulSet" | "Deployment" => o["spec"]["replicas"].as_u64().unwrap_or(1),
                "Job" => 1,
                _ => return None,
            };
            Some((
                kind,
                s(&o["metadata"]["name"]),
                replicas,
                &o["spec"]["template"],
            ))
        })
        .collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

/// The container port called `name` (or numbered so).
fn container_port(c: &Value, port: &Value) -> Option<u64> {
    arr(&c["ports"])
        .iter()
        .find(|p| p["name"] == *port || p["containerPort"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// One container, set up as the kubelet would start it.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Mount path → local directory.
    mounts: Vec<(String, PathBuf)>,
    pod: String,
    ip: String,
}

impl Launch {
    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .args(extra)
            .env_clear()
            .env("HOSTNAME", &self.pod)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().expect("run container command")
    }

    fn spawn(&self, log: &Path) -> Child {
        self.command(&[])
            .stdout(fs::File::create(log.with_extension("out")).expect("log"))
            .stderr(fs::File::create(log).expect("log"))
            .spawn()
            .expect("start container command")
    }

    /// The local directory of the volume mounted at `path`.
    fn local(&self, path: &str) -> &Path {
        &self
            .mounts
            .iter()
            .find(|(m, _)| m == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path} in pod {}", self.pod))
            .1
    }
}

/// Expands `$(VAR)` as Kubernetes does in env values, commands and arguments.
fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// The cluster's translations of one pod: mount paths, Service names.
struct Localizer {
    mounts: Vec<(String, PathBuf)>,
    services: Vec<String>,
}

impl Localizer {
    fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for svc in &self.services {
            out = out.replace(&format!("://{svc}:"), "://127.0.0.1:");
        }
        // One pass over the text (a local directory may itself start with a mount path such
        // as /tmp), longest mount path first, so /etc/graft/jobs wins over /etc/graft.
        let mut mounts = self.mounts.clone();
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        let mut result = String::new();
        let mut i = 0;
        'scan: while i < out.len() {
            let rest = &out[i..];
            let before_ok = i == 0 || !out[..i].ends_with(|c: char| c.is_alphanumeric());
            if before_ok {
                for (m, local) in &mounts {
                    if let Some(after) = rest.strip_prefix(m.as_str())
                        && matches!(
                            after.chars().next(),
                            None | Some('/' | '"' | '\'' | ' ' | '\n')
                        )
                    {
                        result.push_str(&local.display().to_string());
                        i += m.len();
                        continue 'scan;
                    }
                }
            }
            let c = rest.chars().next().unwrap_or_default();
            result.push(c);
            i += c.len_utf8();
        }
        out = result;
        out
    }
}

/// Sets up container `c` of pod `pod` (of `workload`) under `root`.
fn launch(
    objs: &[Value],
    workload: &Value,
    template: &Value,
    c: &Value,
    pod: &str,
    ip: &str,
    root: &Path,
) -> Launch {
    let spec = &template["spec"];
    let ns = s(&workload["metadata"]["namespace"]);
    let pod_dir = root.join(pod);
    let claims: Vec<&str> = arr(&workload["spec"]["volumeClaimTemplates"])
        .iter()
        .map(|t| s(&t["metadata"]["name"]))
        .collect();
    // Volumes: where each lives locally, and the ConfigMaps' files to write there.
    let mut volumes: BTreeMap<String, (PathBuf, Vec<(String, String)>)> = BTreeMap::new();
    for v in arr(&spec["volumes"]) {
        let name = s(&v["name"]).to_string();
        let dir = pod_dir.join(format!("volume-{name}"));
        let files = if v["configMap"].is_object() {
            let cm = named(objs, "ConfigMap", s(&v["configMap"]["name"]));
            let data = cm["data"].as_object().expect("ConfigMap data");
            match v["configMap"]["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = s(&i["key"]);
                        let text = data.get(key).map(s).unwrap_or_else(|| {
                            panic!("ConfigMap {} has no key {key}", cm["metadata"]["name"])
                        });
                        (s(&i["path"]).to_string(), text.to_string())
                    })
                    .collect(),
                None => data
                    .iter()
                    .map(|(k, t)| (k.clone(), s(t).to_string()))
                    .collect(),
            }
        } else {
            assert!(
                v["emptyDir"].is_object(),
                "pod {pod}: volume {name} is neither a ConfigMap nor an emptyDir"
            );
            Vec::new()
        };
        volumes.insert(name, (dir, files));
    }
    for claim in &claims {
        volumes.insert(
            claim.to_string(),
            (pod_dir.join(format!("claim-{claim}")), Vec::new()),
        );
    }
    let mut mounts = Vec::new();
    for m in arr(&c["volumeMounts"]) {
        assert!(
            m["subPath"].is_null(),
            "pod {pod}: subPath mounts are not emulated"
        );
        let (dir, _) = volumes
            .get(s(&m["name"]))
            .unwrap_or_else(|| panic!("pod {pod}: no volume {}", m["name"]));
        mounts.push((s(&m["mountPath"]).to_string(), dir.clone()));
    }
    let services = of_kind(objs, "Service")
        .iter()
        .flat_map(|svc| {
            let name = s(&svc["metadata"]["name"]);
            [
                name.to_string(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ]
        })
        .collect();
    let loc = Localizer {
        mounts: mounts.clone(),
        services,
    };
    for (dir, files) in volumes.values() {
        fs::create_dir_all(dir).expect("volume directory");
        for (name, text) in files {
            fs::write(dir.join(name), loc.apply(text)).expect("ConfigMap file");
        }
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for from in arr(&c["envFrom"]) {
        assert!(
            from["secretRef"]["optional"] == true || from["configMapRef"]["optional"] == true,
            "pod {pod}: envFrom {from} must be optional (there is no Secret in the manifests)"
        );
    }
    for e in arr(&c["env"]) {
        let name = s(&e["name"]).to_string();
        let value = if let Some(v) = e["value"].as_str() {
            loc.apply(&expand(v, &env))
        } else {
            match s(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
                "metadata.name" => pod.to_string(),
                "metadata.namespace" => ns.to_string(),
                "status.podIP" => ip.to_string(),
                other => panic!("pod {pod}: env {name} from {other:?} is not emulated"),
            }
        };
        env.push((name, value));
    }
    let command = arr(&c["command"]);
    let exe = command
        .first()
        .map(s)
        .unwrap_or_else(|| panic!("pod {pod}: container without a command"));
    assert!(
        ["graft", "graft-coordinator", "graft-worker"].contains(&exe),
        "pod {pod}: command {exe:?} is not one of the image's binaries"
    );
    let args: Vec<String> = command[1..]
        .iter()
        .chain(arr(&c["args"]))
        .map(|a| loc.apply(&expand(s(a), &env)))
        .collect();
    Launch {
        program: bin(exe),
        args,
        env,
        mounts,
        pod: pod.to_string(),
        ip: ip.to_string(),
    }
}

/// Every pod of every workload: (workload, template, container, pod name, pod IP).
fn pods(objs: &[Value]) -> Vec<(&Value, &Value, &Value, String, String)> {
    let mut out = Vec::new();
    let mut n = 10;
    for o in objs {
        let Some((kind, name, replicas, template)) =
            workloads(std::slice::from_ref(o)).into_iter().next()
        else {
            continue;
        };
        for i in 0..replicas {
            let pod = if kind == "Job" {
                format!("{name}-x7k2p")
            } else {
                format!("{name}-{i}")
            };
            n += 1;
            let containers = arr(&template["spec"]["containers"]);
            assert_eq!(containers.len(), 1, "{name}: one container per pod");
            out.push((o, template, &containers[0], pod, format!("127.0.0.{n}")));
        }
    }
    out
}

fn toml_of(out: &Output) -> toml::Table {
    assert!(out.status.success(), "{}", show(out));
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .unwrap_or_else(|e| panic!("--check-config output is not TOML: {e}\n{}", show(out)))
}

/// Security, resources and probes of every container, and the selectors and ports that tie
/// the objects together.
fn check_objects(overlay: &str, objs: &[Value]) {
    for (kind, name, _, template) in workloads(objs) {
        let spec = &template["spec"];
        let pod_sc = &spec["securityContext"];
        assert!(
            pod_sc["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{overlay}: {kind} {name}: pod runAsUser must be a non-root uid"
        );
        assert!(
            spec["terminationGracePeriodSeconds"].is_u64() || kind == "Job",
            "{overlay}: {kind} {name}: set terminationGracePeriodSeconds"
        );
        for c in arr(&spec["containers"])
            .iter()
            .chain(arr(&spec["initContainers"]))
        {
            let what = format!("{overlay}: {kind} {name}, container {}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{what}: runAsNonRoot");
            assert_eq!(
                sc["readOnlyRootFilesystem"], true,
                "{what}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{what}: allowPrivilegeEscalation"
            );
            assert!(
                arr(&sc["capabilities"]["drop"]).iter().any(|c| c == "ALL"),
                "{what}: capabilities.drop ALL"
            );
            for bound in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][bound][r].is_null(),
                        "{what}: resources.{bound}.{r}"
                    );
                }
            }
            if kind == "Job" {
                continue;
            }
            for probe in ["livenessProbe", "readinessProbe"] {
                let p = &c[probe]["grpc"];
                assert!(p.is_object(), "{what}: {probe} must be a gRPC probe");
                assert!(
                    container_port(c, &p["port"]).is_some(),
                    "{what}: {probe} port {} is not a container port",
                    p["port"]
                );
            }
            assert_eq!(
                c["livenessProbe"]["grpc"]["service"], "liveness",
                "{what}: liveness asks the `liveness` health service"
            );
            assert!(
                s(&c["readinessProbe"]["grpc"]["service"]).is_empty(),
                "{what}: readiness asks the overall health"
            );
        }
    }
    let templates = workloads(objs);
    let selected = |selector: &Value| -> Vec<&Value> {
        templates
            .iter()
            .filter(|(_, _, _, t)| labels_match(selector, &t["metadata"]["labels"]))
            .map(|(_, _, _, t)| *t)
            .collect()
    };
    for svc in of_kind(objs, "Service") {
        let name = s(&svc["metadata"]["name"]);
        let pods = selected(&svc["spec"]["selector"]);
        assert_eq!(
            pods.len(),
            1,
            "{overlay}: Service {name} selects one workload"
        );
        let c = &pods[0]["spec"]["containers"][0];
        for p in arr(&svc["spec"]["ports"]) {
            let target = container_port(c, &p["targetPort"]).unwrap_or_else(|| {
                panic!(
                    "{overlay}: Service {name}: no container port {}",
                    p["targetPort"]
                )
            });
            assert_eq!(
                p["port"].as_u64(),
                Some(target),
                "{overlay}: Service {name}: port and container port differ (clients and the config use one number)"
            );
        }
    }
    for sts in of_kind(objs, "StatefulSet") {
        let svc = named(objs, "Service", s(&sts["spec"]["serviceName"]));
        assert!(labels_match(
            &svc["spec"]["selector"],
            &sts["spec"]["template"]["metadata"]["labels"]
        ));
    }
    let worker = named(objs, "StatefulSet", "graft-worker");
    assert_eq!(worker["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        named(objs, "Service", s(&worker["spec"]["serviceName"]))["spec"]["clusterIP"],
        "None",
        "{overlay}: the workers' Service is headless"
    );
    for pdb in of_kind(objs, "PodDisruptionBudget") {
        assert_eq!(
            selected(&pdb["spec"]["selector"]["matchLabels"]).len(),
            1,
            "{overlay}: PodDisruptionBudget selects one workload"
        );
    }
    for np in of_kind(objs, "NetworkPolicy") {
        let name = s(&np["metadata"]["name"]);
        let pods = selected(&np["spec"]["podSelector"]["matchLabels"]);
        assert_eq!(
            pods.len(),
            1,
            "{overlay}: NetworkPolicy {name} selects one workload"
        );
        let c = &pods[0]["spec"]["containers"][0];
        for rule in arr(&np["spec"]["ingress"]) {
            for p in arr(&rule["ports"]) {
                assert!(
                    container_port(c, &p["port"]).is_some(),
                    "{overlay}: NetworkPolicy {name} opens {}, which the pods do not serve",
                    p["port"]
                );
            }
        }
    }
}

/// Each container's command line and configuration, as the binaries read them.
fn check_commands(overlay: &str, objs: &[Value], root: &Path) {
    let mut checked = Vec::new();
    for (workload, template, c, pod, ip) in pods(objs) {
        let l = launch(objs, workload, template, c, &pod, &ip, root);
        let grace_ms = template["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30)
            * 1000;
        let exe = l.program.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let what = format!("{overlay}: pod {pod}");
        match exe {
            "graft-coordinator" => {
                let cfg = toml_of(&l.run(&["--check-config"]));
                let listen = cfg["listen"].as_str().expect("listen");
                assert_eq!(
                    Some(port_of(listen)),
                    container_port(c, &"grpc".into()),
                    "{what}: listen"
                );
                assert!(
                    listen.starts_with("0.0.0.0:"),
                    "{what}: kubectl port-forward reaches the pod on localhost"
                );
                assert_eq!(
                    container_port(c, &c["readinessProbe"]["grpc"]["port"]),
                    Some(port_of(listen)),
                    "{what}: probes ask the gRPC port"
                );
                let metrics = cfg["metrics_listen"].as_str().expect("metrics_listen");
                assert_eq!(
                    Some(port_of(metrics)),
                    container_port(c, &"metrics".into()),
                    "{what}: metrics_listen"
                );
                assert!(
                    cfg["shutdown_grace_ms"]
                        .as_integer()
                        .is_some_and(|g| (g as u64) < grace_ms),
                    "{what}: shutdown_grace_ms must end before the kubelet's SIGKILL"
                );
                let state = cfg["state_dir"].as_str().expect("state_dir");
                let claim = arr(&workload["spec"]["volumeClaimTemplates"])
                    .iter()
                    .find_map(|t| {
                        arr(&c["volumeMounts"])
                            .iter()
                            .find(|m| m["name"] == t["metadata"]["name"])
                    })
                    .unwrap_or_else(|| panic!("{what}: no PersistentVolumeClaim mounted"));
                assert!(
                    Path::new(state).starts_with(l.local(s(&claim["mountPath"]))),
                    "{what}: state_dir {state} must be on the PersistentVolumeClaim"
                );
            }
            "graft-worker" => {
                let out = l.run(&["--check-config"]);
                let device = l
                    .env
                    .iter()
                    .find(|(k, _)| k == "GRAFT_WORKER_DEVICE")
                    .map(|(_, v)| v.as_str());
                if !out.status.success() {
                    // The one thing a CPU build or machine may refuse: a CUDA device (gpu overlay).
                    assert!(
                        device.is_some_and(|d| d.starts_with("cuda:"))
                            && (String::from_utf8_lossy(&out.stderr)
                                .contains("needs graft built with the `tch` feature")
                                || String::from_utf8_lossy(&out.stderr)
                                    .contains("is not available here")),
                        "{what}: {}",
                        show(&out)
                    );
                    assert!(
                        !c["resources"]["limits"]["nvidia.com/gpu"].is_null(),
                        "{what}: a cuda worker must ask for a GPU"
                    );
                    let spec = &template["spec"];
                    assert!(
                        spec["nodeSelector"].is_object() && !arr(&spec["tolerations"]).is_empty(),
                        "{what}: GPU node selector and toleration"
                    );
                    // Everything else must hold with the device this build has.
                    let cpu = l
                        .command(&["--check-config", "--device", "cpu"])
                        .output()
                        .expect("worker");
                    check_worker(&what, &toml_of(&cpu), c, &l, grace_ms, objs);
                } else {
                    check_worker(&what, &toml_of(&out), c, &l, grace_ms, objs);
                }
            }
            "graft" => {
                let out = l.run(&["--help"]);
                assert!(
                    out.status.success(),
                    "{what}: graft does not take these arguments: {}",
                    show(&out)
                );
                for a in &l.args {
                    if a.starts_with('/') {
                        assert!(
                            Path::new(a).exists(),
                            "{what}: {a} is not in a mounted volume"
                        );
                    }
                }
                let url = l
                    .env
                    .iter()
                    .find(|(k, _)| k == "GRAFT_URL")
                    .map(|(_, v)| v.clone())
                    .expect("GRAFT_URL");
                assert!(
                    url.starts_with("http://127.0.0.1:"),
                    "{what}: GRAFT_URL {url} names no Service"
                );
            }
            other => panic!("{what}: unexpected binary {other}"),
        }
        checked.push(exe.to_string());
    }
    for b in ["graft-coordinator", "graft-worker", "graft"] {
        assert!(
            checked.iter().any(|c| c == b),
            "{overlay}: no container runs {b}"
        );
    }
}

fn check_worker(
    what: &str,
    cfg: &toml::Table,
    c: &Value,
    l: &Launch,
    grace_ms: u64,
    objs: &[Value],
) {
    let listen = cfg["listen"].as_str().expect("listen");
    assert_eq!(
        listen,
        format!("{}:{}", l.ip, port_of(listen)),
        "{what}: listens on the pod IP"
    );
    assert_eq!(
        Some(port_of(listen)),
        container_port(c, &"grpc".into()),
        "{what}: listen port"
    );
    assert_eq!(
        cfg["name"].as_str(),
        Some(l.pod.as_str()),
        "{what}: named after its pod"
    );
    assert!(
        cfg["shutdown_grace_ms"]
            .as_integer()
            .is_some_and(|g| (g as u64) < grace_ms),
        "{what}: shutdown_grace_ms"
    );
    let url = cfg["coordinator"].as_str().expect("coordinator");
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "{what}: coordinator {url} is not a Service name"
    );
    let svc = named(objs, "Service", "graft-coordinator");
    assert!(
        arr(&svc["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_u64() == Some(port_of(url))),
        "{what}: coordinator port {url} is not a port of Service graft-coordinator"
    );
}

#[test]
fn rendered_manifests_match_what_the_binaries_accept() {
    for overlay in ["dev", "gpu"] {
        let objs = render(overlay);
        check_objects(overlay, &objs);
        let tmp = tempfile::tempdir().expect("tempdir");
        check_commands(overlay, &objs, tmp.path());
    }
    let gpu = render("gpu");
    let w = named(&gpu, "StatefulSet", "graft-worker");
    assert!(s(&w["spec"]["template"]["spec"]["containers"][0]["image"]).ends_with("-tch"));
}

/// The dev overlay's pods, as local processes with exactly their rendered commands,
/// environment and files, train the overlay's own example job through its own Job.
#[test]
fn rendered_dev_overlay_trains_a_job_through_its_own_commands() {
    let objs = render("dev");
    for port in [7070, 9090] {
        std::net::TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
            panic!("port {port} is taken ({e}): this test runs the rendered coordinator on its real ports")
        });
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut running: Vec<(String, Child, u64)> = Vec::new();
    let mut job = None;
    for (workload, template, c, pod, ip) in pods(&objs) {
        let l = launch(&objs, workload, template, c, &pod, &ip, tmp.path());
        if workload["kind"] == "Job" {
            job = Some(l);
            continue;
        }
        let grace = template["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        let child = l.spawn(&tmp.path().join(format!("{pod}.log")));
        let probe = &c["readinessProbe"]["grpc"];
        let addr = format!("{ip}:{}", probe["port"]);
        let service = s(&probe["service"]).to_string();
        running.push((pod.clone(), child, grace));
        let logs = |pod: &str| {
            fs::read_to_string(tmp.path().join(format!("{pod}.log"))).unwrap_or_default()
        };
        // Workers are ready only once registered, so the coordinator must be up first: the
        // coordinator comes first in the rendered order.
        wait_for(Duration::from_secs(60), || {
            (health(&addr, &service).as_deref() == Ok("SERVING")).then_some(())
        })
        .unwrap_or_else(|| panic!("pod {pod} never became ready at {addr}:\n{}", logs(&pod)));
    }
    let job = job.expect("the overlay has a submit Job");
    let out = job.run(&[]);
    let logs: String = running
        .iter()
        .map(|(p, _, _)| {
            format!(
                "--- {p}\n{}",
                fs::read_to_string(tmp.path().join(format!("{p}.log"))).unwrap_or_default()
            )
        })
        .collect();
    assert!(out.status.success(), "{}\n{logs}", show(&out));
    let r = last_json(&out);
    assert_eq!(r["state"], "COMPLETED", "{}", show(&out));
    assert_eq!(r["workers"], 2);
    let acc = r["metrics"]["target_accuracy"].as_f64().unwrap_or(0.0);
    assert!(acc > 0.8, "moons accuracy {acc}: {}", show(&out));
    // Prometheus reaches the Service's metrics port.
    let metrics = http_get("127.0.0.1:9090", "/metrics");
    assert!(metrics.contains("graft_steps_total"), "{metrics}");
    // Pods stop as the kubelet stops them: SIGTERM, then the grace period.
    for (pod, mut child, grace) in running.into_iter().rev() {
        let status = terminate(&mut child, Duration::from_secs(grace))
            .unwrap_or_else(|| panic!("pod {pod} outlived its {grace} s grace period"));
        assert!(status.success(), "pod {pod} exited with {status:?}");
    }
}
