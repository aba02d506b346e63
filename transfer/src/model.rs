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

/// A head on top of column 0's features: a small MLP (ReLU between layers).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadDef {
    /// Name prefix of its parameters (`domain_head`, `task_heads.mnist`).
    pub prefix: String,
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Output width.
    pub outputs: usize,
}

/// One column: a copy of the model's trunk, optionally with its label head.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Name prefix of its parameters (empty for the main network, `anchor.` for the frozen
    /// source copy of conservative training, `columns.N.` for progressive networks).
    pub prefix: String,
    /// Width of its label head's output; `None` for a trunk alone, which then ends with the
    /// label head's hidden layers (so heads on it share all but their last layer).
    pub outputs: Option<usize>,
    /// Whether every earlier column feeds each of its layers through a lateral connection.
    pub laterals: bool,
}

/// The parts a method needs beyond one trunk and one label head.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The columns; column 0's features feed the heads.
    pub columns: Vec<ColumnDef>,
    /// Extra heads on column 0's features.
    pub heads: Vec<HeadDef>,
}

impl Layout {
    /// One network with a label head of `outputs` outputs.
    pub fn single(outputs: usize) -> Self {
        Self {
            columns: vec![ColumnDef {
                prefix: String::new(),
                outputs: Some(outputs),
                laterals: false,
            }],
            heads: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Linear,
    /// 5×5 valid convolution, ReLU, 2×2 max-pool.
    Conv,
}

#[derive(Debug, Clone, PartialEq)]
struct Layer {
    kind: Kind,
    weight: usize,
    bias: usize,
    /// ReLU after it (every layer but a head's last).
    relu: bool,
    /// Lateral weights into it, one per earlier column (progressive networks).
    laterals: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    layers: Vec<Layer>,
    /// Layers that make up the trunk (the rest is the label head).
    trunk_len: usize,
}

/// A hidden activation: a feature map inside the convolutions, a matrix after.
#[derive(Debug, Clone)]
enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Act {
    fn flat(self) -> Tensor<2> {
        match self {
            Act::Flat(t) => t,
            Act::Map(t) => {
                let [b, c, h, w] = t.dims();
                t.reshape([b, c * h * w])
            }
        }
    }
}

/// A network built for a given input shape and class count.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// What was asked for.
    pub model: ModelSpec,
    /// Per-sample input shape (`[c, h, w]` for images).
    pub input_shape: Vec<usize>,
    /// Classes in the data (the label head's outputs unless the layout says otherwise).
    pub num_classes: usize,
    /// The parameters, in the fixed order used for flattening.
    pub params: Vec<ParamSpec>,
    /// The columns and heads.
    pub layout: Layout,
    columns: Vec<Column>,
    heads: Vec<Vec<Layer>>,
    /// `[c, h, w]` after the convolutions (CNN only), to flatten into the dense layers.
    conv_out: Option<[usize; 3]>,
}

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// # Shapes
    /// `[batch, feature_dim]`: the trunk's output.
    pub features: Tensor<2>,
    /// # Shapes
    /// `[batch, outputs]`: the label head's output (the features for a trunk alone).
    pub logits: Tensor<2>,
}

/// One trunk layer: name, kind, inputs, outputs.
type TrunkLayer = (String, Kind, usize, usize);

impl Architecture {
    /// Builds the single network of `model` (trunk + label head) for samples of
    /// `input_shape` and `num_classes` classes.
    ///
    /// # Errors
    /// [`ModelError`] when the input does not suit the architecture (a CNN needs images large
    /// enough for two 5×5 convolutions and pools).
    pub fn new(
        model: &ModelSpec,
        input_shape: &[usize],
        num_classes: usize,
    ) -> Result<Self, ModelError> {
        Self::with_layout(
            model,
            input_shape,
            num_classes,
            &Layout::single(num_classes),
        )
    }

