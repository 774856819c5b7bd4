//! Which device a run asks for (`--device`) and why one could not be used.

use std::fmt;
use std::str::FromStr;

use crate::error::VerifyError;

/// Where a forward pass runs. Parsed from `--device` (`cpu`, `cuda`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU (rayon + the `gemm` crate); always available.
    #[default]
    Cpu,
    /// CUDA device with this ordinal (needs the `cuda` feature and a driver at run time).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(0) => write!(f, "cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = DeviceError;

    fn from_str(s: &str) -> std::result::Result<Device, DeviceError> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(DeviceError::BadName(s)),
            },
        }
    }
}

/// Why a device could not be used. One line each, naming what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// `--device` was not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device '{0}': expected cpu, cuda or cuda:N")]
    BadName(String),
    /// The binary was built without the `cuda` feature.
    #[error("--device {0}: this r1q was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --device cpu")]
    NotBuilt(Device),
    /// `libcuda.so` (the driver library) could not be loaded: no NVIDIA driver on this machine.
    #[error("--device {0}: no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA driver or use --device cpu")]
    NoDriver(Device),
    /// A CUDA library other than the driver (cuBLAS, NVRTC) is missing.
    #[error("--device {device}: the CUDA library {lib} could not be loaded; install the CUDA toolkit's runtime libraries (cuBLAS, NVRTC) or use --device cpu")]
    NoLibrary {
        /// The device asked for.
        device: Device,
        /// Which library (`libcublas.so`, `libnvrtc.so`).
        lib: &'static str,
    },
    /// The driver loaded but the device could not be initialised (no GPU, bad ordinal, …).
    #[error("--device {device}: {problem}")]
    Init {
        /// The device asked for.
        device: Device,
        /// The driver's message.
        problem: String,
    },
    /// A CUDA call failed while evaluating (out of memory, launch failure, …).
    #[error("CUDA error during {during}: {problem}")]
    Runtime {
        /// What was being done (`matmul blk.3.attn_q.weight`, `dequantize …`).
        during: String,
        /// The driver's or cuBLAS's message.
        problem: String,
    },
}

impl From<DeviceError> for VerifyError {
    fn from(e: DeviceError) -> VerifyError {
        VerifyError::Invalid(e.to_string())
    }
}
