//! Device names, parsed in one place: what a worker's `device = "..."` means.

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
    /// The Burn device, or why this binary cannot provide it.
    ///
    /// # Errors
    /// [`DeviceError::NotBuilt`] for libtorch devices in a build without `tch`.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            DeviceName::Cpu => Ok(Device::flex()),
            other => Err(DeviceError::NotBuilt(other)),
        }
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
        assert!(DeviceName::Cuda(0).device().is_err());
        assert!(DeviceName::Cpu.device().is_ok());
    }
}
