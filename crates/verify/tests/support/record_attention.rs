//! A test backend shared by the integration tests (`#[path]`-included): the CPU backend with
//! every `Backend::attention` call recorded and then evaluated by `ops::attention` (what a
//! device backend's attention looks like to the blocks).

use std::sync::Mutex;

use verify::ops::AttnShape;
use verify::{Mat, SeqSpan};

/// The CPU backend, recording the shape and token count of each attention call.
#[derive(Default)]
pub struct RecordAttention {
    /// `(shape, q.rows)` of each call, in order.
    pub shapes: Mutex<Vec<(AttnShape, usize)>>,
}

impl verify::Backend for RecordAttention {
    fn device(&self) -> verify::Device {
        verify::Device::Cpu
    }
    fn describe(&self) -> String {
        "cpu, attention recorded".into()
    }
    fn matmul(&self, _name: &str, x: &Mat, w: &Mat) -> Mat {
        verify::ops::matmul(x, w)
    }
    fn attention(&self, q: &Mat, k: &Mat, v: &Mat, seqs: &[SeqSpan], shape: &AttnShape) -> Mat {
        self.shapes.lock().unwrap().push((*shape, q.rows));
        verify::ops::attention(q, k, v, seqs, shape)
    }
}
