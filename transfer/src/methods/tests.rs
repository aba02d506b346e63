use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use super::*;
use crate::spec::{ModelSpec, Role};

fn ctx() -> StepContext {
    StepContext {
        stage: 0,
        step_in_stage: 0,
        stage_steps: 1,
        global_counts: vec![3],
    }
}

fn tiny() -> (Architecture, Params, Batch) {
    let arch = Architecture::new(&ModelSpec::Mlp { hidden: vec![4] }, &[3], 2).expect("valid");
    let params = arch.init(5);
    let batch = Batch {
        features: vec![0.1, -0.2, 0.3, 0.5, 0.4, -0.1, -0.3, 0.2, 0.9],
        labels: vec![0, 1, 1],
        dim: 3,
    };
    (arch, params, batch)
}

struct AllSupervised;
impl Method for AllSupervised {
    fn name(&self) -> &'static str {
        "test"
    }
    fn stages(&self) -> Vec<StageDef> {
        Vec::new()
    }
    fn loss(
        &self,
        arch: &Architecture,
        p: &[burn::tensor::Tensor<1>],
        b: &[Batch],
        _: &StepContext,
        d: &Device,
    ) -> BatchLoss {
        classification_loss(arch, p, &b[0], d)
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let (arch, params, batch) = tiny();
    let mask = vec![true; arch.params.len()];
    let device = Device::flex();
    let r = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&batch),
        &ctx(),
        &device,
    );
    assert_eq!(r.grad.len(), arch.num_params());
    let loss_at = |p: &Params| {
        compute_step(
            &AllSupervised,
            &arch,
            p,
            &mask,
            std::slice::from_ref(&batch),
            &ctx(),
            &device,
        )
        .stats
        .loss_sum
    };
    let flat = params.flatten(&mask);
    for i in [0usize, 5, flat.len() - 1] {
        let eps = 1e-2f32;
        let mut plus = params.clone();
        let mut f = flat.clone();
        f[i] += eps;
        plus.unflatten(&mask, &f).expect("len");
        let mut minus = params.clone();
        f[i] -= 2.0 * eps;
        minus.unflatten(&mask, &f).expect("len");
        let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * eps as f64);
        assert!(
            (numeric - r.grad[i] as f64).abs() < 2e-3,
            "param {i}: numeric {numeric} vs autodiff {}",
            r.grad[i]
        );
    }
}

#[test]
fn batch_split_gradients_sum_to_the_whole() {
    let (arch, params, batch) = tiny();
    let mask = vec![true; arch.params.len()];
    let device = Device::flex();
    let whole = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&batch),
        &ctx(),
        &device,
    );
    let a = Batch {
        features: batch.features[..3].to_vec(),
        labels: vec![0],
        dim: 3,
    };
    let b = Batch {
        features: batch.features[3..].to_vec(),
        labels: vec![1, 1],
        dim: 3,
    };
    let ga = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&a),
        &ctx(),
        &device,
    );
    let gb = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&b),
        &ctx(),
        &device,
    );
    for i in 0..whole.grad.len() {
        assert!((ga.grad[i] + gb.grad[i] - whole.grad[i]).abs() < 1e-5);
    }
    assert!((ga.stats.loss_sum + gb.stats.loss_sum - whole.stats.loss_sum).abs() < 1e-5);
    let empty = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        &[Batch {
            dim: 3,
            ..Batch::default()
        }],
        &ctx(),
        &device,
    );
    assert!(empty.grad.iter().all(|&g| g == 0.0) && empty.stats.samples == 0);
}

#[test]
fn frozen_parameters_are_left_out_of_the_gradient() {
    let (arch, params, batch) = tiny();
    let mut mask = vec![true; arch.params.len()];
    mask[0] = false;
    let r = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&batch),
        &ctx(),
        &Device::flex(),
    );
    assert_eq!(r.grad.len(), arch.num_params() - arch.params[0].numel());
}

