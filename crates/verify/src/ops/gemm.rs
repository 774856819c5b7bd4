//! The one place that calls the GEMM crate: a safe, bounds-checked f32 matrix product over
//! strided row-major views.
//!
//! Choice (measured on this 2-core AVX-512 machine, shared with other builds, so noisy):
//! `gemm` 0.19 with `x86-v4` and `matrixmultiply` 0.3 (`threading`) were within noise of each
//! other on the engine's shapes (1024³: 54–64 vs 51–62 GFLOP/s on one thread;
//! 256×2048×5632: 43–47 vs 46–62); DESIGN.md's quieter measurement had `gemm` ahead (115–123 vs
//! 93–100 GFLOP/s on one thread, 187–232 vs 155–166 on two). `gemm` is used: it takes arbitrary
//! row and column strides for all three operands (attention multiplies per-head column slices
//! in place, no copies), parallelises on rayon's pool (which the rest of the engine already
//! uses), and has AVX-512 kernels. Its convention is `dst = alpha·dst + beta·lhs·rhs` (with
//! `read_dst`), the opposite naming of BLAS.

/// A read-only strided row-major view: element (r, c) is `data[r · row_stride + c]`.
///
/// Exists so per-head slices of activation matrices (every head is a column range) feed the GEMM
/// without copies.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The backing slice; must hold every element the view addresses.
    pub data: &'a [f32],
    /// Rows of the view.
    pub rows: usize,
    /// Columns of the view.
    pub cols: usize,
    /// Distance between consecutive rows in `data`.
    pub row_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view of `cols` columns starting at column `col0` of every row of `data` laid out with
    /// `row_stride`, rows `row0 .. row0 + rows`.
    pub fn slice(
        data: &'a [f32],
        row_stride: usize,
        row0: usize,
        rows: usize,
        col0: usize,
        cols: usize,
    ) -> MatRef<'a> {
        let start = (row0 * row_stride + col0).min(data.len());
        MatRef {
            data: &data[start..],
            rows,
            cols,
            row_stride,
        }
    }

    /// Whether every addressed element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || ((self.rows - 1) * self.row_stride + self.cols <= self.data.len()
                && self.cols <= self.row_stride.max(self.cols))
    }
}

/// How the right operand is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rhs {
    /// `rhs` is `[n, k]` and the product uses its transpose (`y = a·bᵀ`, the weight layout).
    Transposed,
    /// `rhs` is `[k, n]` (`y = a·b`).
    Plain,
}

/// `dst[m × n] (row stride dst_stride) = (accumulate ? dst : 0) + a · op(b)`.
///
/// `a` is `[m, k]`; `b` is `[n, k]` for [`Rhs::Transposed`], `[k, n]` for [`Rhs::Plain`].
/// `parallel` lets the GEMM split over rayon's pool; inside an already parallel loop pass false.
/// Panics (internal invariant) if shapes disagree or a view leaves its slice.
pub fn gemm_into(
    dst: &mut [f32],
    dst_stride: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    rhs: Rhs,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k) = (a.rows, a.cols);
    let (kb, n) = match rhs {
        Rhs::Transposed => (b.cols, b.rows),
        Rhs::Plain => (b.rows, b.cols),
    };
    assert_eq!(k, kb, "gemm: inner dimensions differ");
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm: operand view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_stride + n <= dst.len() && n <= dst_stride.max(n),
        "gemm: destination out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_stride..r * dst_stride + n].fill(0.0);
            }
        }
        return;
    }
    // (row, col) of op(b) as k × n.
    let (rhs_rs, rhs_cs) = match rhs {
        Rhs::Transposed => (1isize, b.row_stride as isize),
        Rhs::Plain => (b.row_stride as isize, 1isize),
    };
    let par = if parallel && rayon::current_num_threads() > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked above to address only elements inside its slice (the last
    // element of a is at (m−1)·rs + k − 1 < len, likewise b and dst); dst is exclusively
    // borrowed and cannot alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            1,
            a.row_stride as isize,
            b.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
