//! `cargo xtask bench pull`: `r1q pull` throughput from a loopback hub (API + `resolve` with a
//! 302 to a second "CDN" port, like the real hub's LFS files) on a few hundred MB of synthetic
//! LFS files, with 1 job and with the default number of jobs, next to sha256 alone.
//!
//! "hash CPU" is the share of one core that sha256 needs at the measured download rate
//! (download GB/s ÷ sha256 GB/s): it says whether hashing while streaming can become the
//! bottleneck. The server runs in this process on the same cores, so the GB/s are a lower bound
//! for a real link's client-side cost.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use convert::hub::download::sha256_hex;

/// Synthetic files: count × size.
const FILES: usize = 8;
const FILE_BYTES: usize = 48 << 20;

struct File {
    name: String,
    data: Vec<u8>,
    sha256: String,
}

/// Builds r1q (release), serves the files and prints the table.
pub fn run(reps: usize) -> Result<()> {
    let root = crate::test::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "--release", "--bin", "r1q"])
        .current_dir(&root)
        .status()
        .context("building r1q")?;
    if !status.success() {
        bail!("cargo build --release --bin r1q failed");
    }
    let bin = root.join("target/release/r1q");
    let work = root.join("target/bench-pull");

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let files: Vec<File> = (0..FILES)
        .map(|i| {
            let data: Vec<u8> = (0..FILE_BYTES / 8)
                .flat_map(|_| {
                    seed ^= seed >> 12;
                    seed ^= seed << 25;
                    seed ^= seed >> 27;
                    seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
                })
                .collect();
            File {
                name: format!("model-{:05}-of-{FILES:05}.safetensors", i + 1),
                sha256: sha256_hex(&data),
                data,
            }
        })
        .collect();
    let total: usize = files.iter().map(|f| f.data.len()).sum();

    // sha256 alone, one thread.
    let mut sha_best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        for f in &files {
            std::hint::black_box(sha256_hex(&f.data));
        }
        sha_best = sha_best.min(t.elapsed().as_secs_f64());
    }
    let sha_gbs = total as f64 / sha_best / 1e9;

    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let main = TcpListener::bind("127.0.0.1:0")?;
    let cdn = TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", main.local_addr()?);
    let cdn_url = format!("http://{}", cdn.local_addr()?);
    let servers = [
        serve(main, files.clone(), Some(cdn_url), stop.clone()),
        serve(cdn, files.clone(), None, stop.clone()),
    ];

    let jobs_n = convert::hub::DEFAULT_JOBS;
    println!(
        "`r1q pull` from a loopback hub (302 to a CDN port), {FILES} LFS files × {} MB = {} MB, \
         best of {reps}; sha256 alone (sha2 crate, 1 thread): {sha_gbs:.2} GB/s; \
         hash CPU = share of one core sha256 needs at that rate.\n",
        FILE_BYTES >> 20,
        total >> 20
    );
    println!("| jobs | s | GB/s | hash CPU (% of one core) |");
    println!("|---:|---:|---:|---:|");
    for jobs in [1, jobs_n] {
        let mut best = f64::MAX;
        for _ in 0..reps.max(1) {
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work)?;
            let t = Instant::now();
            let out = Command::new(&bin)
                .args([
                    "pull",
                    "bench/synthetic",
                    "--quiet",
                    "--jobs",
                    &jobs.to_string(),
                ])
                .env("HF_ENDPOINT", &endpoint)
                .env("HF_HUB_CACHE", work.join("cache"))
                .env_remove("HF_TOKEN")
                .env_remove("HF_HUB_OFFLINE")
                .output()
                .context("running r1q pull")?;
            let secs = t.elapsed().as_secs_f64();
            if !out.status.success() {
                bail!("r1q pull failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            best = best.min(secs);
        }
        let gbs = total as f64 / best / 1e9;
        println!(
            "| {jobs} | {best:.2} | {gbs:.2} | {:.0} % |",
            100.0 * gbs / sha_gbs
        );
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A minimal hub: `/api/models/bench/synthetic/revision/main`, `/…/resolve/…` (302 to the CDN
/// when `cdn` is set) and `/blobs/<sha256>` (the CDN).
fn serve(
    listener: TcpListener,
    files: Arc<Vec<File>>,
    cdn: Option<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let _ = listener.set_nonblocking(true);
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    let (files, cdn, stop) = (files.clone(), cdn.clone(), stop.clone());
                    conns.push(std::thread::spawn(move || {
                        let _ = connection(s, &files, cdn.as_deref(), &stop);
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
            conns.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
        }
        for c in conns {
            let _ = c.join();
        }
    })
}

fn connection(s: TcpStream, files: &[File], cdn: Option<&str>, stop: &AtomicBool) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    for _ in 0..10_000 {
        let mut line = String::new();
        let mut idle = 0;
        loop {
            if stop.load(Ordering::Relaxed) || idle > 300 {
                return Ok(());
            }
            match r.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => break,
                Err(_) => idle += 1,
            }
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let commit = "b".repeat(40);
        if path.starts_with("/api/models/") {
            let siblings: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    serde_json::json!({"rfilename": f.name, "size": f.data.len(), "blobId": "a".repeat(40),
                        "lfs": {"sha256": f.sha256, "size": f.data.len()}})
                })
                .collect();
            let body = serde_json::json!({"sha": commit, "siblings": siblings}).to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        } else if let (Some(cdn), Some(name)) = (cdn, path.rsplit('/').next()) {
            let sha = files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.sha256.as_str())
                .unwrap_or("");
            write!(
                w,
                "HTTP/1.1 302 Found\r\nLocation: {cdn}/blobs/{sha}\r\nContent-Length: 0\r\n\r\n"
            )?;
        } else if let Some(f) = files.iter().find(|f| path.ends_with(&f.sha256)) {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                f.data.len()
            )?;
            w.write_all(&f.data)?;
        } else {
            write!(w, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
        w.flush()?;
    }
    Ok(())
}