#[test]
fn stages_are_laid_end_to_end() {
    let stream = |role: Role, batch: usize| StreamDef {
        data: DataKey::role(role),
        batch,
    };
    let defs = vec![
        StageDef::new(
            "a",
            vec![stream(Role::Source, 10), stream(Role::TargetUnlabelled, 4)],
            Length::Epochs(2),
        ),
        StageDef::new(
            "b",
            vec![stream(Role::TargetLabelled, 10)],
            Length::Steps(7),
        ),
    ];
    let stages = plan_stages(&defs, |k| {
        if *k == DataKey::role(Role::Source) {
            95
        } else {
            20
        }
    });
    assert_eq!(stages[0].steps, 20);
    assert_eq!(stages[0].steps_per_epoch(), 10);
    // The second stream cycles on its own: 20 samples in batches of 4.
    assert_eq!(stages[0].streams[1].steps_per_epoch, 5);
    assert_eq!(stages[0].streams[1].position(7), (1, 2));
    assert_eq!(stages[0].global_counts(9), vec![5, 4]);
    assert_eq!(stages[1].first_step, 20);
    assert_eq!(stages[1].steps, 7);
    assert!(stages[1].contains(26) && !stages[1].contains(27));
}

/// A job spec around `method` (TOML of the `[method]` table and anything after it).
fn spec_with(method: &str) -> JobSpec {
    let text = format!(
        r#"
name = "t"
seed = 3
[model]
kind = "mlp"
hidden = [4]
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 3
steps = 5
[[datasets]]
name = "moons"
role = "eval"
[method]
{method}
"#
    );
    toml::from_str(&text).expect("test spec parses")
}

fn step_ctx(stage: usize, counts: Vec<usize>) -> StepContext {
    StepContext {
        stage,
        step_in_stage: 2,
        stage_steps: 10,
        global_counts: counts,
    }
}

fn arch_for(method: &dyn Method, classes: usize) -> Architecture {
    Architecture::with_layout(
        &crate::spec::ModelSpec::Mlp { hidden: vec![4] },
        &[3],
        classes,
        &method.layout(classes),
    )
    .expect("valid")
}

/// Gradient of every parameter (zeros for frozen ones) by name.
fn grads_by_name(
    method: &dyn Method,
    arch: &Architecture,
    params: &Params,
    mask: &[bool],
    batches: &[Batch],
    ctx: &StepContext,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let r = compute_step(method, arch, params, mask, batches, ctx, &Device::flex());
    let mut out = std::collections::BTreeMap::new();
    let mut off = 0;
    for (p, m) in arch.params.iter().zip(mask) {
        if *m {
            out.insert(p.name.clone(), r.grad[off..off + p.numel()].to_vec());
            off += p.numel();
        }
    }
    assert_eq!(off, r.grad.len());
    out
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn gradient_reversal_is_identity_forward_and_minus_lambda_backward() {
    let device = Device::flex().autodiff();
    let x = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0], [3]), &device)
        .require_grad();
    let c = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, -3.0], [3]), &device);
    let y = reverse_gradient(x.clone(), 0.7);
    let yv: Vec<f32> = y.clone().into_data().iter::<f32>().collect();
    assert_eq!(yv, vec![0.5, -1.0, 2.0]);
    let g = (y * c).sum().backward();
    let gx: Vec<f32> = x
        .grad(&g)
        .expect("grad")
        .into_data()
        .iter::<f32>()
        .collect();
    for (a, b) in gx.iter().zip([1.0f32, 2.0, -3.0]) {
        assert!((a + 0.7 * b).abs() < 1e-6, "{gx:?}");
    }
    // λ_p rises from 0 towards the maximum.
    assert_eq!(grl_lambda(1.0, 10.0, 0.0), 0.0);
    assert!((grl_lambda(1.0, 10.0, 1.0) - 0.99991).abs() < 1e-4);
}

