//! Reading and writing parameters as safetensors, the format PyTorch, Burn's `burn-store`
//! and Hugging Face tools all read.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::model::Architecture;
use crate::params::Params;
use crate::torch_layout::{self, WeightsLayout};

/// Why a weights file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Not a safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// A tensor the network needs is absent.
    #[error("missing tensor {name:?}")]
    Missing {
        /// Parameter name.
        name: String,
    },
    /// A tensor has the wrong shape or type.
    #[error("tensor {name:?} is {found}, the network needs f32 {expected:?}")]
    Shape {
        /// Parameter name.
        name: String,
        /// Shape the network needs.
        expected: Vec<usize>,
        /// What the file has.
        found: String,
    },
    /// The file's layout does not fit the network or what the job says of it.
    #[error("{0}")]
    Layout(String),
    /// A tensor holds a NaN or an infinity: training from it could only fail later, with
    /// a reason that points elsewhere.
    #[error("tensor {name:?} holds {value} at element {index}; weights must be finite")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// The first non-finite element.
        index: usize,
        /// Its value.
        value: f32,
    },
}

/// Tensors by name: shape and values.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Named f32 tensors to serialise, in order.
pub fn to_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, WeightsError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = BTreeMap::new();
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| WeightsError::Format(e.to_string()))?;
        views.insert(name.clone(), view);
    }
    safetensors::serialize(views, metadata).map_err(|e| WeightsError::Format(e.to_string()))
}

/// The network's parameters as a safetensors file.
///
/// # Errors
/// Only if serialisation fails.
pub fn params_to_safetensors(
    arch: &Architecture,
    params: &Params,
) -> Result<Vec<u8>, WeightsError> {
    let tensors: Vec<(String, Vec<usize>, &[f32])> = arch
        .params
        .iter()
        .zip(params.values())
        .map(|(s, v)| (s.name.clone(), s.shape.clone(), v.as_slice()))
        .collect();
    to_safetensors(&tensors, None)
}

/// Every f32 tensor of a safetensors file, by name, with its shape.
///
/// # Errors
/// [`WeightsError::Format`] for a damaged file or a tensor that is not f32.
pub fn read_all(bytes: &[u8]) -> Result<NamedTensors, WeightsError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Shape {
                name,
                expected: view.shape().to_vec(),
                found: format!("{:?}", view.dtype()),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::NonFinite {
                value: values[index],
                name,
                index,
            });
        }
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Loads the network's parameters from a safetensors file; extra tensors are ignored.
///
/// # Errors
/// [`WeightsError`] naming the first tensor that is missing or has the wrong shape.
pub fn params_from_safetensors(arch: &Architecture, bytes: &[u8]) -> Result<Params, WeightsError> {
    params_from_safetensors_over(arch, bytes, &arch.init(0), |_| false)
}

/// Loads the network's parameters from a safetensors file over `base`: a tensor the file
/// lacks keeps its value in `base` if `optional(name)` says the job fills it itself (the
/// frozen source copy of conservative training, copied when its stage starts).
///
/// # Errors
/// [`WeightsError`] naming the first required tensor that is missing or has the wrong shape.
pub fn params_from_safetensors_over(
    arch: &Architecture,
    bytes: &[u8],
    base: &Params,
    optional: impl Fn(&str) -> bool,
) -> Result<Params, WeightsError> {
    let mut all = read_all(bytes)?;
    let mut values = Vec::with_capacity(arch.params.len());
    for (i, spec) in arch.params.iter().enumerate() {
        let Some((shape, v)) = all.remove(&spec.name) else {
            if optional(&spec.name)
                && let Some(v) = base.values().get(i)
            {
                values.push(v.clone());
                continue;
            }
            return Err(WeightsError::Missing {
                name: spec.name.clone(),
            });
        };
        if shape != spec.shape {
            return Err(WeightsError::Shape {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: format!("f32 {shape:?}"),
            });
        }
        values.push(v);
    }
    Ok(Params::new(values))
}

