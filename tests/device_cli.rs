//! `--device` on the commands that run the forward pass: `cpu` works as before, `cuda` on a
//! machine without the `cuda` feature or without a driver fails with one clear line (exit 1,
//! no panic), and a GPU machine (`cargo xtask gpu-check`) agrees with the CPU.

use std::path::Path;
use std::process::{Command, Output};

fn r1q(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args(args)
        .output()
        .expect("run r1q")
}

fn text(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("text.txt");
    let s: String = (0..400)
        .map(|i| format!("word{} and more words {i}. ", i % 37))
        .collect();
    std::fs::write(&p, s).expect("write text");
    p
}

/// The `cuda` error of this build: names the rebuild without the feature, the missing driver
/// (or library, or GPU) with it. On a machine with a GPU the run succeeds instead.
fn check_cuda_outcome(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Only a build with the feature, on a machine with a GPU, gets here.
        assert!(
            verify::backend::cuda_built(),
            "{what}: cuda ran without the feature"
        );
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    if cfg!(feature = "cuda") {
        assert!(
            err.contains("no CUDA driver found")
                || err.contains("could not be loaded")
                || err.contains("CUDA device"),
            "{what}: {err}"
        );
    } else {
        assert!(err.contains("built without CUDA support"), "{what}: {err}");
        assert!(err.contains("--features cuda"), "{what}: {err}");
    }
}

#[test]
fn perplexity_and_verify_take_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("qwen2");
    fixtures::write_fixture(fixtures::Arch::Qwen2, &model, &fixtures::Options::default())
        .expect("fixture");
    let text = text(dir.path());
    let ppl = |device: &str| {
        r1q(&[
            "perplexity".as_ref(),
            model.as_os_str(),
            "-f".as_ref(),
            text.as_os_str(),
            "-c".as_ref(),
            "64".as_ref(),
            "--chunks".as_ref(),
            "2".as_ref(),
            "--device".as_ref(),
            device.as_ref(),
        ])
    };
    let cpu = ppl("cpu");
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    assert!(String::from_utf8_lossy(&cpu.stdout).contains("Final estimate: PPL = "));
    check_cuda_outcome(&ppl("cuda"), "perplexity --device cuda");

    let bad = ppl("tpu");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device 'tpu'"));

    let verify = r1q(&[
        "verify".as_ref(),
        model.as_os_str(),
        model.as_os_str(),
        "-f".as_ref(),
        text.as_os_str(),
        "-c".as_ref(),
        "64".as_ref(),
        "--chunks".as_ref(),
        "2".as_ref(),
        "--device".as_ref(),
        "cuda".as_ref(),
    ]);
    check_cuda_outcome(&verify, "verify --device cuda");
}

/// A device backend that does its work with the CPU references: the engine must hand it every
/// layer weight as raw bytes (through `WeightSource::raw`) and every matmul, and give exactly the
/// CPU engine's logits — the wiring the CUDA backend relies on, tested without a GPU.
#[test]
fn device_seam_routes_weights_and_matmuls_through_the_backend() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use verify::backend::{Backend, Device, DeviceError};
    use verify::{Engine, EvalOptions, GgufSource, Mat};

    #[derive(Default)]
    struct Twin {
        matmuls: AtomicUsize,
        dequants: AtomicUsize,
        layers: AtomicUsize,
    }
    impl Backend for Twin {
        fn device(&self) -> Device {
            Device::Cuda(0)
        }
        fn describe(&self) -> String {
            "cpu twin".into()
        }
        fn matmul(&self, _name: &str, x: &Mat, w: &Mat) -> Mat {
            self.matmuls.fetch_add(1, Ordering::Relaxed);
            verify::ops::matmul(x, w)
        }
        fn dequantizes(&self) -> bool {
            true
        }
        fn dequantize(
            &self,
            _name: &str,
            raw: verify::backend::RawTensor<'_>,
            width: usize,
            rows: std::ops::Range<usize>,
            out: &mut [f32],
        ) -> Result<(), String> {
            self.dequants.fetch_add(1, Ordering::Relaxed);
            verify::backend::dequantize_cpu(raw, width, rows, out)
        }
        fn end_layer(&self) -> Result<(), DeviceError> {
            self.layers.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    for arch in fixtures::Arch::ALL {
        let hf = dir.path().join(format!("{arch}"));
        fixtures::write_fixture(arch, &hf, &fixtures::Options::default()).expect("fixture");
        let gguf = dir.path().join(format!("{arch}.gguf"));
        let out = r1q(&[
            "convert".as_ref(),
            hf.as_os_str(),
            "-o".as_ref(),
            gguf.as_os_str(),
            "--outtype".as_ref(),
            "Q4_K_M".as_ref(),
            "--quiet".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let source = GgufSource::open(&gguf).expect("open");
        let seqs: Vec<Vec<u32>> = vec![(1..20).collect(), (5..30).rev().collect()];
        let logits = |engine: &Engine<'_>| {
            let mut all = Vec::new();
            engine
                .evaluate(&seqs, &EvalOptions::default(), &mut |_, _, l| {
                    all.extend_from_slice(l)
                })
                .expect("evaluate");
            all
        };
        let cpu = logits(&Engine::new(&source).expect("engine"));
        let twin = Arc::new(Twin::default());
        let engine = Engine::new(&source)
            .expect("engine")
            .with_backend(twin.clone());
        assert_eq!(
            logits(&engine),
            cpu,
            "{arch}: the device seam changed the numbers"
        );
        let n_layer = engine.config().n_layer;
        assert!(twin.dequants.load(Ordering::Relaxed) >= n_layer, "{arch}");
        assert!(
            twin.matmuls.load(Ordering::Relaxed) >= 2 * n_layer,
            "{arch}"
        );
        assert_eq!(twin.layers.load(Ordering::Relaxed), n_layer + 1, "{arch}");
    }
}