#[test]
fn dann_extractor_gets_minus_lambda_times_the_domain_gradient() {
    // No labelled samples, so only the domain loss flows. Its gradient into the extractor
    // through the reversal layer must be −λ times what the same loss gives without reversal
    // (DomainOnly below), while the domain head's own gradient is unchanged.
    let dann = Dann::new(&spec_with(
        "kind = \"dann\"\nlambda_max = 1.0\ngamma = 0.0\ndomain_hidden = [8]",
    ));
    let arch = arch_for(&dann, 2);
    let params = arch.init(4);
    let mask = vec![true; arch.params.len()];
    let target = Batch {
        features: vec![0.1, 0.2, 0.3, -0.4, 0.5, 0.1],
        labels: vec![0, 0],
        dim: 3,
    };
    let batches = [
        Batch {
            dim: 3,
            ..Batch::default()
        },
        target,
    ];
    // γ = 0 makes λ_p = 0: the reversal passes no gradient into the extractor at all.
    let g0 = grads_by_name(
        &dann,
        &arch,
        &params,
        &mask,
        &batches,
        &step_ctx(0, vec![1, 2]),
    );
    assert!(norm(&g0["features.fc1.weight"]) == 0.0);
    assert!(norm(&g0["domain_head.fc2.bias"]) > 0.0);
    // With γ large, λ_p = λ_max·(2/(1+e^(−γp))−1) = λ_max = 0.5 at p = 0.2.
    let big = Dann::new(&spec_with(
        "kind = \"dann\"\nlambda_max = 0.5\ngamma = 1000.0\ndomain_hidden = [8]",
    ));
    let g = grads_by_name(
        &big,
        &arch,
        &params,
        &mask,
        &batches,
        &step_ctx(0, vec![1, 2]),
    );
    let plain = DomainOnly;
    let gp = grads_by_name(
        &plain,
        &arch,
        &params,
        &mask,
        &batches,
        &step_ctx(0, vec![1, 2]),
    );
    for name in ["features.fc1.weight", "features.fc1.bias"] {
        for (r, p) in g[name].iter().zip(&gp[name]) {
            assert!((r + 0.5 * p).abs() < 1e-5, "{name}: {r} vs −0.5 × {p}");
        }
    }
    for (r, p) in g["domain_head.fc2.weight"]
        .iter()
        .zip(&gp["domain_head.fc2.weight"])
    {
        assert!((r - p).abs() < 1e-5);
    }
}

/// DANN's domain loss with no reversal: the reference of the test above.
struct DomainOnly;
impl Method for DomainOnly {
    fn name(&self) -> &'static str {
        "domain-only"
    }
    fn stages(&self) -> Vec<StageDef> {
        Vec::new()
    }
    fn loss(
        &self,
        arch: &Architecture,
        p: &[Tensor<1>],
        b: &[Batch],
        ctx: &StepContext,
        d: &Device,
    ) -> BatchLoss {
        let (x, _) = batch_tensors(&b[1], d);
        let f = arch.forward(p, x).features;
        let head = arch.head_index("domain_head").expect("head");
        let z = arch.head(p, head, f);
        let loss = burn::tensor::activation::log_sigmoid(z)
            .sum()
            .neg()
            .mul_scalar(0.5 * ctx.stream_scale(1));
        BatchLoss { loss, correct: 0 }
    }
}

fn conservative(penalty: &str, lambda: f64) -> Conservative {
    Conservative::new(&spec_with(&format!(
        "kind = \"conservative\"\nsource_steps = 2\npenalty = \"{penalty}\"\nlambda = {lambda}"
    )))
}

/// Parameters whose live part differs from the anchor copy.
fn drifted(arch: &Architecture) -> Params {
    let mut p = arch.init(1);
    for (i, s) in arch.params.iter().enumerate() {
        if s.name.starts_with("anchor.") {
            let live = arch.index_of(&s.name["anchor.".len()..]).expect("pair");
            p.values_mut()[i] = p.values()[live].iter().map(|v| v + 0.3).collect();
        }
    }
    p
}

