//! The engine over an in-memory weight source: memory groups do not change the logits, the
//! observer sees every matmul input, logit positions are honoured, and bad input gives one-line
//! errors naming the tensor or key.

use std::collections::HashMap;
use std::sync::Mutex;

use formats::gguf::{GgufArray, GgufValue};
use verify::engine::{MemoryLimits, Progress};
use verify::{Engine, EvalOptions, LayerObserver, LogitPositions, Mat, VerifyError, WeightSource};

#[path = "support/record_attention.rs"]
mod record_attention;
use record_attention::RecordAttention;

/// A model held in memory: GGUF metadata and f32 tensors under GGUF names.
struct MemSource {
    meta: Vec<(String, GgufValue)>,
    tensors: HashMap<String, (Vec<u64>, Vec<f32>)>,
    order: Vec<String>,
}

impl MemSource {
    fn put(&mut self, name: &str, dims: &[u64], seed: u64, scale: f32) {
        let n: u64 = dims.iter().product();
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let data = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
            })
            .collect();
        self.order.push(name.to_string());
        self.tensors.insert(name.to_string(), (dims.to_vec(), data));
    }
    fn set(&mut self, key: &str, v: GgufValue) {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_string(), v));
    }
}

impl WeightSource for MemSource {
    fn metadata(&self) -> &[(String, GgufValue)] {
        &self.meta
    }
    fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn tensor_dims(&self, name: &str) -> Option<Vec<u64>> {
        self.tensors.get(name).map(|t| t.0.clone())
    }
    fn tensor_bytes(&self, name: &str) -> Option<u64> {
        self.tensors.get(name).map(|t| t.1.len() as u64 * 4)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.order.clone()
    }
    fn load_f32(&self, name: &str) -> verify::error::Result<Vec<f32>> {
        self.tensors
            .get(name)
            .map(|t| t.1.clone())
            .ok_or_else(|| self.missing(name))
    }
    fn description(&self) -> String {
        "memory model".into()
    }
}

const EMBD: u64 = 32;
const FF: u64 = 48;
const HEADS: u64 = 4;
const KV: u64 = 2;
const VOCAB: u64 = 50;
const LAYERS: usize = 2;

/// A tiny qwen2 (biases, NEOX rope, GQA) or llama (with `rope_freqs`).
fn model(arch: &str, tied: bool) -> MemSource {
    let mut m = MemSource {
        meta: Vec::new(),
        tensors: HashMap::new(),
        order: Vec::new(),
    };
    let u32v = GgufValue::U32;
    m.set("general.architecture", GgufValue::String(arch.into()));
    m.set(&format!("{arch}.block_count"), u32v(LAYERS as u32));
    m.set(&format!("{arch}.embedding_length"), u32v(EMBD as u32));
    m.set(&format!("{arch}.feed_forward_length"), u32v(FF as u32));
    m.set(&format!("{arch}.attention.head_count"), u32v(HEADS as u32));
    m.set(&format!("{arch}.attention.head_count_kv"), u32v(KV as u32));
    m.set(&format!("{arch}.rope.freq_base"), GgufValue::F32(10000.0));
    m.set(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        GgufValue::F32(1e-6),
    );
    m.set(
        "tokenizer.ggml.tokens",
        GgufValue::Array(GgufArray::strings((0..VOCAB).map(|i| format!("t{i}")))),
    );
    let hd = EMBD / HEADS;
    m.put("token_embd.weight", &[EMBD, VOCAB], 1, 1.0);
    m.put("output_norm.weight", &[EMBD], 2, 1.0);
    if !tied {
        m.put("output.weight", &[EMBD, VOCAB], 3, 0.3);
    }
    if arch == "llama" {
        m.put("rope_freqs.weight", &[hd / 2], 4, 1.0);
        let f = &mut m.tensors.get_mut("rope_freqs.weight").unwrap().1;
        f.iter_mut().for_each(|v| *v += 1.5);
    }
    for l in 0..LAYERS {
        let p = format!("blk.{l}.");
        let seed = 100 * (l as u64 + 1);
        m.put(&format!("{p}attn_norm.weight"), &[EMBD], seed, 1.0);
        m.put(
            &format!("{p}attn_q.weight"),
            &[EMBD, HEADS * hd],
            seed + 1,
            0.3,
        );
        m.put(
            &format!("{p}attn_k.weight"),
            &[EMBD, KV * hd],
            seed + 2,
            0.3,
        );
        m.put(
            &format!("{p}attn_v.weight"),
            &[EMBD, KV * hd],
            seed + 3,
            0.3,
        );
        if arch == "qwen2" {
            m.put(&format!("{p}attn_q.bias"), &[HEADS * hd], seed + 4, 0.1);
            m.put(&format!("{p}attn_k.bias"), &[KV * hd], seed + 5, 0.1);
            m.put(&format!("{p}attn_v.bias"), &[KV * hd], seed + 6, 0.1);
        }
        m.put(
            &format!("{p}attn_output.weight"),
            &[HEADS * hd, EMBD],
            seed + 7,
            0.2,
        );
        m.put(&format!("{p}ffn_norm.weight"), &[EMBD], seed + 8, 1.0);
        m.put(&format!("{p}ffn_gate.weight"), &[EMBD, FF], seed + 9, 0.3);
        m.put(&format!("{p}ffn_up.weight"), &[EMBD, FF], seed + 10, 0.3);
        m.put(&format!("{p}ffn_down.weight"), &[FF, EMBD], seed + 11, 0.2);
    }
    m
}