    /// Builds the columns and heads of `layout`.
    ///
    /// # Errors
    /// As [`Architecture::new`], and for a layout without columns or with an empty output.
    pub fn with_layout(
        model: &ModelSpec,
        input_shape: &[usize],
        num_classes: usize,
        layout: &Layout,
    ) -> Result<Self, ModelError> {
        let input_dim: usize = input_shape.iter().product();
        if input_dim == 0 || num_classes < 2 {
            return Err(ModelError::Input {
                model: "any",
                reason: format!(
                    "needs a non-empty input and >= 2 classes, got {input_shape:?} and {num_classes}"
                ),
            });
        }
        if layout.columns.is_empty()
            || layout.columns.iter().any(|c| c.outputs == Some(0))
            || layout.heads.iter().any(|h| h.outputs == 0)
        {
            return Err(ModelError::Input {
                model: "any",
                reason: "needs at least one column and non-empty outputs".into(),
            });
        }
        let mut arch = Architecture {
            model: model.clone(),
            input_shape: input_shape.to_vec(),
            num_classes,
            params: Vec::new(),
            layout: layout.clone(),
            columns: Vec::new(),
            heads: Vec::new(),
            conv_out: None,
        };
        let (trunk, feature_dim, head_hidden) = arch.trunk_plan(input_dim)?;
        // Width of column 0's features, which the heads read.
        let mut shared_dim = feature_dim;
        for (ci, cdef) in layout.columns.iter().enumerate() {
            let laterals_from = if cdef.laterals { ci } else { 0 };
            let mut layers = Vec::new();
            for (li, (name, kind, d_in, d_out)) in trunk.iter().enumerate() {
                let prefix = format!("{}features.{name}", cdef.prefix);
                let mut l = arch.push_layer(&prefix, *kind, *d_in, *d_out, true);
                if li > 0 {
                    l.laterals = (0..laterals_from)
                        .map(|j| arch.push_lateral(&cdef.prefix, &prefix, j, *kind, *d_in, *d_out))
                        .collect();
                }
                layers.push(l);
            }
            if cdef.outputs.is_none() {
                // A trunk alone takes the label head's hidden layers too: tasks then share
                // everything but their last layer.
                let mut width = feature_dim;
                for (k, &h) in head_hidden.iter().enumerate() {
                    let name = format!("{}features.fc{}", cdef.prefix, k + 1);
                    layers.push(arch.push_layer(&name, Kind::Linear, width, h, true));
                    width = h;
                }
                if ci == 0 {
                    shared_dim = width;
                }
            }
            let trunk_len = layers.len();
            if let Some(outputs) = cdef.outputs {
                let widths = head_widths(feature_dim, &head_hidden, outputs);
                let single = widths.len() == 2;
                for (k, pair) in widths.windows(2).enumerate() {
                    let name = if single {
                        format!("{}label_head.fc", cdef.prefix)
                    } else {
                        format!("{}label_head.fc{}", cdef.prefix, k + 1)
                    };
                    let last = k + 2 == widths.len();
                    let mut l = arch.push_layer(&name, Kind::Linear, pair[0], pair[1], !last);
                    if trunk_len + k > 0 {
                        l.laterals = (0..laterals_from)
                            .map(|j| {
                                arch.push_lateral(
                                    &cdef.prefix,
                                    &name,
                                    j,
                                    Kind::Linear,
                                    pair[0],
                                    pair[1],
                                )
                            })
                            .collect();
                    }
                    layers.push(l);
                }
            }
            arch.columns.push(Column { layers, trunk_len });
        }
        for hdef in &layout.heads {
            let widths = head_widths(shared_dim, &hdef.hidden, hdef.outputs);
            let mut layers = Vec::new();
            for (k, pair) in widths.windows(2).enumerate() {
                let name = format!("{}.fc{}", hdef.prefix, k + 1);
                let last = k + 2 == widths.len();
                layers.push(arch.push_layer(&name, Kind::Linear, pair[0], pair[1], !last));
            }
            arch.heads.push(layers);
        }
        Ok(arch)
    }