#[test]
fn l2sp_gradient_is_two_lambda_theta_minus_theta0() {
    let (_, _, batch) = tiny();
    let with = conservative("l2_sp", 0.25);
    let without = conservative("l2_sp", 0.0);
    let arch = arch_for(&with, 2);
    let params = drifted(&arch);
    let mask = with.trainable(&arch, 1);
    let b = std::slice::from_ref(&batch);
    let ctx = step_ctx(1, vec![3]);
    let g1 = grads_by_name(&with, &arch, &params, &mask, b, &ctx);
    let g0 = grads_by_name(&without, &arch, &params, &mask, b, &ctx);
    assert!(
        !g1.keys().any(|k| k.starts_with("anchor.")),
        "θ₀ is never flattened"
    );
    let n = batch.len() as f32;
    for (name, g) in &g1 {
        let live = &params.values()[arch.index_of(name).expect("exists")];
        let anchor = &params.values()[arch.index_of(&format!("anchor.{name}")).expect("pair")];
        for k in 0..g.len() {
            // Divided by the group's sample count, as the all-reduce does.
            let penalty = (g[k] - g0[name][k]) / n;
            let want = 2.0 * 0.25 * (live[k] - anchor[k]);
            assert!(
                (penalty - want).abs() < 1e-5,
                "{name}[{k}]: {penalty} vs {want}"
            );
        }
    }
}

#[test]
fn output_distances_vanish_when_the_models_agree() {
    let (_, _, batch) = tiny();
    for penalty in ["output_kl", "feature_l2"] {
        let with = conservative(penalty, 3.0);
        let without = conservative(penalty, 0.0);
        let arch = arch_for(&with, 2);
        let mut params = arch.init(1);
        let stage = plan_stages(&with.stages(), |_| 10).remove(1);
        start_stage(&arch, &mut params, &stage, 1, 1);
        let mask = with.trainable(&arch, 1);
        let b = std::slice::from_ref(&batch);
        let ctx = step_ctx(1, vec![3]);
        let device = Device::flex();
        let r1 = compute_step(&with, &arch, &params, &mask, b, &ctx, &device);
        let r0 = compute_step(&without, &arch, &params, &mask, b, &ctx, &device);
        assert!(
            (r1.stats.loss_sum - r0.stats.loss_sum).abs() < 1e-6,
            "{penalty}"
        );
        for (a, z) in r1.grad.iter().zip(&r0.grad) {
            assert!((a - z).abs() < 1e-6, "{penalty}");
        }
        // And it pulls once they differ.
        let apart = drifted(&arch);
        let r1 = compute_step(&with, &arch, &apart, &mask, b, &ctx, &device);
        let r0 = compute_step(&without, &arch, &apart, &mask, b, &ctx, &device);
        assert!(r1.stats.loss_sum > r0.stats.loss_sum + 1e-4, "{penalty}");
    }
}

#[test]
fn frozen_layers_get_no_gradient_and_do_not_move() {
    let (_, _, batch) = tiny();
    let lt = LayerTransfer::new(&spec_with(
        "kind = \"layer_transfer\"\nsource_steps = 2\nfreeze = [\"features.*\"]",
    ));
    let arch = arch_for(&lt, 2);
    let mut params = arch.init(2);
    let before = params.clone();
    let mask = lt.trainable(&arch, 1);
    assert_eq!(lt.trainable(&arch, 0), vec![true; arch.params.len()]);
    let frozen: Vec<usize> = (0..arch.params.len()).filter(|&i| !mask[i]).collect();
    assert_eq!(frozen.len(), 2, "features.fc1 weight and bias");
    let spec = spec_with("kind = \"supervised\"");
    let mut opt = crate::optim::Optimizer::new(&spec.optimizer, params.flat_len(&mask));
    for _ in 0..5 {
        let r = compute_step(
            &lt,
            &arch,
            &params,
            &mask,
            std::slice::from_ref(&batch),
            &step_ctx(1, vec![3]),
            &Device::flex(),
        );
        assert_eq!(r.grad.len(), params.flat_len(&mask));
        assert!(r.grad.len() < arch.num_params());
        let mut flat = params.flatten(&mask);
        opt.step(&mut flat, &r.grad, 0.1);
        params.unflatten(&mask, &flat).expect("len");
    }
    for (i, trains) in mask.iter().enumerate() {
        if *trains {
            assert_ne!(
                params.values()[i],
                before.values()[i],
                "{} trains",
                arch.params[i].name
            );
        } else {
            assert_eq!(
                params.values()[i],
                before.values()[i],
                "{} is frozen",
                arch.params[i].name
            );
        }
    }
}

