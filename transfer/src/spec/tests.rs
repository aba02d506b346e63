use super::*;

const GOOD: &str = r#"
name = "mnist-mlp"
seed = 7
[model]
kind = "mlp"
hidden = [32]
[method]
kind = "supervised"
[[datasets]]
name = "mnist"
split = "train"
role = "source"
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
[optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
[training]
global_batch_size = 64
epochs = 1
[workers]
min = 1
max = 2
"#;

fn good() -> JobSpec {
    toml::from_str(GOOD).expect("the example parses")
}

fn field_of(spec: &JobSpec) -> String {
    spec.validate().expect_err("must be refused").field
}

#[test]
fn a_good_spec_passes() {
    good().validate().expect("valid");
}

#[test]
fn unknown_keys_are_refused() {
    let with_typo = GOOD.replace("momentum = 0.9", "momentum = 0.9\nmomentun = 1");
    assert!(toml::from_str::<JobSpec>(&with_typo).is_err());
}

#[test]
fn unknown_keys_under_supervised_are_refused() {
    for key in ["init_from = \"model.safetensors\"", "foo = 42"] {
        let text = GOOD.replace(
            "kind = \"supervised\"",
            &format!("kind = \"supervised\"\n{key}"),
        );
        let e = toml::from_str::<JobSpec>(&text).expect_err(key);
        let key_name = key.split(' ').next().unwrap_or_default();
        assert!(e.to_string().contains(key_name), "{key}: {e}");
    }
    assert_eq!(good().method, MethodSpec::Supervised {});
}

/// Every table refuses keys it does not know, also the kinds that take no keys at all.
#[test]
fn unknown_keys_under_digits_cnn_and_a_constant_schedule_are_refused() {
    let cnn = GOOD.replace("[model]\nkind = \"mlp\"", "[model]\nkind = \"digits_cnn\"");
    let cnn = cnn
        .lines()
        .filter(|l| !l.starts_with("hidden"))
        .collect::<Vec<_>>()
        .join("\n");
    let spec: JobSpec = toml::from_str(&cnn).expect("digits_cnn parses");
    assert_eq!(spec.model, crate::spec::ModelSpec::DigitsCnn {});
    let e = toml::from_str::<JobSpec>(&cnn.replace(
        "kind = \"digits_cnn\"",
        "kind = \"digits_cnn\"\nhidden = [5]",
    ))
    .expect_err("digits_cnn takes no hidden");
    assert!(e.to_string().contains("hidden"), "{e}");
    let constant = format!("{GOOD}\n[schedule]\nkind = \"constant\"\n");
    let spec: JobSpec = toml::from_str(&constant).expect("constant parses");
    assert_eq!(spec.schedule, crate::spec::ScheduleSpec::Constant {});
    let e = toml::from_str::<JobSpec>(&format!("{constant}gamma = 0.5\n"))
        .expect_err("constant takes no gamma");
    assert!(e.to_string().contains("gamma"), "{e}");
}

#[test]
fn errors_name_the_field() {
    let mut s = good();
    s.optimizer = OptimizerSpec::Sgd {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    let e = s.validate().expect_err("lr 0");
    assert_eq!(e.to_string(), "optimizer.lr: must be > 0");

    let mut s = good();
    s.training.global_batch_size = 0;
    assert_eq!(field_of(&s), "training.global_batch_size");

    let mut s = good();
    s.training.steps = Some(10);
    assert_eq!(field_of(&s), "training");

    let mut s = good();
    s.workers = WorkersSpec { min: 3, max: 2 };
    assert_eq!(field_of(&s), "workers.max");

    let mut s = good();
    s.datasets[0].name = "imagenet".into();
    let e = s.validate().expect_err("unknown dataset");
    assert_eq!(e.field, "datasets[0].name");
    assert!(e.reason.contains("mnist"), "lists the known names: {e}");

    let mut s = good();
    s.datasets[1].split = "validation".into();
    assert_eq!(field_of(&s), "datasets[1].split");

    let mut s = good();
    s.datasets.remove(1);
    assert_eq!(field_of(&s), "datasets");

    let mut s = good();
    s.model = ModelSpec::Mlp { hidden: vec![8, 0] };
    assert_eq!(field_of(&s), "model.hidden[1]");

    let mut s = good();
    s.datasets[0].rotation_deg = Some(10.0);
    assert_eq!(field_of(&s), "datasets[0].rotation_deg");
}

#[test]
fn fine_tuning_needs_a_source_stage_or_a_file() {
    let mut s = good();
    s.datasets.push(DatasetSpec {
        labels_per_class: Some(10),
        ..DatasetSpec::catalog("usps", "train", Role::TargetLabelled)
    });
    s.method = MethodSpec::FineTuning {
        source_steps: None,
        source_epochs: None,
        init_from: None,
        reset_head: false,
        init_layout: None,
    };
    assert_eq!(field_of(&s), "method");
    s.method = MethodSpec::FineTuning {
        source_steps: Some(100),
        source_epochs: None,
        init_from: None,
        reset_head: false,
        init_layout: None,
    };
    s.validate().expect("source stage of 100 steps");
    s.method = MethodSpec::FineTuning {
        source_steps: Some(100),
        source_epochs: None,
        init_from: Some("m.safetensors".into()),
        reset_head: false,
        init_layout: None,
    };
    assert_eq!(field_of(&s), "method.init_from");
    // The layout of a file that is not there.
    s.method = MethodSpec::FineTuning {
        source_steps: Some(100),
        source_epochs: None,
        init_from: None,
        reset_head: false,
        init_layout: Some(crate::torch_layout::WeightsLayout::Torch),
    };
    assert_eq!(field_of(&s), "method.init_layout");
}

fn parse(text: &str) -> JobSpec {
    toml::from_str(text).expect("parses")
}

const TASKS_BASE: &str = r#"
name = "t"
[model]
kind = "mlp"
hidden = [8]
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 8
steps = 5
[[datasets]]
name = "mnist"
role = "train"
task = "a"
[[datasets]]
name = "mnist"
split = "test"
role = "eval"
task = "a"
"#;

#[test]
fn task_methods_check_their_tasks_and_datasets() {
    let ok = parse(&format!(
        "{TASKS_BASE}[method]\nkind = \"multitask\"\n[[method.tasks]]\nname = \"a\"\n"
    ));
    ok.validate().expect("valid");
    let missing = parse(&format!(
        "{TASKS_BASE}[method]\nkind = \"multitask\"\n[[method.tasks]]\nname = \"a\"\n[[method.tasks]]\nname = \"b\"\n"
    ));
    let e = missing.validate().expect_err("task b has no data");
    assert_eq!(e.field, "datasets");
    assert!(e.reason.contains("\"b\""), "{e}");
    let twice = parse(&format!(
        "{TASKS_BASE}[method]\nkind = \"progressive\"\n[[method.tasks]]\nname = \"a\"\n[[method.tasks]]\nname = \"a\"\n"
    ));
    assert_eq!(
        twice.validate().expect_err("dup").field,
        "method.tasks[1].name"
    );
    let steps = parse(&format!(
        "{TASKS_BASE}[method]\nkind = \"multitask\"\n[[method.tasks]]\nname = \"a\"\nsteps = 3\n"
    ));
    assert_eq!(
        steps.validate().expect_err("steps").field,
        "method.tasks[0].steps"
    );
    // A task's dataset in a method without tasks.
    let sup = parse(&format!("{TASKS_BASE}[method]\nkind = \"supervised\"\n"));
    assert_eq!(
        sup.validate().expect_err("no tasks").field,
        "datasets[0].task"
    );
}

const PAIR_BASE: &str = r#"
name = "t"
[model]
kind = "mlp"
hidden = [8]
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 8
steps = 5
[[datasets]]
name = "mnist"
role = "source"
[[datasets]]
name = "usps"
role = "target_labelled"
[[datasets]]
name = "usps"
split = "test"
role = "eval"
"#;

#[test]
fn method_parameters_are_checked_by_name() {
    for (method, field) in [
        (
            "kind = \"conservative\"\nsource_steps = 3\npenalty = \"l2_sp\"\nlambda = -1.0",
            "method.lambda",
        ),
        (
            "kind = \"conservative\"\nsource_steps = 3\npenalty = \"output_kl\"\nlambda = 1.0\ntemperature = 0.0",
            "method.temperature",
        ),
        (
            "kind = \"layer_transfer\"\nsource_steps = 3\nfreeze = []",
            "method.freeze",
        ),
        (
            "kind = \"layer_transfer\"\nsource_steps = 3\nfreeze = [\"first:x\"]",
            "method.freeze[0]",
        ),
        (
            "kind = \"layer_transfer\"\nfreeze = [\"features.*\"]",
            "method",
        ),
        ("kind = \"dann\"", "datasets"),
        (
            "kind = \"dann\"\ndomain_hidden = [0]",
            "method.domain_hidden[0]",
        ),
        (
            "kind = \"zero_shot\"\nunseen_classes = []\n[method.attributes]\nkind = \"builtin\"\ntable = \"seven_segment\"",
            "method.unseen_classes",
        ),
        (
            "kind = \"zero_shot\"\nunseen_classes = [1]\n[method.attributes]\nkind = \"builtin\"\ntable = \"nope\"",
            "method.attributes.table",
        ),
        (
            "kind = \"zero_shot\"\nunseen_classes = [1]\n[method.attributes]\nkind = \"pca\"\ndataset = \"usps\"\ncomponents = 0",
            "method.attributes.components",
        ),
    ] {
        let s = parse(&format!("{PAIR_BASE}[method]\n{method}\n"));
        let e = s.validate().expect_err(method);
        assert_eq!(e.field, field, "{method}: {e}");
    }
    let good = parse(&format!(
        "{PAIR_BASE}[method]\nkind = \"conservative\"\nsource_steps = 3\npenalty = \"feature_l2\"\nlambda = 0.5\n"
    ));
    good.validate().expect("valid");
}

#[test]
fn a_dataset_by_path_is_checked_for_its_format_keys_and_split() {
    let with_file = |extra: &str| -> JobSpec {
        let text = GOOD.replacen(
            "[[datasets]]",
            &format!("[[datasets]]\npath = \"mine/train.npz\"\nrole = \"eval\"\nlabel = \"mine\"\n{extra}\n\n[[datasets]]"),
            1,
        );
        toml::from_str(&text).expect("parses")
    };
    with_file("").validate().expect("a plain npz path is fine");
    with_file("holdout = 0.2")
        .validate()
        .expect("train of a holdout");
    with_file("holdout = 0.2\nsplit = \"test\"")
        .validate()
        .expect("test of a holdout");
    for (extra, field, says) in [
        ("split = \"test\"", "datasets[0].split", "holdout"),
        ("holdout = 1.5", "datasets[0].holdout", "between 0 and 1"),
        (
            "holdout = 0.2\nsplit = \"all\"",
            "datasets[0].split",
            "with holdout",
        ),
        (
            "format = \"parquet\"",
            "datasets[0].format",
            "unknown format",
        ),
        ("label_column = 3", "datasets[0].label_column", "csv"),
        ("channels = 3", "datasets[0].channels", "image-folder"),
        ("samples = 10", "datasets[0].samples", "generated"),
        ("name = \"mnist\"", "datasets[0].name", "not both"),
    ] {
        let e = with_file(extra).validate().expect_err(extra);
        assert_eq!(e.field, field, "{extra}: {e}");
        assert!(e.to_string().contains(says), "{extra}: {e}");
    }
    // A pair needs its labels file; a catalog set takes no file keys.
    let mut s = with_file("format = \"npy-pair\"");
    assert_eq!(field_of(&s), "datasets[0].labels");
    s.datasets[0].labels = Some("mine/y.npy".into());
    s.validate().expect("a pair with its labels");
    let mut s = good();
    s.datasets[0].holdout = Some(0.5);
    assert_eq!(field_of(&s), "datasets[0].holdout");
    let mut s = good();
    s.datasets[0].name = String::new();
    assert_eq!(field_of(&s), "datasets[0].name");
    // An index or a header name for a CSV label column.
    let s = with_file("format = \"csv\"\nlabel_column = 0");
    assert_eq!(s.datasets[0].label_column, Some(ColumnRef::Index(0)));
    let s = with_file("format = \"csv\"\nlabel_column = \"digit\"");
    assert_eq!(
        s.datasets[0].label_column,
        Some(ColumnRef::Name("digit".into()))
    );
    s.validate().expect("csv with a named label column");
}

#[test]
fn dann_options_and_a_fixed_normalisation_are_checked() {
    let dann = |extra: &str| -> JobSpec {
        let text = GOOD
            .replace(
                "kind = \"supervised\"",
                &format!("kind = \"dann\"\n{extra}"),
            )
            .replacen(
                "[[datasets]]",
                "[[datasets]]\nname = \"usps\"\nrole = \"target_unlabelled\"\n\n[[datasets]]",
                1,
            );
        toml::from_str(&text).expect("parses")
    };
    dann("trade_off = 0.5\nramp = \"steps\"\nramp_steps = 2000")
        .validate()
        .expect("TLlib's options");
    assert_eq!(field_of(&dann("trade_off = -1.0")), "method.trade_off");
    assert_eq!(field_of(&dann("ramp_steps = 100")), "method.ramp_steps");
    assert_eq!(
        field_of(&dann("ramp = \"steps\"\nramp_steps = 0")),
        "method.ramp_steps"
    );
    assert!(
        toml::from_str::<JobSpec>(&GOOD.replace(
            "kind = \"supervised\"",
            "kind = \"dann\"\nramp = \"sideways\""
        ))
        .is_err()
    );

    let mut s = good();
    s.datasets[0].normalize = Some(Normalize {
        mean: 0.5,
        std: 0.5,
    });
    s.validate().expect("TLlib's 0.5 / 0.5");
    s.datasets[0].normalize = Some(Normalize {
        mean: 0.5,
        std: 0.0,
    });
    assert_eq!(field_of(&s), "datasets[0].normalize");
    s.datasets[0].normalize = Some(Normalize {
        mean: 0.5,
        std: 0.5,
    });
    s.datasets[0].standardize = true;
    assert_eq!(field_of(&s), "datasets[0].normalize");
    let typo = GOOD.replacen(
        "role = \"source\"",
        "role = \"source\"\nnormalize = { mean = 0.5, sd = 0.5 }",
        1,
    );
    assert!(
        toml::from_str::<JobSpec>(&typo).is_err(),
        "unknown key refused"
    );
}
