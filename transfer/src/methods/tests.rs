use burn::tensor::Device;

use super::*;
use crate::spec::ModelSpec;

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
    fn trainable(&self, arch: &Architecture, _: usize) -> Vec<bool> {
        vec![true; arch.params.len()]
    }
    fn loss(
        &self,
        arch: &Architecture,
        p: &[burn::tensor::Tensor<1>],
        b: &Batch,
        _: usize,
        d: &Device,
    ) -> BatchLoss {
        classification_loss(arch, p, b, d)
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let (arch, params, batch) = tiny();
    let mask = vec![true; arch.params.len()];
    let device = Device::flex();
    let r = compute_step(&AllSupervised, &arch, &params, &mask, &batch, 0, &device);
    assert_eq!(r.grad.len(), arch.num_params());
    let loss_at =
        |p: &Params| compute_step(&AllSupervised, &arch, p, &mask, &batch, 0, &device).loss_sum;
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
    let whole = compute_step(&AllSupervised, &arch, &params, &mask, &batch, 0, &device);
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
    let ga = compute_step(&AllSupervised, &arch, &params, &mask, &a, 0, &device);
    let gb = compute_step(&AllSupervised, &arch, &params, &mask, &b, 0, &device);
    for i in 0..whole.grad.len() {
        assert!((ga.grad[i] + gb.grad[i] - whole.grad[i]).abs() < 1e-5);
    }
    assert!((ga.loss_sum + gb.loss_sum - whole.loss_sum).abs() < 1e-5);
    let empty = compute_step(
        &AllSupervised,
        &arch,
        &params,
        &mask,
        &Batch {
            dim: 3,
            ..Batch::default()
        },
        0,
        &device,
    );
    assert!(empty.grad.iter().all(|&g| g == 0.0) && empty.samples == 0);
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
        &batch,
        0,
        &Device::flex(),
    );
    assert_eq!(r.grad.len(), arch.num_params() - arch.params[0].numel());
}

#[test]
fn stages_are_laid_end_to_end() {
    let defs = vec![
        StageDef {
            name: "a".into(),
            train_role: Role::Source,
            length: Length::Epochs(2),
            reset_prefixes: vec![],
        },
        StageDef {
            name: "b".into(),
            train_role: Role::TargetLabelled,
            length: Length::Steps(7),
            reset_prefixes: vec![],
        },
    ];
    let stages = plan_stages(&defs, 10, |r| if r == Role::Source { 95 } else { 20 });
    assert_eq!(stages[0].steps, 20);
    assert_eq!(stages[0].steps_per_epoch, 10);
    assert_eq!(stages[1].first_step, 20);
    assert_eq!(stages[1].steps, 7);
    assert!(stages[1].contains(26) && !stages[1].contains(27));
}
