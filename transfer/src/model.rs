//! The networks, written functionally over a flat list of parameters.
//!
//! graft owns its parameters as plain `f32` vectors (in [`Params`]), because everything a
//! distributed trainer does with them — flatten the trainable ones in a fixed order, sum them
//! across workers, apply one optimizer step everywhere, hash them, checkpoint them — is
//! easiest and exact on flat memory. Each step builds Burn tensors from those vectors on the
//! worker's [`Device`], runs the forward pass here, and reads the gradients back.
//!
//! Every network is a feature extractor (`features.*`) plus a label head (`label_head.*`),
//! so that later methods add heads (`domain_head.*`, `task_heads.*`) and columns.

use burn::tensor::module::{conv2d, linear, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData, activation::relu};

use crate::params::{FlatLengthError, Params};
use crate::rng::SplitMix64;
use crate::spec::ModelSpec;

/// Why a network cannot be built for the data it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The input does not suit the architecture.
    #[error("model {model}: {reason}")]
    Input {
        /// The architecture.
        model: &'static str,
        /// What does not fit.
        reason: String,
    },
}

/// One parameter tensor of a network.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Dotted name, also its name in safetensors files.
    pub name: String,
    /// Shape; linear weights are `[in, out]` (Burn's layout), conv weights `[out, in, kh, kw]`.
    pub shape: Vec<usize>,
    /// Inputs feeding one output, for the initialisation bound.
    pub fan_in: usize,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Layer {
    Linear { weight: usize, bias: usize },
    Conv { weight: usize, bias: usize },
}

/// A network built for a given input shape and class count.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// What was asked for.
    pub model: ModelSpec,
    /// Per-sample input shape (`[c, h, w]` for images).
    pub input_shape: Vec<usize>,
    /// Output classes of the label head.
    pub num_classes: usize,
    /// The parameters, in the fixed order used for flattening.
    pub params: Vec<ParamSpec>,
    features: Vec<Layer>,
    head: Vec<Layer>,
    /// `[c, h, w]` after the convolutions (CNN only), to flatten into the dense layers.
    conv_out: Option<[usize; 3]>,
}

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// # Shapes
    /// `[batch, feature_dim]`: the extractor's output.
    pub features: Tensor<2>,
    /// # Shapes
    /// `[batch, num_classes]`.
    pub logits: Tensor<2>,
}

impl Architecture {
    /// Builds the network of `model` for samples of `input_shape` and `num_classes` classes.
    ///
    /// # Errors
    /// [`ModelError`] when the input does not suit the architecture (a CNN needs images large
    /// enough for two 5×5 convolutions and pools).
    pub fn new(
        model: &ModelSpec,
        input_shape: &[usize],
        num_classes: usize,
    ) -> Result<Self, ModelError> {
        let mut arch = Architecture {
            model: model.clone(),
            input_shape: input_shape.to_vec(),
            num_classes,
            params: Vec::new(),
            features: Vec::new(),
            head: Vec::new(),
            conv_out: None,
        };
        let input_dim: usize = input_shape.iter().product();
        if input_dim == 0 || num_classes < 2 {
            return Err(ModelError::Input {
                model: "any",
                reason: format!(
                    "needs a non-empty input and >= 2 classes, got {input_shape:?} and {num_classes}"
                ),
            });
        }
        match model {
            ModelSpec::Mlp { hidden } => {
                let mut width = input_dim;
                for (i, &h) in hidden.iter().enumerate() {
                    let l = arch.push_linear(&format!("features.fc{}", i + 1), width, h);
                    arch.features.push(l);
                    width = h;
                }
                let l = arch.push_linear("label_head.fc", width, num_classes);
                arch.head.push(l);
            }
            ModelSpec::DigitsCnn => {
                let [c, h, w] = match input_shape {
                    [c, h, w] => [*c, *h, *w],
                    _ => {
                        return Err(ModelError::Input {
                            model: "digits_cnn",
                            reason: format!(
                                "needs image input [channels, height, width], got {input_shape:?}"
                            ),
                        });
                    }
                };
                // conv 5x5 (valid) then max-pool 2, twice, as in Ganin et al. (2016).
                let (h1, w1) = ((h.saturating_sub(4)) / 2, (w.saturating_sub(4)) / 2);
                let (h2, w2) = ((h1.saturating_sub(4)) / 2, (w1.saturating_sub(4)) / 2);
                if h2 == 0 || w2 == 0 {
                    return Err(ModelError::Input {
                        model: "digits_cnn",
                        reason: format!("images of {h}x{w} are too small (needs at least 16x16)"),
                    });
                }
                let l = arch.push_conv("features.conv1", c, 32, 5);
                arch.features.push(l);
                let l = arch.push_conv("features.conv2", 32, 48, 5);
                arch.features.push(l);
                arch.conv_out = Some([48, h2, w2]);
                let flat = 48 * h2 * w2;
                let l = arch.push_linear("label_head.fc1", flat, 100);
                arch.head.push(l);
                let l = arch.push_linear("label_head.fc2", 100, 100);
                arch.head.push(l);
                let l = arch.push_linear("label_head.fc3", 100, num_classes);
                arch.head.push(l);
            }
        }
        Ok(arch)
    }

