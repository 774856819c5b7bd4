//! THE oracle for the mixes: for every fixture architecture and every mix (plus the override
//! options and imatrix-dependent rules), `llama-quantize` from the peer quantizes the converted
//! f32 fixture and the type of every tensor it writes must equal what `quantize::mix::choose_types`
//! chooses for the same tensor list — name by name, and in the same order. The tiny fixtures have
//! many rows that are not multiples of 256, so the fallbacks are exercised too; the DeepSeek
//! fixture has 8 experts, so the `n_expert == 8` bumps are as well.

use std::path::{Path, PathBuf};
use std::process::Command;

use formats::gguf::GgufFile;
use quantize::mix::{choose_types, Mix, MixOptions, ModelInfo, TensorShape, TensorTypeOverride};

fn convert_f32(arch: fixtures::Arch, dir: &Path) -> PathBuf {
    let src = dir.join(format!("{arch}-hf"));
    fixtures::write_fixture(arch, &src, &fixtures::Options::default()).unwrap();
    let out = dir.join(format!("{arch}.f32.gguf"));
    let res = Command::new(env!("CARGO_BIN_EXE_r1q"))
        .args([
            "convert".as_ref(),
            src.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .args(["--outtype", "f32", "--quiet"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// Calibration text: ../shared/data's calibration.txt when present, else a built-in paragraph.
fn calibration_text(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let base = std::env::var_os("R1Q_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::support::workspace_root().join("../shared/data"))
        .join("text/calibration.txt");
    let text = std::fs::read_to_string(&base).unwrap_or_else(|_| {
        "It is a truth universally acknowledged, that a single man in possession of a good \
         fortune, must be in want of a wife. However little known the feelings or views of such \
         a man may be on his first entering a neighbourhood, this truth is so well fixed in the \
         minds of the surrounding families, that he is considered the rightful property of some \
         one or other of their daughters. "
            .repeat(60)
    });
    std::fs::write(&p, text).unwrap();
    p
}

fn make_imatrix(bin: &Path, model: &Path, text: &Path, out: &Path) {
    let res = Command::new(bin)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(text)
        .arg("-o")
        .arg(out)
        .args([
            "-c", "128", "-b", "128", "--chunks", "2", "-t", "2", "-ngl", "0", "--no-ppl",
        ])
        .output()
        .unwrap();
    assert!(
        res.status.success() && out.exists(),
        "llama-imatrix failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

struct Case {
    label: String,
    mix: Mix,
    args: Vec<String>,
    opts: MixOptions,
}

fn case(mix: Mix) -> Case {
    Case {
        label: mix.name().into(),
        mix,
        args: vec![],
        opts: MixOptions::default(),
    }
}

fn cases(imatrix: &Path) -> Vec<Case> {
    let mut v: Vec<Case> = Mix::ALL
        .iter()
        .copied()
        .filter(|&m| m != Mix::Q2_K_S) // needs an imatrix: covered below
        .map(case)
        .collect();
    let with = |mut c: Case, label: &str, args: &[&str], f: &dyn Fn(&mut MixOptions)| {
        c.label = format!("{} {label}", c.label);
        c.args = args.iter().map(|s| s.to_string()).collect();
        f(&mut c.opts);
        c
    };
    for m in [Mix::Q4_K_M, Mix::Q2_K, Mix::Q6_K, Mix::IQ4_NL] {
        v.push(with(case(m), "--pure", &["--pure"], &|o| o.pure = true));
        v.push(with(
            case(m),
            "--leave-output-tensor",
            &["--leave-output-tensor"],
            &|o| o.leave_output_tensor = true,
        ));
        v.push(with(
            case(m),
            "--output-tensor-type q8_0",
            &["--output-tensor-type", "q8_0"],
            &|o| o.output_tensor_type = Some(formats::ggml_type::GgmlType::Q8_0),
        ));
        v.push(with(
            case(m),
            "--token-embedding-type q5_K",
            &["--token-embedding-type", "q5_K"],
            &|o| o.token_embedding_type = Some(formats::ggml_type::GgmlType::Q5_K),
        ));
        v.push(with(
            case(m),
            "--tensor-type ffn_down=q8_0 --tensor-type attn_.*=Q6_K",
            &[
                "--tensor-type",
                "ffn_down=q8_0",
                "--tensor-type",
                "ATTN_.*=Q6_K",
            ],
            &|o| {
                o.tensor_type_overrides = vec![
                    TensorTypeOverride::parse("ffn_down=q8_0").unwrap(),
                    TensorTypeOverride::parse("ATTN_.*=Q6_K").unwrap(),
                ]
            },
        ));
    }
    v.push(with(
        case(Mix::F16),
        "--token-embedding-type q8_0 --tensor-type ffn=q4_0",
        &[
            "--token-embedding-type",
            "q8_0",
            "--tensor-type",
            "ffn=q4_0",
        ],
        &|o| {
            o.token_embedding_type = Some(formats::ggml_type::GgmlType::Q8_0);
            o.tensor_type_overrides = vec![TensorTypeOverride::parse("ffn=q4_0").unwrap()];
        },
    ));
    let im = imatrix.to_string_lossy().into_owned();
    for m in [
        Mix::Q2_K_S,
        Mix::Q4_0,
        Mix::Q5_0,
        Mix::IQ4_NL,
        Mix::IQ4_XS,
        Mix::Q4_K_M,
    ] {
        v.push(with(case(m), "--imatrix", &["--imatrix", &im], &|o| {
            o.has_imatrix = true
        }));
    }
    v
}

#[test]
fn every_mix_matches_llama_quantize_on_every_fixture() {
    let (Some(quant), Some(imat)) = (
        fixtures::support::peer_bin("llama-quantize"),
        fixtures::support::peer_bin("llama-imatrix"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = calibration_text(dir.path());
    let mut compared = Vec::new();
    for arch in fixtures::Arch::ALL {
        let f32 = convert_f32(arch, dir.path());
        let input = GgufFile::open(&f32).unwrap();
        let model = ModelInfo::from_gguf(&input).unwrap();
        let tensors: Vec<TensorShape> = input
            .tensors()
            .iter()
            .map(|t| TensorShape {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
            })
            .collect();
        let imatrix = dir.path().join(format!("{arch}.imatrix.gguf"));
        make_imatrix(&imat, &f32, &text, &imatrix);
        for c in cases(&imatrix) {
            let out = dir.path().join("q.gguf");
            let _ = std::fs::remove_file(&out);
            let res = Command::new(&quant)
                .args(&c.args)
                .arg(&f32)
                .arg(&out)
                .arg(c.mix.name())
                .arg("2")
                .output()
                .unwrap();
            assert!(
                res.status.success(),
                "{arch} {}: llama-quantize failed: {}",
                c.label,
                String::from_utf8_lossy(&res.stderr)
            );
            let theirs = GgufFile::open(&out).unwrap();
            let ours = choose_types(&model, &tensors, c.mix, &c.opts).unwrap();
            let got: Vec<(String, String)> = theirs
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.ggml_type.name().to_owned()))
                .collect();
            let want: Vec<(String, String)> = ours
                .iter()
                .map(|c| (c.name.clone(), c.ggml_type.name().to_owned()))
                .collect();
            let diff: Vec<String> = want
                .iter()
                .zip(&got)
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("ours {a:?} vs llama-quantize {b:?}"))
                .collect();
            assert!(
                diff.is_empty() && want.len() == got.len(),
                "{arch} {}: {} tensors vs {}; differences:\n{}",
                c.label,
                want.len(),
                got.len(),
                diff.join("\n")
            );
            assert_eq!(
                theirs.get("general.file_type").and_then(|v| v.as_u32()),
                Some(c.mix.ftype()),
                "{arch} {}",
                c.label
            );
            compared.push(format!("{arch} {}", c.label));
        }
    }
    eprintln!("matched llama-quantize on {} cases", compared.len());
}
