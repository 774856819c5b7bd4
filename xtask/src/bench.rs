//! `cargo xtask bench …`: throughput measurements printed as markdown tables.
//!
//! `convert`: `r1q convert` end to end on the deepseek-v3 fixture (see `bench_convert.rs`).
//!
//! `pull`: `r1q pull` from a loopback hub, 1 and N jobs, vs sha256 alone (see `bench_pull.rs`).
//!
//! `quantize`: `r1q quantize --pure` vs llama-quantize per type (see `bench_quantize.rs`).
//!
//! `perplexity`: `r1q perplexity` vs llama-perplexity, tokens/s and peak RSS (see
//! `bench_perplexity.rs`).
//!
//! `imatrix`: `r1q imatrix` vs llama-imatrix, tokens/s (see `bench_imatrix.rs`).
//!
//! `dequant`: FP8 (e4m3, 128×128 block scales) → f32 on synthetic tensors shaped like R1's expert
//! matrices, on one thread and on all threads, with BF16 → f32 for comparison. Output goes into
//! tile buffers of the size the converter uses (as in the real pipeline: mmap → f32 tile →
//! quantizer), so the numbers measure decoding, not DRAM write bandwidth of a whole-tensor copy.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use formats::checkpoint::{
    round_to_bf16, Dtype, Fp8BlockDecoder, RowDecoder, TensorView, DEFAULT_FP8_BLOCK,
};
use rayon::prelude::*;

#[path = "bench_common.rs"]
mod bench_common;
#[path = "bench_convert.rs"]
mod bench_convert;
#[path = "bench_imatrix.rs"]
mod bench_imatrix;
#[path = "bench_perplexity.rs"]
mod bench_perplexity;
#[path = "bench_pull.rs"]
mod bench_pull;
#[path = "bench_quantize.rs"]
mod bench_quantize;

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// FP8 block dequantization and BF16 widening to f32.
    Dequant,
    /// `r1q convert` end to end: FP8 → bf16 and → q8_0 throughput and peak RSS.
    Convert,
    /// `r1q quantize --pure` vs the peer's `llama-quantize --pure` per type, 1 and all threads.
    Quantize,
    /// `r1q pull` from a loopback hub: GB/s with 1 and N jobs, sha256 alone, hash CPU share.
    Pull,
    /// `r1q perplexity` vs the peer's `llama-perplexity`: tokens/s and peak RSS, 1 and N threads.
    Perplexity,
    /// `r1q imatrix` vs the peer's `llama-imatrix`: tokens/s on the same GGUF, text and threads.
    Imatrix,
}

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The benchmark to run.
    #[arg(value_enum)]
    which: Which,
    /// Repetitions per measurement; the best is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// Runs the chosen benchmark and prints its table.
pub fn run(args: Args) -> Result<()> {
    match args.which {
        Which::Dequant => dequant(args.reps.max(1)),
        Which::Convert => bench_convert::run(args.reps.max(1)),
        Which::Quantize => bench_quantize::run(args.reps.max(1)),
        Which::Pull => bench_pull::run(args.reps.clamp(1, 3)),
        Which::Perplexity => bench_perplexity::run(args.reps.clamp(1, 3)),
        Which::Imatrix => bench_imatrix::run(args.reps.clamp(1, 3)),
    }
}

/// Output elements per tile (256 KiB of f32): what one converter worker holds at a time.
const TILE_ELEMS: usize = 64 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*), so every run measures the same data.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Best wall time of `reps` runs of `f`.
fn best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

/// Decodes all rows of `dec` tile by tile on this thread.
fn serial(dec: &RowDecoder<'_>, bf16: bool) -> Result<()> {
    let cols = dec.cols();
    let tile_rows = (TILE_ELEMS / cols).max(1);
    let mut buf = vec![0f32; tile_rows * cols];
    let mut row = 0;
    while row < dec.rows() {
        let n = tile_rows.min(dec.rows() - row);
        let out = &mut buf[..n * cols];
        dec.decode_rows(row, out)?;
        if bf16 {
            round_to_bf16(out);
        }
        std::hint::black_box(&out);
        row += n;
    }
    Ok(())
}

