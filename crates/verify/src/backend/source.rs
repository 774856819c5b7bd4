//! The weight source a device backend dequantizes for.

use std::ops::Range;

use formats::gguf::GgufValue;

use super::{Backend, RawTensor};
use crate::error::{Result, VerifyError};
use crate::source::WeightSource;

/// A [`WeightSource`] that hands every tensor with raw bytes to a [`Backend`] for
/// dequantization (everything else is delegated unchanged). The engine wraps its source in this
/// for devices whose [`Backend::dequantizes`] is true.
pub struct BackendSource<'a> {
    inner: &'a dyn WeightSource,
    backend: &'a dyn Backend,
}

impl<'a> BackendSource<'a> {
    /// Wraps `inner` for `backend`.
    pub fn new(inner: &'a dyn WeightSource, backend: &'a dyn Backend) -> BackendSource<'a> {
        BackendSource { inner, backend }
    }

    /// The raw bytes, row width and row range (all rows for `None`) of `name`, or `None` if
    /// the source has no raw bytes for it or the range is invalid (the inner source's own
    /// error is then the better message).
    fn plan(
        &self,
        name: &str,
        rows: Option<Range<u64>>,
    ) -> Option<(RawTensor<'a>, usize, Range<usize>)> {
        let raw = self.inner.raw(name)?;
        let dims = self.inner.tensor_dims(name)?;
        let (width, n_rows) = crate::source::flat_rows(&dims);
        let n_rows = usize::try_from(n_rows).ok()?;
        let rows = match rows {
            None => 0..n_rows,
            Some(r) => usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?,
        };
        if rows.start > rows.end || rows.end > n_rows {
            return None;
        }
        Some((raw, width, rows))
    }

    /// Dequantizes on the backend into `out` (which must match the rows).
    fn device_into(
        &self,
        name: &str,
        (raw, width, rows): (RawTensor<'_>, usize, Range<usize>),
        out: &mut [f32],
    ) -> Result<()> {
        self.backend
            .dequantize(name, raw, width, rows, out)
            .map_err(|problem| VerifyError::TensorData {
                origin: self.inner.description(),
                tensor: name.to_string(),
                problem: format!("cannot dequantize on {}: {problem}", self.backend.device()),
            })
    }

    /// Dequantizes rows `rows` of `name` on the backend, or `None` if the source has no raw
    /// bytes for it.
    fn device_rows(&self, name: &str, rows: Option<Range<u64>>) -> Option<Result<Vec<f32>>> {
        let plan = self.plan(name, rows)?;
        let mut out = vec![0f32; plan.2.len() * plan.1];
        Some(self.device_into(name, plan, &mut out).map(|()| out))
    }
}

impl WeightSource for BackendSource<'_> {
    fn metadata(&self) -> &[(String, GgufValue)] {
        self.inner.metadata()
    }
    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.inner.get(key)
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.inner.tensor_dims(name)
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.inner.tensor_bytes(name)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensor_names()
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        match self.device_rows(name, None) {
            Some(r) => r,
            None => self.inner.load_f32(name),
        }
    }
    fn load_rows_f32(&self, name: &str, rows: &[u32]) -> Result<Vec<f32>> {
        // A few embedding rows: not worth a device round trip.
        self.inner.load_rows_f32(name, rows)
    }
    fn load_row_range_f32(&self, name: &str, rows: Range<u64>) -> Result<Vec<f32>> {
        match self.device_rows(name, Some(rows.clone())) {
            Some(r) => r,
            None => self.inner.load_row_range_f32(name, rows),
        }
    }
    fn load_row_range_into(&self, name: &str, rows: Range<u64>, out: &mut [f32]) -> Result<()> {
        match self.plan(name, Some(rows.clone())) {
            Some(plan) if out.len() == plan.2.len() * plan.1 => self.device_into(name, plan, out),
            _ => self.inner.load_row_range_into(name, rows, out),
        }
    }
    fn raw(&self, name: &str) -> Option<RawTensor<'_>> {
        self.inner.raw(name)
    }
    fn raw_rows(&self, name: &str, rows: Range<u64>) -> Option<RawTensor<'_>> {
        self.inner.raw_rows(name, rows)
    }
    fn description(&self) -> String {
        self.inner.description()
    }
}
