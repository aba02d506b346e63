//! PyTorch's layout of graft's networks, so that an export loads with `load_state_dict` and
//! a `state_dict` trained in PyTorch starts a graft job.
//!
//! graft keeps linear weights as `[in, out]` (Burn's layout, and what `linear` multiplies
//! by); PyTorch's `nn.Linear` keeps `[out, in]`. Convolutions are `[out, in, kh, kw]` in
//! both. graft's networks have no BatchNorm, so there are no buffers to carry. The names are
//! those of the `nn.Sequential` that computes what column 0 of the network computes, from
//! the input to the label head's output: its modules are written into the file's metadata
//! ([`ARCHITECTURE_KEY`]), so a reader can build the `nn.Sequential` without knowing graft.
//! Parts of the network outside that path (DANN's domain head, conservative training's
//! frozen source copy) are left out and named under [`LEFT_OUT_KEY`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::Architecture;
use crate::params::Params;
use crate::weights::{NamedTensors, WeightsError, read_all, to_safetensors};

/// Metadata key of the layout (`torch` or `graft`).
pub const LAYOUT_KEY: &str = "graft.layout";
/// Metadata key of the modules of the equivalent `nn.Sequential`, as JSON.
pub const ARCHITECTURE_KEY: &str = "graft.architecture";
/// Metadata key of the per-sample input shape the network was built for, as JSON.
pub const INPUT_SHAPE_KEY: &str = "graft.input_shape";
/// Metadata key of the parameters of the network that the `nn.Sequential` does not hold.
pub const LEFT_OUT_KEY: &str = "graft.left_out";

/// Which names and weight layout a safetensors file of parameters uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsLayout {
    /// graft's own names (`features.fc1.weight`), linear weights `[in, out]`: what
    /// checkpoints hold.
    #[default]
    Graft,
    /// An `nn.Sequential`'s names (`1.weight`), linear weights `[out, in]`.
    Torch,
}

impl WeightsLayout {
    /// The name the job file and the metadata use.
    pub fn name(self) -> &'static str {
        match self {
            WeightsLayout::Graft => "graft",
            WeightsLayout::Torch => "torch",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "graft" => Some(WeightsLayout::Graft),
            "torch" => Some(WeightsLayout::Torch),
            _ => None,
        }
    }
}

/// One module of the `nn.Sequential`, with the arguments of its PyTorch constructor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "module")]
pub enum TorchModule {
    /// `nn.Flatten()`.
    Flatten,
    /// `nn.Linear(in_features, out_features)`.
    Linear {
        /// Inputs.
        in_features: usize,
        /// Outputs.
        out_features: usize,
    },
    /// `nn.Conv2d(in_channels, out_channels, kernel_size)`: stride 1, no padding.
    Conv2d {
        /// Input channels.
        in_channels: usize,
        /// Output channels.
        out_channels: usize,
        /// Square kernel's side.
        kernel_size: usize,
    },
    /// `nn.ReLU()`.
    ReLU,
    /// `nn.MaxPool2d(kernel_size)`: stride equal to the kernel.
    MaxPool2d {
        /// Square window's side.
        kernel_size: usize,
    },
}

/// A network as an `nn.Sequential`: its modules and where each of its tensors comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchSequential {
    /// The modules in order.
    pub modules: Vec<TorchModule>,
    /// The tensors, in module order: PyTorch name, index of graft's parameter, PyTorch shape.
    pub tensors: Vec<TorchTensor>,
    /// graft's parameters that are not part of it.
    pub left_out: Vec<String>,
}

/// One tensor of the `nn.Sequential`.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// Its `state_dict` key (`3.weight`).
    pub name: String,
    /// Index of graft's parameter in [`Architecture::params`].
    pub param: usize,
    /// Its shape in PyTorch.
    pub shape: Vec<usize>,
    /// Whether graft holds it transposed (a linear weight).
    pub transposed: bool,
}