/// Decodes all rows of `dec` tile by tile across rayon's pool (one tile buffer per worker).
fn parallel(dec: &RowDecoder<'_>, bf16: bool) -> Result<()> {
    let cols = dec.cols();
    let tile_rows = (TILE_ELEMS / cols).max(1);
    let n_tiles = dec.rows().div_ceil(tile_rows);
    (0..n_tiles).into_par_iter().try_for_each_init(
        || vec![0f32; tile_rows * cols],
        |buf, t| -> Result<()> {
            let row = t * tile_rows;
            let n = tile_rows.min(dec.rows() - row);
            let out = &mut buf[..n * cols];
            dec.decode_rows(row, out)?;
            if bf16 {
                round_to_bf16(out);
            }
            std::hint::black_box(&out);
            Ok(())
        },
    )
}

struct Row {
    what: String,
    shape: [usize; 2],
    input_bytes: usize,
    one: Duration,
    all: Duration,
}

fn dequant(reps: usize) -> Result<()> {
    let threads = rayon::current_num_threads();
    let file = Path::new("<synthetic>");
    let block = DEFAULT_FP8_BLOCK;
    let mut rows = Vec::new();
    for shape in [[7168usize, 2048usize], [2048, 7168]] {
        let [r, c] = shape;
        let q = bytes(r * c, 0x5eed ^ r as u64);
        let sshape = [r.div_ceil(block[0]), c.div_ceil(block[1])];
        // Scales of the magnitude DeepSeek's have (~1e-4 … 1e-3).
        let scales: Vec<u8> = bytes(sshape[0] * sshape[1], 7)
            .iter()
            .flat_map(|&b| (1e-4f32 * (1.0 + f32::from(b) / 32.0)).to_le_bytes())
            .collect();
        let weight = TensorView {
            name: "w.weight",
            dtype: Dtype::F8E4M3,
            shape: &shape,
            data: &q,
            file,
        };
        let scale = TensorView {
            name: "w.weight_scale_inv",
            dtype: Dtype::F32,
            shape: &sshape,
            data: &scales,
            file,
        };
        let dec = RowDecoder::Fp8(Fp8BlockDecoder::new(weight, scale, block)?);
        for bf16 in [false, true] {
            rows.push(Row {
                what: if bf16 {
                    "F8_E4M3 ×scale → f32 → bf16-rounded".into()
                } else {
                    "F8_E4M3 ×scale → f32".into()
                },
                shape,
                input_bytes: r * c,
                one: best(reps, || serial(&dec, bf16))?,
                all: best(reps, || parallel(&dec, bf16))?,
            });
        }
    }
    {
        let shape = [7168usize, 2048usize];
        let [r, c] = shape;
        let data = bytes(r * c * 2, 11);
        let view = TensorView {
            name: "w.weight",
            dtype: Dtype::BF16,
            shape: &shape,
            data: &data,
            file,
        };
        let dec = RowDecoder::Plain {
            view,
            rows: r,
            cols: c,
        };
        rows.push(Row {
            what: "BF16 → f32".into(),
            shape,
            input_bytes: r * c * 2,
            one: best(reps, || serial(&dec, false))?,
            all: best(reps, || parallel(&dec, false))?,
        });
    }

    println!(
        "Dequantization throughput, best of {reps}; output into {} KiB f32 tiles.\n",
        TILE_ELEMS * 4 / 1024
    );
    println!(
        "| conversion | shape | input GB/s, 1 thread | Gelem/s, 1 thread | input GB/s, {threads} threads | Gelem/s, {threads} threads |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for row in &rows {
        let elems = (row.shape[0] * row.shape[1]) as f64;
        let gbs = |d: Duration| row.input_bytes as f64 / d.as_secs_f64() / 1e9;
        let gel = |d: Duration| elems / d.as_secs_f64() / 1e9;
        println!(
            "| {} | {}×{} | {:.2} | {:.2} | {:.2} | {:.2} |",
            row.what,
            row.shape[0],
            row.shape[1],
            gbs(row.one),
            gel(row.one),
            gbs(row.all),
            gel(row.all)
        );
    }
    Ok(())
}