/// Loads the network's parameters over `base` from a file in either layout: the one the
/// job names (`init_layout`), else the one the file's metadata declares, else graft's.
///
/// # Errors
/// As [`params_from_safetensors_over`] and [`torch_layout::params_from_torch_over`], and
/// [`WeightsError::Layout`] when the job names one layout and the metadata another.
pub fn params_from_file_over(
    arch: &Architecture,
    bytes: &[u8],
    layout: Option<WeightsLayout>,
    base: &Params,
    optional: impl Fn(&str) -> bool,
) -> Result<Params, WeightsError> {
    let declared = torch_layout::declared_layout(bytes)?;
    let layout = match (layout, declared) {
        (Some(asked), Some(found)) if asked != found => {
            return Err(WeightsError::Layout(format!(
                "init_layout is {:?}, but the file's metadata says it is in the {:?} layout",
                asked.name(),
                found.name()
            )));
        }
        (Some(l), _) | (None, Some(l)) => l,
        (None, None) => WeightsLayout::Graft,
    };
    match layout {
        WeightsLayout::Graft => params_from_safetensors_over(arch, bytes, base, optional),
        WeightsLayout::Torch => torch_layout::params_from_torch_over(arch, bytes, base, optional),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelSpec;

    #[test]
    fn safetensors_round_trip_and_shape_check() {
        let a = Architecture::new(&ModelSpec::Mlp { hidden: vec![5] }, &[3], 2).expect("valid");
        let p = a.init(4);
        let bytes = params_to_safetensors(&a, &p).expect("serialises");
        assert_eq!(params_from_safetensors(&a, &bytes).expect("loads"), p);
        let b = Architecture::new(&ModelSpec::Mlp { hidden: vec![6] }, &[3], 2).expect("valid");
        let err = params_from_safetensors(&b, &bytes).expect_err("shape differs");
        assert!(err.to_string().contains("features.fc1.weight"), "{err}");
        assert!(params_from_safetensors(&a, b"garbage").is_err());
    }

    #[test]
    fn a_non_finite_weight_is_refused_naming_the_tensor_and_element() {
        let a = Architecture::new(&ModelSpec::Mlp { hidden: vec![5] }, &[3], 2).expect("valid");
        let mut values = a.init(4).values().to_vec();
        values[1][3] = f32::NAN;
        let bytes = params_to_safetensors(&a, &Params::new(values)).expect("serialises");
        let err = params_from_safetensors(&a, &bytes).expect_err("NaN");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{:?}", a.params[1].name)) && msg.contains("element 3"),
            "{msg}"
        );
    }

    #[test]
    fn either_layout_loads_and_a_conflict_is_refused() {
        let a = Architecture::new(&ModelSpec::Mlp { hidden: vec![5] }, &[3], 2).expect("valid");
        let p = a.init(4);
        let base = a.init(0);
        let graft = params_to_safetensors(&a, &p).expect("serialises");
        let torch = torch_layout::to_torch_safetensors(&a, &p, BTreeMap::new()).expect("torch");
        for (bytes, asked) in [
            (&graft, None),
            (&graft, Some(WeightsLayout::Graft)),
            (&torch, None),
            (&torch, Some(WeightsLayout::Torch)),
        ] {
            let got = params_from_file_over(&a, bytes, asked, &base, |_| false).expect("loads");
            assert_eq!(got, p, "{asked:?}");
        }
        let err = params_from_file_over(&a, &torch, Some(WeightsLayout::Graft), &base, |_| false)
            .expect_err("conflict");
        assert!(err.to_string().contains("metadata says"), "{err}");
        // A plain state_dict carries no layout: graft's names are then expected unless the
        // job says torch.
        let err = params_from_file_over(&a, &graft, Some(WeightsLayout::Torch), &base, |_| false)
            .expect_err("graft names under torch");
        assert!(err.to_string().contains("1.weight"), "{err}");
    }
}