#[test]
fn each_task_head_learns_only_from_its_task_and_the_trunk_from_all() {
    let (_, _, batch) = tiny();
    let mt = Multitask::new(&spec_with(
        "kind = \"multitask\"\n[[method.tasks]]\nname = \"a\"\n[[method.tasks]]\nname = \"b\"",
    ));
    let arch = arch_for(&mt, 2);
    let params = arch.init(3);
    let mask = vec![true; arch.params.len()];
    let empty = Batch {
        dim: 3,
        ..Batch::default()
    };
    let only_a = [batch.clone(), empty.clone()];
    let only_b = [empty, batch.clone()];
    let ga = grads_by_name(
        &mt,
        &arch,
        &params,
        &mask,
        &only_a,
        &step_ctx(0, vec![3, 3]),
    );
    let gb = grads_by_name(
        &mt,
        &arch,
        &params,
        &mask,
        &only_b,
        &step_ctx(0, vec![3, 3]),
    );
    assert!(norm(&ga["task_heads.a.fc1.weight"]) > 0.0);
    assert_eq!(norm(&ga["task_heads.b.fc1.weight"]), 0.0);
    assert!(norm(&gb["task_heads.b.fc1.weight"]) > 0.0);
    assert_eq!(norm(&gb["task_heads.a.fc1.weight"]), 0.0);
    // The trunk learns from both, and from both together as the sum.
    let both = grads_by_name(
        &mt,
        &arch,
        &params,
        &mask,
        &[batch.clone(), batch],
        &step_ctx(0, vec![3, 3]),
    );
    for k in 0..both["features.fc1.weight"].len() {
        let sum = ga["features.fc1.weight"][k] + gb["features.fc1.weight"][k];
        assert!((both["features.fc1.weight"][k] - sum).abs() < 1e-5);
    }
    assert!(norm(&ga["features.fc1.weight"]) > 0.0 && norm(&gb["features.fc1.weight"]) > 0.0);
}

#[test]
fn progressive_keeps_earlier_columns_and_trains_laterals() {
    let (_, _, batch) = tiny();
    let pn = Progressive::new(&spec_with(
        "kind = \"progressive\"\n[[method.tasks]]\nname = \"a\"\n[[method.tasks]]\nname = \"b\"",
    ));
    let arch = arch_for(&pn, 2);
    assert!(
        arch.params
            .iter()
            .any(|p| p.name.starts_with("columns.1.laterals."))
    );
    let mut params = arch.init(5);
    let device = Device::flex();
    let column0 = |p: &Params| -> Vec<u32> {
        let t = arch.tensors(p, &device, &[]);
        let (x, _) = batch_tensors(&batch, &device);
        arch.forward_column(&t, 0, x)
            .logits
            .into_data()
            .iter::<f32>()
            .map(f32::to_bits)
            .collect()
    };
    let before = column0(&params);
    let mask = pn.trainable(&arch, 1);
    let g = grads_by_name(
        &pn,
        &arch,
        &params,
        &mask,
        std::slice::from_ref(&batch),
        &step_ctx(1, vec![3]),
    );
    assert!(g.keys().all(|k| k.starts_with("columns.1.")));
    let laterals: Vec<&String> = g.keys().filter(|k| k.contains("laterals")).collect();
    assert!(!laterals.is_empty());
    assert!(
        laterals.iter().any(|k| norm(&g[*k]) > 0.0),
        "laterals receive gradient"
    );
    let spec = spec_with("kind = \"supervised\"");
    let mut opt = crate::optim::Optimizer::new(&spec.optimizer, params.flat_len(&mask));
    for _ in 0..5 {
        let r = compute_step(
            &pn,
            &arch,
            &params,
            &mask,
            std::slice::from_ref(&batch),
            &step_ctx(1, vec![3]),
            &device,
        );
        let mut flat = params.flatten(&mask);
        opt.step(&mut flat, &r.grad, 0.1);
        params.unflatten(&mask, &flat).expect("len");
    }
    assert_eq!(
        column0(&params),
        before,
        "column 0 outputs are unchanged bit for bit"
    );
}