fn seqs() -> Vec<Vec<u32>> {
    [10usize, 7, 12]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            (0..n)
                .map(|i| ((i * 7 + k * 13) % VOCAB as usize) as u32)
                .collect()
        })
        .collect()
}

type Logits = HashMap<(usize, usize), Vec<f32>>;

fn run(src: &MemSource, opts: &EvalOptions<'_>) -> Logits {
    let engine = Engine::new(src).unwrap();
    let mut out = HashMap::new();
    engine
        .evaluate(&seqs(), opts, &mut |s, p, l| {
            assert!(out.insert((s, p), l.to_vec()).is_none());
        })
        .unwrap();
    out
}

#[test]
fn memory_groups_do_not_change_logits() {
    for (arch, tied) in [("qwen2", false), ("llama", true)] {
        let src = model(arch, tied);
        let whole = run(&src, &EvalOptions::default());
        assert_eq!(whole.len(), 29);
        let engine = Engine::new(&src).unwrap();
        let (fixed, per_token) = engine.memory_model(12);
        // Room for 12 tokens: every sequence becomes its own group.
        let progress = Mutex::new(Vec::new());
        let record = |p: &Progress| progress.lock().unwrap().push(*p);
        let opts = EvalOptions {
            max_memory: Some(fixed + per_token * 12),
            progress: Some(&record),
            ..EvalOptions::default()
        };
        let grouped = run(&src, &opts);
        let progress = progress.into_inner().unwrap();
        assert_eq!(progress.len(), 3 * (LAYERS + 1), "{progress:?}");
        assert!(progress.iter().all(|p| p.n_groups == 3));
        for (k, v) in &whole {
            let g = &grouped[k];
            let d = v
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{arch} {k:?}: {d}");
        }
        let too_small = EvalOptions {
            max_memory: Some(fixed),
            ..EvalOptions::default()
        };
        let err = engine
            .evaluate(&seqs(), &too_small, &mut |_, _, _| {})
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::MemoryLimit { tokens: 12, .. }),
            "{err}"
        );

        // A device budget (what a GPU backend offers for activations) groups by tokens alone,
        // the tighter of the two limits wins, and a budget below one sequence is an error
        // naming the tokens. Sequence lengths 10, 7, 12.
        let device = |bytes: u64| MemoryLimits {
            device: Some(bytes),
            ..MemoryLimits::default()
        };
        let plan = |l: MemoryLimits| engine.plan_groups(&seqs(), l);
        assert_eq!(plan(MemoryLimits::default()).unwrap(), vec![0..3]);
        assert_eq!(plan(device(per_token * 29)).unwrap(), vec![0..3]);
        assert_eq!(plan(device(per_token * 17)).unwrap(), vec![0..2, 2..3]);
        assert_eq!(
            plan(device(per_token * 12)).unwrap(),
            vec![0..1, 1..2, 2..3]
        );
        let both = MemoryLimits {
            host: Some(fixed + per_token * 29),
            device: Some(per_token * 12),
            ..MemoryLimits::default()
        };
        assert_eq!(plan(both).unwrap(), vec![0..1, 1..2, 2..3]);
        let err = plan(device(per_token * 11)).unwrap_err();
        assert!(
            matches!(err, VerifyError::DeviceMemory { tokens: 12, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("12 tokens"), "{err}");

        // Without --max-memory, the default from the available memory cuts groups where it
        // can and never fails: too small for one sequence means one sequence per group; an
        // explicit limit overrides it.
        let soft = |bytes: u64| MemoryLimits {
            host_default: Some(bytes),
            ..MemoryLimits::default()
        };
        assert_eq!(
            plan(soft(fixed + per_token * 17)).unwrap(),
            vec![0..2, 2..3]
        );
        assert_eq!(plan(soft(fixed)).unwrap(), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan(soft(0)).unwrap(), vec![0..1, 1..2, 2..3]);
        let explicit = MemoryLimits {
            host: Some(fixed + per_token * 29),
            host_default: Some(fixed),
            ..MemoryLimits::default()
        };
        assert_eq!(plan(explicit).unwrap(), vec![0..3]);
    }
}

