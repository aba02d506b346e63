//! Device names, parsed in one place: what a worker's `device = "..."` and the coordinator's
//! `eval_device` mean, and whether this binary can provide them.
//!
//! A device is checked when a process starts (config validation calls
//! [`DeviceName::device`]), so that a worker asked for `cuda:1` on a machine with one GPU, or
//! for libtorch in a build without it, refuses to start instead of panicking inside its first
//! step. Whatever the device, tensors leave it as host `f32` (gradients, parameters,
//! checkpoints), which is why workers on different devices can serve one job.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A device graft can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// Burn's pure-Rust `flex` CPU backend (the default build).
    Cpu,
    /// libtorch on the CPU (needs the `tch` feature).
    LibtorchCpu,
    /// libtorch on CUDA device N (needs the `tch` feature).
    Cuda(usize),
}

/// A device name that is not known or not built in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name.
    #[error("unknown device {0:?} (known: cpu, libtorch-cpu, cuda:N)")]
    Unknown(String),
    /// Known, but this binary was built without its backend.
    #[error(
        "device {0} needs graft built with the `tch` feature (libtorch); this binary has only `cpu`"
    )]
    NotBuilt(DeviceName),
    /// Built in, but not present on this machine (no such GPU, no driver, or a binary linked
    /// against a CPU-only libtorch).
    #[error("device {name} is not available here: {reason}")]
    Unavailable {
        /// The device asked for.
        name: DeviceName,
        /// What libtorch reported.
        reason: String,
    },
}

impl FromStr for DeviceName {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" | "flex" => Ok(DeviceName::Cpu),
            "libtorch-cpu" => Ok(DeviceName::LibtorchCpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceName::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu => write!(f, "cpu"),
            DeviceName::LibtorchCpu => write!(f, "libtorch-cpu"),
            DeviceName::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceName {
    /// Whether this binary was built with the libtorch backend (the `tch` feature).
    pub const LIBTORCH_BUILT: bool = cfg!(feature = "tch");

    /// The Burn device, or why this binary cannot provide it here.
    ///
    /// # Errors
    /// [`DeviceError::NotBuilt`] for libtorch devices in a build without `tch`;
    /// [`DeviceError::Unavailable`] for a CUDA device that libtorch does not see.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            DeviceName::Cpu => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            DeviceName::LibtorchCpu => Ok(libtorch::cpu()),
            #[cfg(feature = "tch")]
            DeviceName::Cuda(index) => libtorch::cuda(index),
            #[cfg(not(feature = "tch"))]
            other => Err(DeviceError::NotBuilt(other)),
        }
    }
}

/// Burn marks its libtorch backend deprecated (in favour of CubeCL backends that graft does
/// not build); it is still the one that reaches CUDA through the PyTorch users already have,
/// so the deprecation is acknowledged here, in one place.
#[cfg(feature = "tch")]
#[allow(deprecated)]
mod libtorch {
    use super::{DeviceError, DeviceName};
    use burn::tensor::Device;

    pub(super) fn cpu() -> Device {
        Device::libtorch()
    }

    /// Asks libtorch before handing out the device: burn-tch panics on the first tensor of a
    /// CUDA device it cannot use, and a binary linked against a CPU-only libtorch (what
    /// `scripts/libtorch.sh` prepares by default) sees no CUDA device at all.
    pub(super) fn cuda(index: usize) -> Result<Device, DeviceError> {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if index >= count {
            let reason = if count == 0 {
                "libtorch sees no CUDA device (no GPU or driver, or this binary was linked \
                 against a CPU-only libtorch: build with LIBTORCH from \
                 `scripts/libtorch.sh --cuda`)"
                    .to_string()
            } else {
                format!("libtorch sees {count} CUDA device(s), numbered from 0")
            };
            return Err(DeviceError::Unavailable {
                name: DeviceName::Cuda(index),
                reason,
            });
        }
        Ok(Device::libtorch_cuda(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_refuses_others() {
        assert_eq!("cpu".parse::<DeviceName>(), Ok(DeviceName::Cpu));
        assert_eq!("cuda:1".parse::<DeviceName>(), Ok(DeviceName::Cuda(1)));
        assert!("gpu".parse::<DeviceName>().is_err());
        assert!("cuda:x".parse::<DeviceName>().is_err());
        assert_eq!(
            "libtorch-cpu".parse::<DeviceName>(),
            Ok(DeviceName::LibtorchCpu)
        );
        for name in ["cpu", "libtorch-cpu", "cuda:0", "cuda:12"] {
            let d: DeviceName = name.parse().expect("known");
            assert_eq!(d.to_string(), name, "names round-trip");
        }
        assert!("cuda:".parse::<DeviceName>().is_err());
        assert!("cuda:-1".parse::<DeviceName>().is_err());
        assert!(DeviceName::Cpu.device().is_ok());
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_are_refused_without_tch() {
        for d in [DeviceName::LibtorchCpu, DeviceName::Cuda(0)] {
            let e = d.device().expect_err("not built");
            assert_eq!(e, DeviceError::NotBuilt(d));
            assert!(e.to_string().contains("`tch` feature"), "{e}");
        }
    }
}
