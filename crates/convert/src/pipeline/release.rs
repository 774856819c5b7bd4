//! The periodic sweep of a conversion's mapped checkpoint pages; the page release itself is
//! `formats::pages` (which owns the mappings).

pub(crate) use formats::pages::{release_pages, release_range};

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
