//! Keeping memory-mapped file pages out of the resident set once they have been decoded.
//!
//! Checkpoint shards and GGUF files are mapped read-only; every page touched stays mapped (and
//! counted in RSS) until the kernel needs it back. Streaming 690 GB through mmap — a conversion,
//! or a forward pass that reads one layer after another — would show an RSS of whatever the page
//! cache holds, hiding the real footprint and competing with it. Readers that are done with a
//! range drop its pages with `madvise(MADV_DONTNEED)`: the data stays in the page cache, and a
//! later read simply faults it back in with the same bytes.
//!
//! This lives in `formats` because `formats` owns the mappings ([`crate::gguf::GgufFile`],
//! [`crate::checkpoint::Checkpoint`]); only slices of those read-only file mappings may be passed.

/// Drops the pages under `bytes` (rounded outward to whole pages) from this process's page
/// tables. Only for slices of read-only file mappings: their contents cannot change, so readers
/// holding references see the same bytes after the refault.
pub fn release_pages(bytes: &[u8]) {
    release_range(
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
}

/// Like [`release_pages`] for the address range `start..end`, which must lie inside one
/// read-only file mapping (say, the span of one shard's tensors).
///
/// Needed besides per-slice releases because the kernel's fault-around maps up to 64 KiB of
/// cached neighbours on each fault, including pages already released; a periodic sweep over a
/// whole mapping drops those too.
#[cfg(target_os = "linux")]
pub fn release_range(start: usize, end: usize) {
    if end <= start {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let page = if page.is_power_of_two() { page } else { 4096 };
    let start = start & !(page - 1);
    let end = end.div_ceil(page) * page;
    // SAFETY: the range lies within a read-only file mapping (mappings are page-aligned and span
    // whole pages). MADV_DONTNEED on a read-only file mapping only unmaps pages; the next access
    // reads the unchanged file contents back, so no reference observes a change. The result is
    // ignored: failing to release only costs memory, never correctness.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

/// Elsewhere the pages are left to the OS.
#[cfg(not(target_os = "linux"))]
pub fn release_range(_start: usize, _end: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Released pages read back the same bytes (the property every caller relies on).
    #[test]
    fn released_mapping_reads_back_unchanged() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let map = unsafe { memmap2::Mmap::map(f.as_file()) }.unwrap();
        assert_eq!(&map[..], &data[..]);
        release_pages(&map[5000..9000]);
        release_pages(&map[..0]);
        release_range(map.as_ptr() as usize, map.as_ptr() as usize + map.len());
        assert_eq!(&map[..], &data[..]);
    }
}
