//! Outputs are atomic: an interrupted conversion, a plan that disagrees with the checkpoint and a
//! missing output directory all end in one clear error with nothing at the final name and no
//! `.partial` left behind.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use convert::arch::{plan, PlanOptions};
use convert::pipeline::{execute, ExecOptions, NoProgress, Progress};
use convert::plan::{Plan, PlannedTensor, Source};
use convert::ConvertError;
use formats::checkpoint::Checkpoint;
use formats::ggml_type::GgmlType;

fn fixture() -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_fixture(
        fixtures::Arch::DeepseekV3,
        dir.path(),
        &fixtures::Options::default(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    (dir, ckpt)
}

fn nothing_at(out: &Path) {
    assert!(!out.exists(), "{} exists", out.display());
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "partial left behind");
}

/// Sets the interrupt flag when the second tensor starts.
struct InterruptAfterFirst {
    flag: Arc<AtomicBool>,
    first: Mutex<Option<String>>,
    begun: AtomicBool,
}

impl Progress for InterruptAfterFirst {
    fn begin(&self, _total: u64) {
        self.begun.store(true, Ordering::SeqCst);
    }
    fn advance(&self, _bytes: u64, tensor: &str) {
        let mut first = self.first.lock().unwrap();
        match first.as_deref() {
            None => *first = Some(tensor.to_string()),
            Some(f) if f != tensor => self.flag.store(true, Ordering::SeqCst),
            _ => {}
        }
    }
}

#[test]
fn interrupt_after_the_first_tensor_leaves_nothing() {
    let (dir, ckpt) = fixture();
    let p = plan(&ckpt, &PlanOptions::default()).unwrap();
    let out = dir.path().join("out.gguf");
    let flag = Arc::new(AtomicBool::new(false));
    let progress = InterruptAfterFirst {
        flag: Arc::clone(&flag),
        first: Mutex::new(None),
        begun: AtomicBool::new(false),
    };
    let opts = ExecOptions {
        interrupt: Some(flag),
        chunk_bytes: 4096,
        ..ExecOptions::default()
    };
    let err = execute(&ckpt, &p, &out, &opts, &progress).unwrap_err();
    assert!(matches!(err, ConvertError::Interrupted { .. }), "{err}");
    assert!(progress.begun.load(Ordering::SeqCst));
    assert!(err.to_string().contains("interrupted"), "{err}");
    nothing_at(&out);
}

#[test]
fn missing_output_directory_is_one_clear_error() {
    let (dir, ckpt) = fixture();
    let p = plan(&ckpt, &PlanOptions::default()).unwrap();
    let out = dir.path().join("no/such/dir/out.gguf");
    let err = execute(&ckpt, &p, &out, &ExecOptions::default(), &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("no/such/dir"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    nothing_at(&out);
}

fn one_tensor_plan(t: PlannedTensor) -> Plan {
    Plan {
        arch: "llama".into(),
        metadata: vec![(
            "general.architecture".into(),
            formats::gguf::GgufValue::String("llama".into()),
        )],
        tensors: vec![t],
        skipped: vec![],
    }
}

#[test]
fn plans_that_disagree_with_the_checkpoint_fail_before_writing() {
    let (dir, ckpt) = fixture();
    let out = dir.path().join("out.gguf");
    let name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
    let shape = ckpt.meta(name).unwrap().shape.clone();
    let cases = [
        // Wrong shape for a plain tensor.
        PlannedTensor {
            name: "a.weight".into(),
            dims: vec![shape[1] as u64, shape[0] as u64 + 1],
            ggml_type: GgmlType::F32,
            source: Source::Tensor { name: name.into() },
        },
        // A missing checkpoint tensor.
        PlannedTensor {
            name: "b.weight".into(),
            dims: vec![4, 4],
            ggml_type: GgmlType::F32,
            source: Source::Tensor {
                name: "model.nope.weight".into(),
            },
        },
        // Experts of a stack that disagree with the declared expert count.
        PlannedTensor {
            name: "c.weight".into(),
            dims: vec![shape[1] as u64, shape[0] as u64, 3],
            ggml_type: GgmlType::F32,
            source: Source::Stack {
                names: vec![name.into(), name.into()],
            },
        },
        // Too few computed values.
        PlannedTensor {
            name: "d.weight".into(),
            dims: vec![8],
            ggml_type: GgmlType::F32,
            source: Source::Values(vec![1.0; 7]),
        },
        // A row length Q8_0 cannot hold.
        PlannedTensor {
            name: "e.weight".into(),
            dims: vec![7],
            ggml_type: GgmlType::Q8_0,
            source: Source::Values(vec![1.0; 7]),
        },
        // A type without a codec (Q8_1 is an activation format; model files never hold it).
        PlannedTensor {
            name: "f.weight".into(),
            dims: vec![256],
            ggml_type: GgmlType::Q8_1,
            source: Source::Values(vec![1.0; 256]),
        },
    ];
    for t in cases {
        let label = t.name.clone();
        let err = execute(
            &ckpt,
            &one_tensor_plan(t),
            &out,
            &ExecOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{label}: {msg}");
        eprintln!("{label}: {msg}");
        nothing_at(&out);
    }
}

#[test]
fn a_hand_built_plan_converts_and_sums_up() {
    let (dir, ckpt) = fixture();
    let out = dir.path().join("out.gguf");
    let name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
    let shape = ckpt.meta(name).unwrap().shape.clone();
    let t = PlannedTensor {
        name: "x.weight".into(),
        dims: vec![shape[1] as u64, shape[0] as u64],
        ggml_type: GgmlType::F32,
        source: Source::PermuteRope {
            name: name.into(),
            n_head: 2,
        },
    };
    let summary = execute(
        &ckpt,
        &one_tensor_plan(t),
        &out,
        &ExecOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(summary.tensors, 1);
    assert_eq!(summary.file_bytes, std::fs::metadata(&out).unwrap().len());
    assert_eq!(summary.source_bytes, ckpt.meta(name).unwrap().len);
}
