//! Workspace path patterns (`.env*`, `.git/hooks`, `config/*.key`).
//!
//! A pattern is a `/`-separated path relative to the workspace root; each
//! segment may use `*` (any run of characters) and `?` (one character) but never
//! matches across `/` and never matches `.` or `..`. Patterns are expanded
//! against the workspace as it is when the session starts; a path the agent
//! creates later under a hidden name is its own file, not a host secret.

use std::path::{Path, PathBuf};

/// Whether `name` matches one pattern segment.
pub fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative wildcard matching with single-star backtracking: linear in
    // practice, no recursion on hostile names.
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Whether a pattern is well formed (the policy's own rule, so a pattern the
/// policy accepts is never silently ignored here).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    cordon_policy::values::check_workspace_pattern(pattern).map_err(|e| e.to_string())
}

/// Every existing path under `root` that matches `pattern`, without following
/// symlinks while walking (a symlinked directory is matched as a name, not
/// entered).
pub fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    if check_pattern(pattern).is_err() {
        return Vec::new();
    }
    let mut current = vec![root.to_path_buf()];
    let segs: Vec<&str> = pattern.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let mut next = Vec::new();
        for dir in &current {
            if !seg.contains(['*', '?']) {
                let p = dir.join(seg);
                if let Ok(md) = p.symlink_metadata()
                    && (last || md.is_dir())
                {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
                if !segment_matches(seg.as_bytes(), bytes) {
                    continue;
                }
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if last || is_dir {
                    next.push(e.path());
                }
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    current.sort();
    current
}

/// [`expand`] over a workspace's merged view read in-process (store + base),
/// without going through its FUSE mount: relative paths and their `S_IFMT`
/// type. Used for resumed sessions, where the view differs from the project.
pub fn expand_view(
    store: &cordon_fs::store::Store,
    base: &cordon_fs::base::Base,
    pattern: &str,
) -> Vec<(PathBuf, u32)> {
    use cordon_fs::merge;
    use std::os::unix::ffi::OsStrExt;
    if check_pattern(pattern).is_err() {
        return Vec::new();
    }
    let Ok(root) = merge::root(store) else {
        return Vec::new();
    };
    let segs: Vec<&str> = pattern.split('/').collect();
    let mut current: Vec<(PathBuf, merge::Dir)> = vec![(PathBuf::new(), root)];
    let mut found = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let mut next = Vec::new();
        for (rel, dir) in &current {
            let entries: Vec<(Vec<u8>, merge::Source)> = if seg.contains(['*', '?']) {
                merge::list(store, base, dir)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(n, _)| segment_matches(seg.as_bytes(), n))
                    .collect()
            } else {
                match merge::lookup(store, base, dir, seg.as_bytes()) {
                    Ok(Some(src)) => vec![(seg.as_bytes().to_vec(), src)],
                    _ => Vec::new(),
                }
            };
            for (name, src) in entries {
                let mut kind = src.kind();
                let path = rel.join(std::ffi::OsStr::from_bytes(&name));
                if kind == 0
                    && let cordon_fs::merge::Source::Base { rel: brel, .. } = &src
                    && let Ok(Some(st)) = base.stat(brel)
                {
                    kind = st.mode & libc::S_IFMT;
                }
                if last {
                    found.push((path, kind));
                } else if kind == libc::S_IFDIR
                    && let Ok(child) = merge::child_dir(store, dir, &name, &src)
                {
                    next.push((path, child));
                }
            }
        }
        current = next;
        if current.is_empty() && !last {
            break;
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert!(segment_matches(b".env*", b".env"));
        assert!(segment_matches(b".env*", b".env.local"));
        assert!(!segment_matches(b".env*", b"x.env"));
        assert!(segment_matches(b"*.key", b"a.key"));
        assert!(!segment_matches(b"*.key", b"a.keys"));
        assert!(segment_matches(b"a?c", b"abc"));
        assert!(!segment_matches(b"a?c", b"ac"));
        assert!(segment_matches(b"*a*b*", b"xxaybzz"));
        assert!(!segment_matches(b"*a*b*", b"xxbyazz"));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern(".env").is_ok());
        assert!(check_pattern("/etc").is_err());
        assert!(check_pattern("a/../b").is_err());
        assert!(check_pattern("a//b").is_err());
    }

    #[test]
    fn expands_against_a_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(".git/hooks")).unwrap();
        std::fs::write(t.path().join(".env"), "A=1").unwrap();
        std::fs::write(t.path().join(".env.prod"), "A=2").unwrap();
        std::fs::write(t.path().join("env"), "").unwrap();
        let got = expand(t.path(), ".env*");
        assert_eq!(got, vec![t.path().join(".env"), t.path().join(".env.prod")]);
        assert_eq!(
            expand(t.path(), ".git/hooks"),
            vec![t.path().join(".git/hooks")]
        );
        assert!(expand(t.path(), ".git/config").is_empty());
    }
}