/// The `nn.Sequential` of column 0 of `arch`, from the input to the label head's output.
///
/// # Errors
/// [`WeightsError::Layout`] for a network that no single `nn.Sequential` computes: one
/// whose column 0 ends without a label head (multitask), or with more columns than the
/// frozen source copy (progressive networks).
pub fn sequential(arch: &Architecture) -> Result<TorchSequential, WeightsError> {
    let Some(first) = arch.layout.columns.first() else {
        return Err(WeightsError::Layout("the network has no column".into()));
    };
    if first.outputs.is_none() {
        return Err(WeightsError::Layout(format!(
            "the network's trunk feeds {} task heads and has no label head of its own, so \
             no single nn.Sequential computes it; export it in the graft layout",
            arch.layout.heads.len()
        )));
    }
    if let Some(c) = arch
        .layout
        .columns
        .iter()
        .skip(1)
        .find(|c| c.prefix != "anchor.")
    {
        return Err(WeightsError::Layout(format!(
            "the network has {} columns ({}… among them), so no single nn.Sequential \
             computes it; export it in the graft layout",
            arch.layout.columns.len(),
            c.prefix
        )));
    }
    let layers = arch.layer_names();
    let mut modules = Vec::new();
    let mut tensors = Vec::new();
    let mut used = vec![false; arch.params.len()];
    let mut flat = false;
    for (k, layer) in layers.iter().enumerate() {
        let last = k + 1 == layers.len();
        let (Some(w), Some(b)) = (
            arch.index_of(&format!("{layer}.weight")),
            arch.index_of(&format!("{layer}.bias")),
        ) else {
            return Err(WeightsError::Layout(format!(
                "layer {layer} has no weight and bias"
            )));
        };
        let shape = &arch.params[w].shape;
        let (module, torch_shape, transposed) = match shape.as_slice() {
            [d_in, d_out] => {
                if !flat {
                    modules.push(TorchModule::Flatten);
                    flat = true;
                }
                (
                    TorchModule::Linear {
                        in_features: *d_in,
                        out_features: *d_out,
                    },
                    vec![*d_out, *d_in],
                    true,
                )
            }
            [out, inp, kh, kw] if kh == kw && !flat => (
                TorchModule::Conv2d {
                    in_channels: *inp,
                    out_channels: *out,
                    kernel_size: *kh,
                },
                shape.clone(),
                false,
            ),
            other => {
                return Err(WeightsError::Layout(format!(
                    "layer {layer} has a weight of shape {other:?}, which no nn.Sequential \
                     module of graft's holds"
                )));
            }
        };
        let index = modules.len();
        let conv = matches!(module, TorchModule::Conv2d { .. });
        modules.push(module);
        tensors.push(TorchTensor {
            name: format!("{index}.weight"),
            param: w,
            shape: torch_shape,
            transposed,
        });
        tensors.push(TorchTensor {
            name: format!("{index}.bias"),
            param: b,
            shape: arch.params[b].shape.clone(),
            transposed: false,
        });
        used[w] = true;
        used[b] = true;
        // Every layer but the label head's last is followed by a ReLU; a convolution also by
        // its 2×2 max-pool (graft pools after the ReLU, which gives the same values).
        if !last {
            modules.push(TorchModule::ReLU);
        }
        if conv {
            modules.push(TorchModule::MaxPool2d { kernel_size: 2 });
        }
    }
    let left_out = arch
        .params
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p.name.clone())
        .collect();
    Ok(TorchSequential {
        modules,
        tensors,
        left_out,
    })
}

/// The network's parameters in PyTorch's layout, with the `nn.Sequential`'s modules, the
/// input shape and `extra` (graft's version, the job spec) in the metadata.
///
/// # Errors
/// As [`sequential`]; [`WeightsError::Format`] only if serialisation fails.
pub fn to_torch_safetensors(
    arch: &Architecture,
    params: &Params,
    extra: BTreeMap<String, String>,
) -> Result<Vec<u8>, WeightsError> {
    let seq = sequential(arch)?;
    let values = params.values();
    let data: Vec<Vec<f32>> = seq
        .tensors
        .iter()
        .map(|t| {
            let v = values.get(t.param).map(Vec::as_slice).unwrap_or(&[]);
            if t.transposed {
                transpose(v, t.shape[1], t.shape[0])
            } else {
                v.to_vec()
            }
        })
        .collect();
    let tensors: Vec<(String, Vec<usize>, &[f32])> = seq
        .tensors
        .iter()
        .zip(&data)
        .map(|(t, v)| (t.name.clone(), t.shape.clone(), v.as_slice()))
        .collect();
    let mut meta: HashMap<String, String> = extra.into_iter().collect();
    // `format = pt` is what Hugging Face's loaders look for in a PyTorch safetensors file.
    meta.insert("format".into(), "pt".into());
    meta.insert(LAYOUT_KEY.into(), WeightsLayout::Torch.name().into());
    meta.insert(ARCHITECTURE_KEY.into(), json(&seq.modules));
    meta.insert(INPUT_SHAPE_KEY.into(), json(&arch.input_shape));
    meta.insert(LEFT_OUT_KEY.into(), json(&seq.left_out));
    to_safetensors(&tensors, Some(meta))
}

