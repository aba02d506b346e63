use super::*;
use graft_transfer::spec::ModelSpec;

fn spec() -> JobSpec {
    crate::testing::moons_spec((1, 1), 3)
}

#[test]
fn write_load_prune_and_detect_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CheckpointDir::new(tmp.path().join("ckpt"));
    let arch = Architecture::new(&ModelSpec::Mlp { hidden: vec![4] }, &[2], 2).expect("valid");
    let spec = spec();
    for step in 1..=4u64 {
        let params = arch.init(step);
        let state = vec![step as f32; 3];
        let rec = dir
            .write(
                &Snapshot {
                    job: "job-1",
                    spec: &spec,
                    arch: &arch,
                    step,
                    stage: 0,
                    epoch: 0,
                    params: &params,
                    optimizer_state: &state,
                    optimizer_steps: step,
                    metrics: BTreeMap::new(),
                },
                2,
            )
            .expect("writes");
        assert!(Path::new(&rec.path).exists());
    }
    assert_eq!(dir.steps(), vec![3, 4], "only the newest two are kept");
    let loaded = dir.load(4, &arch).expect("loads");
    assert_eq!(loaded.params, arch.init(4));
    assert_eq!(loaded.optimizer_state, vec![4.0; 3]);
    // Damage the newest weights: load refuses it, latest_valid falls back to step 3.
    let model = tmp.path().join("ckpt/model-00000004.safetensors");
    let mut bytes = fs::read(&model).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&model, bytes).expect("write");
    let err = dir.load(4, &arch).expect_err("damaged");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(
        dir.latest_valid(&arch).expect("one is valid").manifest.step,
        3
    );
    assert!(
        !tmp.path()
            .join("ckpt/.model-00000003.safetensors.tmp")
            .exists()
    );
}

#[test]
fn a_crashed_write_leaves_no_checkpoint_and_is_swept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CheckpointDir::new(tmp.path().to_path_buf());
    let arch = Architecture::new(&ModelSpec::Mlp { hidden: vec![4] }, &[2], 2).expect("valid");
    // What a crash after the weights but before the manifest leaves behind.
    fs::write(tmp.path().join("model-00000007.safetensors"), b"partial").expect("write");
    fs::write(tmp.path().join(".checkpoint-00000007.json.tmp"), b"{").expect("write");
    assert!(
        dir.latest_valid(&arch).is_none(),
        "no manifest, no checkpoint"
    );
    let params = arch.init(1);
    let spec = spec();
    dir.write(
        &Snapshot {
            job: "job-1",
            spec: &spec,
            arch: &arch,
            step: 9,
            stage: 0,
            epoch: 0,
            params: &params,
            optimizer_state: &[],
            optimizer_steps: 0,
            metrics: BTreeMap::new(),
        },
        3,
    )
    .expect("writes");
    assert!(!tmp.path().join("model-00000007.safetensors").exists());
    assert!(!tmp.path().join(".checkpoint-00000007.json.tmp").exists());
    assert_eq!(dir.latest_valid(&arch).expect("valid").manifest.step, 9);
}