    fn push_linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Layer {
        let weight = self.params.len();
        self.params.push(ParamSpec {
            name: format!("{name}.weight"),
            shape: vec![d_in, d_out],
            fan_in: d_in,
        });
        self.params.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![d_out],
            fan_in: d_in,
        });
        Layer::Linear {
            weight,
            bias: weight + 1,
        }
    }

    fn push_conv(&mut self, name: &str, c_in: usize, c_out: usize, k: usize) -> Layer {
        let weight = self.params.len();
        let fan_in = c_in * k * k;
        self.params.push(ParamSpec {
            name: format!("{name}.weight"),
            shape: vec![c_out, c_in, k, k],
            fan_in,
        });
        self.params.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![c_out],
            fan_in,
        });
        Layer::Conv {
            weight,
            bias: weight + 1,
        }
    }

    /// Elements in one input sample.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(ParamSpec::numel).sum()
    }

    /// Index of a parameter by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// Initial value of parameter `i`: uniform in ±1/√fan_in (PyTorch's default for linear and
    /// conv layers), from a stream of `seed` that depends on the parameter's name only, so every
    /// process draws the same weights.
    pub fn init_param(&self, i: usize, seed: u64) -> Vec<f32> {
        let spec = &self.params[i];
        let stream = spec.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = SplitMix64::derive(seed, stream);
        let bound = 1.0 / (spec.fan_in.max(1) as f64).sqrt();
        (0..spec.numel())
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect()
    }

    /// All parameters at their initial values.
    pub fn init(&self, seed: u64) -> Params {
        Params::new(
            (0..self.params.len())
                .map(|i| self.init_param(i, seed))
                .collect(),
        )
    }

    /// Parameters from every tensor concatenated in order (the inverse of
    /// [`Params::flatten_all`]).
    ///
    /// # Errors
    /// [`FlatLengthError`] when `flat` does not hold exactly [`Architecture::num_params`] values.
    pub fn params_from_flat(&self, flat: &[f32]) -> Result<Params, FlatLengthError> {
        let mut params = Params::new(self.params.iter().map(|p| vec![0.0; p.numel()]).collect());
        params.unflatten(&vec![true; self.params.len()], flat)?;
        Ok(params)
    }

    /// Puts the parameters on `device` as rank-1 tensors; `track[i]` marks those that need a
    /// gradient (on an autodiff device).
    pub fn tensors(&self, params: &Params, device: &Device, track: &[bool]) -> Vec<Tensor<1>> {
        params
            .values()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device);
                if track.get(i).copied().unwrap_or(false) {
                    t.require_grad()
                } else {
                    t
                }
            })
            .collect()
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// `x`: `[batch, input_dim]` → features `[batch, feature_dim]`, logits `[batch, num_classes]`.
    pub fn forward(&self, p: &[Tensor<1>], x: Tensor<2>) -> Outputs {
        let features = self.extract(p, x);
        let logits = self.head(p, features.clone());
        Outputs { features, logits }
    }

    /// The feature extractor alone.
    ///
    /// # Shapes
    /// `[batch, input_dim]` → `[batch, feature_dim]`.
    pub fn extract(&self, p: &[Tensor<1>], x: Tensor<2>) -> Tensor<2> {
        match self.conv_out {
            None => self
                .features
                .iter()
                .fold(x, |h, l| relu(self.apply_linear(p, l, h))),
            Some([c, h, w]) => {
                let [b, _] = x.dims();
                let [ci, hi, wi] = [
                    self.input_shape[0],
                    self.input_shape[1],
                    self.input_shape[2],
                ];
                let mut t: Tensor<4> = x.reshape([b, ci, hi, wi]);
                for l in &self.features {
                    let Layer::Conv { weight, bias } = l else {
                        continue;
                    };
                    let wshape = &self.params[*weight].shape;
                    let wt: Tensor<4> = p[*weight]
                        .clone()
                        .reshape([wshape[0], wshape[1], wshape[2], wshape[3]]);
                    t = conv2d(
                        t,
                        wt,
                        Some(p[*bias].clone()),
                        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
                    );
                    t = max_pool2d(relu(t), MaxPoolOptions::new([2, 2]));
                }
                t.reshape([b, c * h * w])
            }
        }
    }

    /// The label head on extracted features.
    ///
    /// # Shapes
    /// `[batch, feature_dim]` → `[batch, num_classes]`.
    pub fn head(&self, p: &[Tensor<1>], features: Tensor<2>) -> Tensor<2> {
        let last = self.head.len().saturating_sub(1);
        self.head.iter().enumerate().fold(features, |h, (i, l)| {
            let y = self.apply_linear(p, l, h);
            if i == last { y } else { relu(y) }
        })
    }

    fn apply_linear(&self, p: &[Tensor<1>], layer: &Layer, x: Tensor<2>) -> Tensor<2> {
        let (Layer::Linear { weight, bias } | Layer::Conv { weight, bias }) = layer;
        let s = &self.params[*weight].shape;
        let w: Tensor<2> = p[*weight].clone().reshape([s[0], s[1]]);
        linear(x, w, Some(p[*bias].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_cnn_matches_the_paper_on_28x28() {
        let a = Architecture::new(&ModelSpec::DigitsCnn, &[1, 28, 28], 10).expect("valid");
        let fc1 = &a.params[a.index_of("label_head.fc1.weight").expect("exists")];
        assert_eq!(fc1.shape, vec![768, 100]);
        assert!(Architecture::new(&ModelSpec::DigitsCnn, &[2], 2).is_err());
        assert!(Architecture::new(&ModelSpec::DigitsCnn, &[1, 8, 8], 10).is_err());
    }

    #[test]
    fn whole_states_round_trip_through_one_flat_vector() {
        let a = Architecture::new(&ModelSpec::Mlp { hidden: vec![3] }, &[2], 2).expect("valid");
        let p = a.init(9);
        let flat = p.flatten_all();
        assert_eq!(flat.len(), a.num_params());
        assert_eq!(a.params_from_flat(&flat).expect("fits"), p);
        assert!(a.params_from_flat(&flat[1..]).is_err());
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let a = Architecture::new(&ModelSpec::Mlp { hidden: vec![8] }, &[4], 3).expect("valid");
        assert_eq!(a.init(1), a.init(1));
        assert_ne!(a.init(1), a.init(2));
        let p = a.init(1);
        assert!(p.values()[0].iter().all(|v| v.abs() <= 0.5 + 1e-6));
    }

    #[test]
    fn forward_shapes() {
        let device = Device::flex();
        for (model, shape) in [
            (
                ModelSpec::Mlp {
                    hidden: vec![16, 8],
                },
                vec![1, 28, 28],
            ),
            (ModelSpec::DigitsCnn, vec![1, 28, 28]),
        ] {
            let a = Architecture::new(&model, &shape, 10).expect("valid");
            let p = a.tensors(&a.init(0), &device, &[]);
            let x = Tensor::<2>::zeros([3, 784], &device);
            let out = a.forward(&p, x);
            assert_eq!(out.logits.dims(), [3, 10]);
        }
    }
}