/// Evaluates zero-shot learning over 3-value inputs with a network whose output is its input
/// (an MLP without hidden layers and an identity head), so each sample's input is the
/// prediction, before the sigmoid for binary tables.
fn evaluate_zero_shot(
    method: &str,
    cv: &crate::zeroshot::ClassVectors,
    rows: &[(u32, [f32; 3])],
) -> BTreeMap<String, f64> {
    let zs = ZeroShot::new(&spec_with(method), Some(cv.clone()));
    let arch = Architecture::with_layout(
        &crate::spec::ModelSpec::Mlp { hidden: vec![] },
        &[3],
        cv.rows,
        &zs.layout(cv.rows),
    )
    .expect("valid");
    let mut params = arch.init(0);
    params.values_mut()[0] = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    params.values_mut()[1] = vec![0.0; 3];
    let ds = crate::data::Dataset::new(
        "zs",
        vec![3],
        rows.iter().flat_map(|(_, v)| v.to_vec()).collect(),
        rows.iter().map(|(c, _)| *c).collect(),
        cv.rows,
    )
    .expect("valid");
    let sets = vec![EvalSet {
        label: "target".into(),
        task: None,
        data: Arc::new(ds),
    }];
    let train = BTreeMap::new();
    zs.evaluate(
        &arch,
        &params,
        &EvalInputs {
            sets: &sets,
            train: &train,
        },
        &Device::flex(),
    )
    .metrics
}

#[test]
fn zero_shot_predicts_the_nearest_class_vector_unseen_included() {
    use crate::zeroshot::ClassVectors;
    // Four classes in a 3-attribute space; class 3 is unseen.
    let cv = ClassVectors::new(vec![
        vec![1.0, 0.0, 0.0],
        vec![0.0, 1.0, 0.0],
        vec![0.0, 0.0, 1.0],
        vec![3.0, 3.0, 3.0],
    ])
    .expect("valid");
    // Samples near each class vector, two of the unseen class.
    let m = evaluate_zero_shot(
        "kind = \"zero_shot\"\nunseen_classes = [3]\n[method.attributes]\nkind = \"builtin\"\ntable = \"seven_segment\"",
        &cv,
        &[
            (0, [0.9, 0.1, 0.0]),
            (1, [0.1, 0.8, 0.1]),
            (2, [0.0, 0.2, 0.9]),
            (3, [2.8, 3.1, 2.9]),
            (3, [3.2, 2.7, 3.0]),
        ],
    );
    assert_eq!(m["zsl_unseen_accuracy"], 1.0);
    assert_eq!(m["gzsl_seen_accuracy"], 1.0);
    assert_eq!(m["gzsl_unseen_accuracy"], 1.0);
    assert_eq!(m["target_accuracy"], 1.0);
    // The unseen samples are far from every seen class: novelty is perfectly ranked.
    assert_eq!(m["novelty_auroc"], 1.0);
}