/// JSON of a metadata value: plain lists, numbers and unit-or-struct enums, which
/// serialise without fail.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The layout a file's metadata declares, if any.
///
/// # Errors
/// [`WeightsError::Format`] for a damaged file; [`WeightsError::Layout`] for a layout name
/// graft does not know.
pub fn declared_layout(bytes: &[u8]) -> Result<Option<WeightsLayout>, WeightsError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Format(e.to_string()))?;
    let Some(value) = meta.metadata().as_ref().and_then(|m| m.get(LAYOUT_KEY)) else {
        return Ok(None);
    };
    WeightsLayout::parse(value).map(Some).ok_or_else(|| {
        WeightsError::Layout(format!(
            "the file's metadata says {LAYOUT_KEY} = {value:?}; graft knows \"graft\" and \"torch\""
        ))
    })
}

/// Loads the network's parameters from a file in PyTorch's layout over `base`: graft's
/// parameters outside the `nn.Sequential` keep their value in `base` where `optional(name)`
/// says the job fills them itself.
///
/// # Errors
/// [`WeightsError`] naming the first tensor that is missing or has the wrong shape, every
/// tensor the `nn.Sequential` does not have (a BatchNorm's buffers, another network's
/// layers), or a parameter of the network that the layout cannot hold and the job needs.
pub fn params_from_torch_over(
    arch: &Architecture,
    bytes: &[u8],
    base: &Params,
    optional: impl Fn(&str) -> bool,
) -> Result<Params, WeightsError> {
    let seq = sequential(arch)?;
    let mut all: NamedTensors = read_all(bytes)?;
    let mut values: Vec<Option<Vec<f32>>> = vec![None; arch.params.len()];
    for t in &seq.tensors {
        let graft = &arch.params[t.param].name;
        let Some((shape, v)) = all.remove(&t.name) else {
            return Err(WeightsError::Missing {
                name: format!("{} (graft's {graft})", t.name),
            });
        };
        if shape != t.shape {
            return Err(WeightsError::Shape {
                name: format!("{} (graft's {graft})", t.name),
                expected: t.shape.clone(),
                found: format!("f32 {shape:?}"),
            });
        }
        values[t.param] = Some(if t.transposed {
            transpose(&v, t.shape[0], t.shape[1])
        } else {
            v
        });
    }
    if !all.is_empty() {
        let extra: Vec<&str> = all.keys().map(String::as_str).collect();
        return Err(WeightsError::Layout(format!(
            "tensors {extra:?} are not in the network's nn.Sequential ({}); graft's networks \
             have no BatchNorm",
            seq.tensors
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let name = &arch.params[i].name;
        match v {
            Some(v) => out.push(v),
            None if optional(name) && base.values().get(i).is_some() => {
                out.push(base.values()[i].clone());
            }
            None => {
                return Err(WeightsError::Layout(format!(
                    "the network needs {name}, which PyTorch's layout of it does not hold \
                     (it holds only the nn.Sequential from the input to the label head)"
                )));
            }
        }
    }
    Ok(Params::new(out))
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    if v.len() != rows * cols {
        return v.to_vec();
    }
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ColumnDef, HeadDef, Layout};
    use crate::spec::ModelSpec;
    use crate::weights::params_to_safetensors;

    fn mlp() -> Architecture {
        Architecture::new(&ModelSpec::Mlp { hidden: vec![5, 4] }, &[1, 2, 3], 3).expect("valid")
    }

    #[test]
    fn mlp_is_flatten_linear_relu_and_weights_are_transposed() {
        let a = mlp();
        let seq = sequential(&a).expect("sequential");
        assert_eq!(
            seq.modules,
            vec![
                TorchModule::Flatten,
                TorchModule::Linear {
                    in_features: 6,
                    out_features: 5
                },
                TorchModule::ReLU,
                TorchModule::Linear {
                    in_features: 5,
                    out_features: 4
                },
                TorchModule::ReLU,
                TorchModule::Linear {
                    in_features: 4,
                    out_features: 3
                },
            ]
        );
        let names: Vec<&str> = seq.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"
            ]
        );
        let p = a.init(7);
        let bytes = to_torch_safetensors(&a, &p, BTreeMap::new()).expect("serialises");
        let all = read_all(&bytes).expect("reads");
        let (shape, w) = &all["1.weight"];
        assert_eq!(shape, &vec![5, 6]);
        // graft's [in, out] element (i, o) is PyTorch's (o, i).
        let g = &p.values()[0];
        assert_eq!(w[2 * 6 + 4], g[4 * 5 + 2]);
        assert_eq!(
            declared_layout(&bytes).expect("metadata"),
            Some(WeightsLayout::Torch)
        );
        let back = params_from_torch_over(&a, &bytes, &a.init(0), |_| false).expect("loads");
        assert_eq!(back, p);
    }

    #[test]
    fn digits_cnn_matches_the_pytorch_network_of_the_paper() {
        let a = Architecture::new(&ModelSpec::DigitsCnn {}, &[1, 28, 28], 10).expect("valid");
        let seq = sequential(&a).expect("sequential");
        let kinds: Vec<String> = seq
            .modules
            .iter()
            .map(|m| {
                format!("{m:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Conv2d",
                "ReLU",
                "MaxPool2d",
                "Conv2d",
                "ReLU",
                "MaxPool2d",
                "Flatten",
                "Linear",
                "ReLU",
                "Linear",
                "ReLU",
                "Linear"
            ]
        );
        assert_eq!(seq.tensors[0].shape, vec![32, 1, 5, 5]);
        assert!(!seq.tensors[0].transposed);
        assert_eq!(
            seq.modules[7],
            TorchModule::Linear {
                in_features: 48 * 4 * 4,
                out_features: 100
            }
        );
        let p = a.init(3);
        let bytes = to_torch_safetensors(&a, &p, BTreeMap::new()).expect("serialises");
        assert_eq!(
            params_from_torch_over(&a, &bytes, &a.init(0), |_| false).expect("loads"),
            p
        );
    }

    #[test]
    fn heads_outside_the_path_are_left_out_and_refused_unless_optional() {
        let layout = Layout {
            columns: vec![ColumnDef {
                prefix: String::new(),
                outputs: Some(3),
                laterals: false,
            }],
            heads: vec![HeadDef {
                prefix: "domain_head".into(),
                hidden: vec![2],
                outputs: 1,
            }],
        };
        let a = Architecture::with_layout(&ModelSpec::Mlp { hidden: vec![4] }, &[6], 3, &layout)
            .expect("valid");
        let seq = sequential(&a).expect("sequential");
        assert!(seq.left_out.iter().all(|n| n.starts_with("domain_head.")));
        assert_eq!(seq.left_out.len(), 4);
        let bytes = to_torch_safetensors(&a, &a.init(1), BTreeMap::new()).expect("serialises");
        let err = params_from_torch_over(&a, &bytes, &a.init(0), |_| false).expect_err("needs it");
        assert!(err.to_string().contains("domain_head.fc1.weight"), "{err}");
        let p = params_from_torch_over(&a, &bytes, &a.init(0), |n| n.starts_with("domain_head"))
            .expect("optional");
        assert_eq!(p.values()[4], a.init(0).values()[4]);
    }

    #[test]
    fn multitask_trunks_cannot_be_one_sequential() {
        let layout = Layout {
            columns: vec![ColumnDef {
                prefix: String::new(),
                outputs: None,
                laterals: false,
            }],
            heads: vec![HeadDef {
                prefix: "task_heads.a".into(),
                hidden: vec![],
                outputs: 2,
            }],
        };
        let a = Architecture::with_layout(&ModelSpec::Mlp { hidden: vec![4] }, &[6], 2, &layout)
            .expect("valid");
        let err = sequential(&a).expect_err("no label head");
        assert!(err.to_string().contains("graft layout"), "{err}");
    }

    #[test]
    fn wrong_shapes_missing_and_extra_tensors_are_named() {
        let a = mlp();
        let p = a.init(1);
        let graft = params_to_safetensors(&a, &p).expect("serialises");
        let err = params_from_torch_over(&a, &graft, &p, |_| false).expect_err("graft names");
        assert!(err.to_string().contains("\"1.weight"), "{err}");
        let seq = sequential(&a).expect("sequential");
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = seq
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.clone(),
                    vec![0.0; t.shape.iter().product()],
                )
            })
            .collect();
        tensors.push(("1.running_mean".into(), vec![5], vec![0.0; 5]));
        let view: Vec<(String, Vec<usize>, &[f32])> = tensors
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
            .collect();
        let bytes = to_safetensors(&view, None).expect("serialises");
        let err = params_from_torch_over(&a, &bytes, &p, |_| false).expect_err("extra");
        assert!(err.to_string().contains("1.running_mean"), "{err}");
        // Burn's [in, out] under PyTorch's names: the shape check names the tensor.
        let swapped: Vec<(String, Vec<usize>, &[f32])> = view
            .iter()
            .take(6)
            .map(|(n, s, v)| {
                let mut s = s.clone();
                s.reverse();
                (n.clone(), s, *v)
            })
            .collect();
        let bytes = to_safetensors(&swapped, None).expect("serialises");
        let err = params_from_torch_over(&a, &bytes, &p, |_| false).expect_err("transposed");
        assert!(
            err.to_string()
                .contains("1.weight (graft's features.fc1.weight)"),
            "{err}"
        );
        assert_eq!(declared_layout(&bytes).expect("metadata"), None);
    }
}
