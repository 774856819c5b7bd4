//! Single-thread codec throughput (MB/s of f32 input) per type on synthetic Gaussian rows, best
//! of several repetitions: `cargo run --release -p quantize --example codec_bench [TYPES…]`.
//! `R1Q_NO_SIMD=1` measures the scalar reference paths. `--imatrix` uses importance weights.
//!
//! Exists to measure the codecs alone (no file I/O, no threads) while tuning them; rows are
//! quantized one call per row so rayon never splits the work.

use std::time::Instant;

use formats::ggml_type::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let imatrix = args.iter().any(|a| a == "--imatrix");
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = [
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
        "IQ4_XS",
    ];
    let names = if names.is_empty() {
        all.to_vec()
    } else {
        names
    };
    let (n, rows) = (4096usize, 512usize);
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..n * rows)
        .map(|_| {
            let (a, b) = (uni(), uni());
            0.02 * (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        })
        .collect();
    let w: Vec<f32> = (0..n).map(|_| uni() * 2.0).collect();
    for name in names {
        let ty = match GgmlType::from_name(name) {
            Some(t) => t,
            None => {
                eprintln!("unknown type {name}");
                continue;
            }
        };
        let rb = ty.row_size(n as u64).unwrap() as usize;
        let mut out = vec![0u8; rb * rows];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(rb)) {
                quantize::quantize_rows(ty, src, n, imatrix.then_some(&w[..]), dst).unwrap();
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let sum: u64 = out.iter().map(|&b| u64::from(b)).sum();
        println!(
            "{name:7} {:8.1} MB/s  (checksum {sum})",
            (x.len() * 4) as f64 / best / 1e6
        );
    }
}
