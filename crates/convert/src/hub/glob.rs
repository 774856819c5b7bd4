//! `--include`/`--exclude` patterns with huggingface_hub's semantics (`filter_repo_objects`):
//! Python `fnmatch.fnmatchcase` — `*` matches anything including `/`, `?` one character,
//! `[abc]`/`[!abc]`/`[a-z]` classes — and a pattern ending in `/` means "everything under it".

/// Keeps `path` if it matches one include pattern (or there are none) and no exclude pattern.
pub fn keep(path: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| fnmatch(&dir_wildcard(p), path)))
        && !exclude.iter().any(|p| fnmatch(&dir_wildcard(p), path))
}

fn dir_wildcard(p: &str) -> String {
    if p.ends_with('/') {
        format!("{p}*")
    } else {
        p.to_string()
    }
}

/// Python's `fnmatch.fnmatchcase(name, pattern)`.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches(&p, &n)
}

fn matches(p: &[char], n: &[char]) -> bool {
    // Iterative matcher with backtracking to the last `*` (linear in practice).
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class(p, pi, n[ni]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unclosed `[` is a literal, as in Python.
                None => (n[ni] == '[').then_some(pi + 1),
            },
            Some(&c) => (c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after
/// `]`), or None if the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &ch = p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let hi = *p.get(i + 2)?;
            matched |= ch <= c && c <= hi;
            i += 3;
        } else {
            matched |= ch == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_python_fnmatchcase() {
        let cases = [
            ("*.safetensors", "model-00001-of-00002.safetensors", true),
            ("*.safetensors", "sub/dir/x.safetensors", true),
            ("*.json", "x.json.bak", false),
            ("tokenizer*", "tokenizer_config.json", true),
            (
                "model-0000[1-2]-*",
                "model-00002-of-00002.safetensors",
                true,
            ),
            (
                "model-0000[!1]-*",
                "model-00001-of-00002.safetensors",
                false,
            ),
            ("?.txt", "a.txt", true),
            ("?.txt", "ab.txt", false),
            ("[.txt", "[.txt", true),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("Config.json", "config.json", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(fnmatch(p, n), want, "{p} vs {n}");
        }
        assert!(keep("original/x.bin", &["original/".into()], &[]));
        assert!(!keep("original/x.bin", &[], &["original/".into()]));
        assert!(keep("a.json", &[], &[]));
    }
}