    /// The trunk's layers, its feature width and the label head's hidden widths.
    fn trunk_plan(
        &mut self,
        input_dim: usize,
    ) -> Result<(Vec<TrunkLayer>, usize, Vec<usize>), ModelError> {
        match &self.model {
            ModelSpec::Mlp { hidden } => {
                let mut width = input_dim;
                let mut t = Vec::new();
                for (i, &h) in hidden.iter().enumerate() {
                    t.push((format!("fc{}", i + 1), Kind::Linear, width, h));
                    width = h;
                }
                Ok((t, width, label_head_hidden(&self.model)))
            }
            ModelSpec::DigitsCnn {} => {
                let [c, h, w] = match self.input_shape.as_slice() {
                    [c, h, w] => [*c, *h, *w],
                    other => {
                        return Err(ModelError::Input {
                            model: "digits_cnn",
                            reason: format!(
                                "needs image input [channels, height, width], got {other:?}"
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
                self.conv_out = Some([48, h2, w2]);
                Ok((
                    vec![
                        ("conv1".into(), Kind::Conv, c, 32),
                        ("conv2".into(), Kind::Conv, 32, 48),
                    ],
                    48 * h2 * w2,
                    label_head_hidden(&self.model),
                ))
            }
        }
    }

    fn push_layer(
        &mut self,
        name: &str,
        kind: Kind,
        d_in: usize,
        d_out: usize,
        relu: bool,
    ) -> Layer {
        let weight = self.params.len();
        let (shape, fan_in) = weight_shape(kind, d_in, d_out);
        self.params.push(ParamSpec {
            name: format!("{name}.weight"),
            shape,
            fan_in,
        });
        self.params.push(ParamSpec {
            name: format!("{name}.bias"),
            shape: vec![d_out],
            fan_in,
        });
        Layer {
            kind,
            weight,
            bias: weight + 1,
            relu,
            laterals: Vec::new(),
        }
    }

    /// A lateral connection from column `from` into layer `layer` of the column with
    /// `prefix`; no bias (the layer has one).
    fn push_lateral(
        &mut self,
        prefix: &str,
        layer: &str,
        from: usize,
        kind: Kind,
        d_in: usize,
        d_out: usize,
    ) -> usize {
        let i = self.params.len();
        let (shape, fan_in) = weight_shape(kind, d_in, d_out);
        let short = layer.strip_prefix(prefix).unwrap_or(layer);
        self.params.push(ParamSpec {
            name: format!("{prefix}laterals.from{from}.{short}.weight"),
            shape,
            fan_in,
        });
        i
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

    /// The layers of column 0 in order (trunk, then label head), as parameter-name prefixes
    /// (`features.conv1`, `label_head.fc3`): what `first:K` / `last:K` count.
    pub fn layer_names(&self) -> Vec<String> {
        self.columns
            .first()
            .map(|c| {
                c.layers
                    .iter()
                    .map(|l| {
                        let n = &self.params[l.weight].name;
                        n.strip_suffix(".weight").unwrap_or(n).to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
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

    /// The forward pass of column 0.
    ///
    /// # Shapes
    /// `x`: `[batch, input_dim]` → features `[batch, feature_dim]`, logits `[batch, outputs]`.
    pub fn forward(&self, p: &[Tensor<1>], x: Tensor<2>) -> Outputs {
        self.forward_column(p, 0, x)
    }

    /// The forward pass of column `column`, running first the earlier columns it has
    /// laterals from. A column past the last is read as the last.
    ///
    /// # Shapes
    /// As [`Architecture::forward`].
    pub fn forward_column(&self, p: &[Tensor<1>], column: usize, x: Tensor<2>) -> Outputs {
        let column = column.min(self.columns.len().saturating_sub(1));
        let lateral = self.layout.columns.get(column).is_some_and(|c| c.laterals);
        let first = if lateral { 0 } else { column };
        let mut done: Vec<Vec<Act>> = Vec::new();
        for c in first..=column {
            let acts = self.run_column(p, c, x.clone(), &done);
            done.push(acts);
        }
        let col = &self.columns[column];
        let mut acts = done.pop().unwrap_or_default();
        let features = match col.trunk_len {
            0 => x,
            n => acts
                .get(n - 1)
                .cloned()
                .map_or_else(|| x.clone(), Act::flat),
        };
        let logits = if col.layers.len() > col.trunk_len {
            acts.pop().map_or_else(|| features.clone(), Act::flat)
        } else {
            features.clone()
        };
        Outputs { features, logits }
    }

    /// Every layer's output in column `c`; `earlier` holds those of the columns before it.
    fn run_column(
        &self,
        p: &[Tensor<1>],
        c: usize,
        x: Tensor<2>,
        earlier: &[Vec<Act>],
    ) -> Vec<Act> {
        let col = &self.columns[c];
        let [b, _] = x.dims();
        let mut input = match self.conv_out {
            Some(_) => {
                let s = &self.input_shape;
                Act::Map(x.reshape([b, s[0], s[1], s[2]]))
            }
            None => Act::Flat(x),
        };
        let mut acts = Vec::with_capacity(col.layers.len());
        for (li, l) in col.layers.iter().enumerate() {
            // Lateral inputs: the previous layer's output in each earlier column.
            let from: Vec<(Act, usize)> = match li.checked_sub(1) {
                None => Vec::new(),
                Some(prev) => l
                    .laterals
                    .iter()
                    .enumerate()
                    .filter_map(|(j, &w)| {
                        earlier
                            .get(j)
                            .and_then(|a| a.get(prev))
                            .map(|a| (a.clone(), w))
                    })
                    .collect(),
            };
            let out = match (l.kind, input) {
                (Kind::Conv, Act::Map(t)) => {
                    let mut z = conv2d(
                        t,
                        self.conv_weight(p, l.weight),
                        Some(p[l.bias].clone()),
                        conv_options(),
                    );
                    for (a, w) in from {
                        if let Act::Map(t) = a {
                            z = z + conv2d(t, self.conv_weight(p, w), None, conv_options());
                        }
                    }
                    Act::Map(max_pool2d(relu(z), MaxPoolOptions::new([2, 2])))
                }
                (_, input) => {
                    let mut z = linear(
                        input.flat(),
                        self.linear_weight(p, l.weight),
                        Some(p[l.bias].clone()),
                    );
                    for (a, w) in from {
                        z = z + linear(a.flat(), self.linear_weight(p, w), None);
                    }
                    Act::Flat(if l.relu { relu(z) } else { z })
                }
            };
            acts.push(out.clone());
            input = out;
        }
        acts
    }

    /// Head `index` of the layout on features of column 0 (the features themselves for an
    /// index past the last).
    ///
    /// # Shapes
    /// `[batch, feature_dim]` → `[batch, outputs]`.
    pub fn head(&self, p: &[Tensor<1>], index: usize, features: Tensor<2>) -> Tensor<2> {
        let Some(layers) = self.heads.get(index) else {
            return features;
        };
        layers.iter().fold(features, |h, l| {
            let z = linear(h, self.linear_weight(p, l.weight), Some(p[l.bias].clone()));
            if l.relu { relu(z) } else { z }
        })
    }

    /// Index of the head whose prefix is `prefix`.
    pub fn head_index(&self, prefix: &str) -> Option<usize> {
        self.layout.heads.iter().position(|h| h.prefix == prefix)
    }

    fn linear_weight(&self, p: &[Tensor<1>], i: usize) -> Tensor<2> {
        let s = &self.params[i].shape;
        p[i].clone().reshape([s[0], s[1]])
    }

    fn conv_weight(&self, p: &[Tensor<1>], i: usize) -> Tensor<4> {
        let s = &self.params[i].shape;
        p[i].clone().reshape([s[0], s[1], s[2], s[3]])
    }
}

/// Hidden widths of the model's label head (and of the task heads built like it): none for
/// the MLP, 100-100 for the digits CNN as in the DANN paper.
pub fn label_head_hidden(model: &ModelSpec) -> Vec<usize> {
    match model {
        ModelSpec::Mlp { .. } => Vec::new(),
        ModelSpec::DigitsCnn {} => vec![100, 100],
    }
}

fn conv_options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [0, 0], [1, 1], 1)
}

/// Shape and fan-in of a layer's weight.
fn weight_shape(kind: Kind, d_in: usize, d_out: usize) -> (Vec<usize>, usize) {
    match kind {
        Kind::Linear => (vec![d_in, d_out], d_in),
        Kind::Conv => (vec![d_out, d_in, 5, 5], d_in * 25),
    }
}

/// Widths from the features through the hidden layers to the outputs.
fn head_widths(feature_dim: usize, hidden: &[usize], outputs: usize) -> Vec<usize> {
    let mut w = vec![feature_dim];
    w.extend_from_slice(hidden);
    w.push(outputs);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_cnn_matches_the_paper_on_28x28() {
        let a = Architecture::new(&ModelSpec::DigitsCnn {}, &[1, 28, 28], 10).expect("valid");
        let fc1 = &a.params[a.index_of("label_head.fc1.weight").expect("exists")];
        assert_eq!(fc1.shape, vec![768, 100]);
        assert!(Architecture::new(&ModelSpec::DigitsCnn {}, &[2], 2).is_err());
        assert!(Architecture::new(&ModelSpec::DigitsCnn {}, &[1, 8, 8], 10).is_err());
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
            (ModelSpec::DigitsCnn {}, vec![1, 28, 28]),
        ] {
            let a = Architecture::new(&model, &shape, 10).expect("valid");
            let p = a.tensors(&a.init(0), &device, &[]);
            let x = Tensor::<2>::zeros([3, 784], &device);
            let out = a.forward(&p, x);
            assert_eq!(out.logits.dims(), [3, 10]);
        }
    }
}