#[test]
fn generalised_zero_shot_scores_every_class_as_the_job_does() {
    use crate::zeroshot::ClassVectors;
    // Predicted probabilities (0.02, 0.7, 0.9): nearest to class 0's [1, 1, 1], but more
    // likely under class 1's [0, 0, 0]. Class 1 is unseen, class 2 is far under both.
    let cv = ClassVectors::new(vec![
        vec![1.0, 1.0, 1.0],
        vec![0.0, 0.0, 0.0],
        vec![1.0, 0.0, 0.0],
    ])
    .expect("valid");
    assert!(cv.binary);
    let logit = |p: f32| (p / (1.0 - p)).ln();
    let rows = [(1, [logit(0.02), logit(0.7), logit(0.9)])];
    let method = |scoring: &str| {
        format!(
            "kind = \"zero_shot\"\nunseen_classes = [1]\nscoring = \"{scoring}\"\n[method.attributes]\nkind = \"builtin\"\ntable = \"seven_segment\""
        )
    };
    let by_likelihood = evaluate_zero_shot(&method("likelihood"), &cv, &rows);
    assert_eq!(by_likelihood["gzsl_unseen_accuracy"], 1.0);
    assert_eq!(by_likelihood["zsl_unseen_accuracy"], 1.0);
    assert!(by_likelihood.contains_key("zsl_unseen_accuracy_by_nearest"));
    let by_nearest = evaluate_zero_shot(&method("nearest"), &cv, &rows);
    assert_eq!(by_nearest["gzsl_unseen_accuracy"], 0.0);
    assert!(by_nearest.contains_key("zsl_unseen_accuracy_by_likelihood"));
}

#[test]
fn dann_trade_off_scales_the_domain_gradient_and_the_steps_ramp_follows_tllib() {
    // Only the domain loss flows (no labelled samples): the domain head's gradient scales
    // with the trade-off, and a trade-off of 0 leaves the head nothing to learn.
    let method = |extra: &str| {
        Dann::new(&spec_with(&format!(
            "kind = \"dann\"\nlambda_max = 1.0\ngamma = 10.0\ndomain_hidden = [8]\n{extra}"
        )))
    };
    let one = method("");
    let arch = arch_for(&one, 2);
    let params = arch.init(4);
    let mask = vec![true; arch.params.len()];
    let batches = [
        Batch {
            dim: 3,
            ..Batch::default()
        },
        Batch {
            features: vec![0.1, 0.2, 0.3, -0.4, 0.5, 0.1],
            labels: vec![0, 0],
            dim: 3,
        },
    ];
    let ctx = step_ctx(0, vec![1, 2]);
    let g1 = grads_by_name(&one, &arch, &params, &mask, &batches, &ctx);
    let g3 = grads_by_name(
        &method("trade_off = 3.0"),
        &arch,
        &params,
        &mask,
        &batches,
        &ctx,
    );
    let g0 = grads_by_name(
        &method("trade_off = 0.0"),
        &arch,
        &params,
        &mask,
        &batches,
        &ctx,
    );
    let name = "domain_head.fc2.weight";
    assert!(norm(&g1[name]) > 0.0);
    for (a, b) in g3[name].iter().zip(&g1[name]) {
        assert!((a - 3.0 * b).abs() < 1e-5, "{a} vs 3 × {b}");
    }
    assert_eq!(norm(&g0[name]), 0.0);

    // TLlib's warm start: 2/(1+e^(−i/1000)) − 1, whatever the stage's length; the paper's
    // ramp over progress is unchanged.
    let steps =
        GrlSchedule::of(&spec_with("kind = \"dann\"\nramp = \"steps\"").method).expect("dann");
    assert_eq!(steps.lambda(0, 5000), 0.0);
    let at = |i: u64| 2.0 / (1.0 + (-(i as f64) / 1000.0).exp()) - 1.0;
    for (i, len) in [(1000, 5000), (1000, 100_000), (2500, 5000)] {
        assert!(
            (steps.lambda(i, len) - at(i)).abs() < 1e-12,
            "step {i} of {len}"
        );
    }
    let scaled = GrlSchedule::of(
        &spec_with("kind = \"dann\"\nramp = \"steps\"\nramp_steps = 10\nlambda_max = 0.5").method,
    )
    .expect("dann");
    assert!((scaled.lambda(10, 20) - 0.5 * at(1000)).abs() < 1e-12);
    let progress = GrlSchedule::of(&spec_with("kind = \"dann\"").method).expect("dann");
    assert!((progress.lambda(2, 10) - grl_lambda(1.0, 10.0, 0.2)).abs() < 1e-12);
}
