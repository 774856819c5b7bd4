//! Keeping memory-mapped checkpoint pages out of the resident set once they have been decoded.
//!
//! The shards are mapped read-only; every page touched stays mapped (and counted in RSS) until
//! the kernel needs it back. Converting 690 GB through mmap would show an RSS of whatever the page
//! cache holds, hiding the pipeline's real footprint and competing with it. After each chunk the
//! pipeline drops the pages that chunk read with `madvise(MADV_DONTNEED)`: the data stays in the
//! page cache, and a later read (of a neighbouring chunk sharing an edge page, or the other half
//! of `kv_b_proj`) simply faults it back in with the same bytes.
//!
//! This belongs in `formats` (which owns the mappings) as a `TensorView`/`Checkpoint` method;
//! until it is there, it lives here, confined to this one function.

/// Drops the pages under `bytes` (rounded outward to whole pages) from this process's page
/// tables. Only for slices of read-only file mappings: their contents cannot change, so readers
/// holding references see the same bytes after the refault.
#[cfg(target_os = "linux")]
pub(crate) fn release_pages(bytes: &[u8]) {
    release_range(
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
}

/// Like [`release_pages`] for the address range `start..end`, which must lie inside one
/// read-only file mapping (the span of one shard's tensors: see `Sweeper`).
///
/// Needed besides the per-chunk release because the kernel's fault-around maps up to 64 KiB of
/// cached neighbours on each fault, including pages of chunks already released; a periodic sweep
/// over whole shards drops those too.
#[cfg(target_os = "linux")]
pub(crate) fn release_range(start: usize, end: usize) {
    if end <= start {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let page = if page.is_power_of_two() { page } else { 4096 };
    let start = start & !(page - 1);
    let end = end.div_ceil(page) * page;
    // SAFETY: the range lies within the mapping that holds `bytes` (mappings are page-aligned and
    // span whole pages). MADV_DONTNEED on a read-only shared file mapping only unmaps pages; the
    // next access reads the unchanged file contents back, so no reference observes a change. The
    // call's result is ignored: failing to release only costs memory, never correctness.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

/// Elsewhere the pages are left to the OS.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_pages(_bytes: &[u8]) {}

/// Elsewhere the pages are left to the OS.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_range(_start: usize, _end: usize) {}

/// The address span of every shard's tensor data, swept with [`release_range`] every few
/// chunks so fault-around pages cannot accumulate over a 690 GB run.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    spans: Vec<(usize, usize)>,
}

impl Sweeper {
    /// Spans of `ckpt`'s shards, from its tensor views (headers only, no data touched).
    pub(crate) fn new(ckpt: &formats::checkpoint::Checkpoint) -> Self {
        let mut by_file: std::collections::HashMap<&std::path::Path, (usize, usize)> =
            std::collections::HashMap::new();
        for m in ckpt.tensors() {
            let Ok(view) = ckpt.tensor(&m.name) else {
                continue;
            };
            let (a, b) = (
                view.data.as_ptr() as usize,
                view.data.as_ptr() as usize + view.data.len(),
            );
            let e = by_file.entry(m.file.as_path()).or_insert((a, b));
            *e = (e.0.min(a), e.1.max(b));
        }
        Sweeper {
            spans: by_file.into_values().collect(),
        }
    }

    /// Drops every mapped checkpoint page from the resident set (in-flight chunks fault theirs
    /// back in from the page cache).
    pub(crate) fn sweep(&self) {
        for &(a, b) in &self.spans {
            release_range(a, b);
        }
    }
}
