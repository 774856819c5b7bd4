//! The two matrix shapes the engine works with: activations (one row per token) and weights (one
//! row per output feature, ggml's layout: `ne[0]` = input features, contiguous).

/// A row-major f32 matrix. Activations: `rows` = tokens (of all sequences, concatenated),
/// `cols` = features. Weights: `rows` = output features, `cols` = input features — exactly the
/// bytes of a ggml tensor with ne = {cols, rows}, so a GGUF tensor dequantizes straight into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (row length).
    pub cols: usize,
    /// `rows · cols` values, row after row.
    pub data: Vec<f32>,
}

impl Mat {
    /// A zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data` (must hold `rows · cols` values).
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Mat {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: wrong length");
        Mat { rows, cols, data }
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`, mutable.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Makes this `[rows, cols]` without shrinking its allocation; the contents are unspecified
    /// (for buffers reused across experts, overwritten by the next product).
    pub fn reshape(&mut self, rows: usize, cols: usize) {
        self.data.resize(rows * cols, 0.0);
        self.rows = rows;
        self.cols = cols;
    }
}

/// Where each sequence (chunk) lives in the activation rows: sequences are evaluated
/// independently (causal attention within a sequence, positions from 0), but their tokens share
/// every matmul, which is what makes layer-major evaluation fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    /// First activation row of the sequence.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}