#[test]
fn logit_positions_are_honoured() {
    let src = model("qwen2", false);
    let all = run(&src, &EvalOptions::default());
    let range = run(
        &src,
        &EvalOptions {
            logit_positions: LogitPositions::Range(5..9),
            ..EvalOptions::default()
        },
    );
    let mut keys: Vec<_> = range.keys().copied().collect();
    keys.sort();
    let want: Vec<_> = [
        (0, 5),
        (0, 6),
        (0, 7),
        (0, 8),
        (1, 5),
        (1, 6),
        (2, 5),
        (2, 6),
        (2, 7),
        (2, 8),
    ]
    .to_vec();
    assert_eq!(keys, want);
    for k in &keys {
        let d = all[k]
            .iter()
            .zip(&range[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5);
    }
    let only_last = |s: usize, p: usize| p + 1 == seqs()[s].len();
    let last = run(
        &src,
        &EvalOptions {
            logit_positions: LogitPositions::Predicate(&only_last),
            ..EvalOptions::default()
        },
    );
    assert_eq!(last.len(), 3);
}

/// Records (layer, weight, rows) of every matmul.
struct Recorder(Mutex<Vec<(usize, String, usize, usize)>>);

impl LayerObserver for Recorder {
    fn on_matmul(&self, layer: usize, weight: &str, input: &Mat) {
        self.0
            .lock()
            .unwrap()
            .push((layer, weight.to_string(), input.rows, input.cols));
    }
}

#[test]
fn observer_sees_every_matmul_input() {
    let src = model("qwen2", false);
    let rec = Recorder(Mutex::new(Vec::new()));
    let opts = EvalOptions {
        observer: Some(&rec),
        logit_positions: LogitPositions::Range(0..1),
        ..EvalOptions::default()
    };
    run(&src, &opts);
    let seen = rec.0.into_inner().unwrap();
    let mut want = Vec::new();
    for l in 0..LAYERS {
        for (w, cols) in [
            ("attn_q", EMBD),
            ("attn_k", EMBD),
            ("attn_v", EMBD),
            ("attn_output", EMBD),
            ("ffn_gate", EMBD),
            ("ffn_up", EMBD),
            ("ffn_down", FF),
        ] {
            want.push((l, format!("blk.{l}.{w}.weight"), 29, cols as usize));
        }
    }
    want.push((LAYERS, "output.weight".to_string(), 3, EMBD as usize));
    assert_eq!(seen, want);
}

fn engine_error(src: &MemSource) -> String {
    let err = match Engine::new(src) {
        Err(e) => e,
        Ok(engine) => engine
            .evaluate(&seqs(), &EvalOptions::default(), &mut |_, _, _| {})
            .unwrap_err(),
    };
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    msg
}

#[test]
fn bad_models_give_one_line_errors() {
    let mut m = model("qwen2", false);
    m.tensors.get_mut("blk.1.ffn_up.weight").unwrap().0 = vec![EMBD, FF + 1];
    let msg = engine_error(&m);
    assert!(
        msg.contains("'blk.1.ffn_up.weight'")
            && msg.contains("[32, 49]")
            && msg.contains("[32, 48]"),
        "{msg}"
    );

    let mut m = model("llama", false);
    m.tensors.remove("blk.0.attn_v.weight");
    let msg = engine_error(&m);
    assert!(
        msg.contains("memory model: tensor 'blk.0.attn_v.weight' is missing"),
        "{msg}"
    );

    let mut m = model("qwen2", false);
    m.set("general.architecture", GgufValue::String("gpt2".into()));
    assert!(engine_error(&m).contains("architecture 'gpt2' is not supported"));

    let mut m = model("qwen2", false);
    m.meta.retain(|(k, _)| k != "qwen2.embedding_length");
    assert!(engine_error(&m).contains("'qwen2.embedding_length' is missing"));

    let mut m = model("qwen2", false);
    m.set("qwen2.attention.head_count_kv", GgufValue::U32(3));
    assert!(engine_error(&m).contains("does not divide head_count 4"));

    let mut m = model("qwen2", false);
    m.set("qwen2.rope.freq_base", GgufValue::String("x".into()));
    assert!(engine_error(&m).contains("'qwen2.rope.freq_base': expected a float"));

    let m = model("qwen2", false);
    let engine = Engine::new(&m).unwrap();
    let err = engine
        .evaluate(
            &[vec![1, 2, VOCAB as u32]],
            &EvalOptions::default(),
            &mut |_, _, _| {},
        )
        .unwrap_err();
    assert!(matches!(err, VerifyError::BadToken { pos: 2, .. }), "{err}");
}

#[test]
fn causal_prefix_logits_do_not_depend_on_later_tokens() {
    let src = model("llama", false);
    let engine = Engine::new(&src).unwrap();
    let a: Vec<u32> = vec![3, 9, 4, 7, 1, 2];
    let mut b = a.clone();
    b[5] = 40;
    let mut got: HashMap<(usize, usize), Vec<f32>> = HashMap::new();
    engine
        .evaluate(&[a, b], &EvalOptions::default(), &mut |s, p, l| {
            got.insert((s, p), l.to_vec());
        })
        .unwrap();
    for p in 0..5 {
        assert_eq!(got[&(0, p)], got[&(1, p)], "position {p}");
    }
    assert_ne!(got[&(0, 5)], got[&(1, 5)]);
}

/// The dense blocks (llama, qwen2) run their GQA attention through the engine's backend, once
/// per layer with the model's head layout, and routing it there changes no logit bit.
#[test]
fn dense_attention_runs_on_the_backend() {
    for (arch, tied) in [("qwen2", false), ("llama", true)] {
        let src = model(arch, tied);
        let want = run(&src, &EvalOptions::default());
        let backend = std::sync::Arc::new(RecordAttention::default());
        let engine = Engine::new(&src).unwrap().with_backend(backend.clone());
        let mut got = HashMap::new();
        engine
            .evaluate(&seqs(), &EvalOptions::default(), &mut |s, p, l| {
                got.insert((s, p), l.to_vec());
            })
            .unwrap();
        assert_eq!(
            got, want,
            "{arch}: attention on the backend changed the logits"
        );
        let shapes = backend.shapes.lock().unwrap();
        assert_eq!(shapes.len(), LAYERS, "{arch}: {shapes:?}");
        let tokens: usize = seqs().iter().map(Vec::len).sum();
        for (s, rows) in shapes.iter() {
            assert_eq!(*rows, tokens);
            let hd = (EMBD / HEADS) as usize;
            assert_eq!(
                (s.n_head, s.n_head_kv, s.head_dim_k, s.head_dim_v),
                (HEADS as usize, KV as usize, hd, hd)
            );
            assert_eq!(s.scale, 1.0 / (hd as f32).sqrt());
        }
    }
}

/// The available-memory default reads `MemAvailable` in kB from a meminfo text, and nothing
/// from a text without it or in other units.
#[test]
fn mem_available_is_parsed_from_meminfo() {
    use verify::engine::parse_mem_available;
    let text =
        "MemTotal:       24551304 kB\nMemFree:         1207516 kB\nMemAvailable:   18302420 kB\n";
    assert_eq!(parse_mem_available(text), Some(18_302_420 * 1024));
    assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    assert_eq!(parse_mem_available("MemAvailable: 5 MB\n"), None);
    assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    if cfg!(target_os = "linux") {
        assert!(verify::engine::host_available_memory().is_some_and(|b| b > 0));
    }
}
