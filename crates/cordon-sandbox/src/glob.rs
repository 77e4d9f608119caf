//! Workspace path patterns (`**/.env`, `.git/hooks`, `config/*.key`).
//!
//! A pattern is a `/`-separated path relative to the workspace root. Within a
//! segment, `*` matches any run of characters and `?` one character, never
//! across `/`. A segment that is exactly `**` matches any number of
//! directories: `**/.env` is `.env` at any depth (the root's included), and a
//! trailing `**` is everything below (`secrets/**`). Matching never follows a
//! symbolic link into a directory and never sees `.` or `..`.
//!
//! Patterns are expanded against the workspace as it is when the session
//! starts, into the concrete paths the backends cover; a path the agent creates
//! later under a protected name is its own file, not a host secret. Expansion
//! stops at a match (covering a directory covers what is below it), and walks
//! only as far as some pattern can still match: literal segments are looked up,
//! not listed, so the whole tree is read only for patterns that need it (`**`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
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

/// One entry of a directory, as a [`Tree`] reports it.
struct Entry<N> {
    name: Vec<u8>,
    /// A directory to descend into (a symbolic link to one is not).
    is_dir: bool,
    node: N,
}

/// A directory tree the patterns are matched against: the host's file system,
/// or a workspace's merged view read in-process.
trait Tree {
    type Dir;
    type Node;
    fn list(&self, dir: &Self::Dir) -> Vec<Entry<Self::Node>>;
    fn lookup(&self, dir: &Self::Dir, name: &[u8]) -> Option<Entry<Self::Node>>;
    fn enter(&self, dir: &Self::Dir, entry: &Entry<Self::Node>) -> Option<Self::Dir>;
}

/// Where a walk stands in one pattern: (pattern, segment about to match).
type State = (usize, usize);

const ANY_DIRS: &[u8] = b"**";

/// `states` plus every state reachable by letting a non-final `**` match no
/// directory at all, without duplicates.
fn closure(pats: &[Vec<&[u8]>], states: Vec<State>) -> Vec<State> {
    let mut out = Vec::with_capacity(states.len());
    for (p, mut i) in states {
        loop {
            if !out.contains(&(p, i)) {
                out.push((p, i));
            }
            if pats[p][i] == ANY_DIRS && i + 1 < pats[p].len() {
                i += 1;
            } else {
                break;
            }
        }
    }
    out
}

/// Every path in `tree` (relative to `root`) that one of `patterns` matches,
/// sorted; ill-formed patterns match nothing.
fn walk<T: Tree>(tree: &T, root: T::Dir, patterns: &[&str]) -> Vec<(PathBuf, T::Node)> {
    let pats: Vec<Vec<&[u8]>> = patterns
        .iter()
        .filter(|p| check_pattern(p).is_ok())
        .map(|p| p.split('/').map(str::as_bytes).collect())
        .collect();
    let mut found = Vec::new();
    // Depth first with an explicit stack: a deep tree costs memory, not the
    // thread's stack.
    let mut stack = vec![(
        PathBuf::new(),
        root,
        (0..pats.len()).map(|p| (p, 0)).collect(),
    )];
    while let Some((rel, dir, states)) = stack.pop() {
        let states = closure(&pats, states);
        let wild = states
            .iter()
            .any(|&(p, i)| pats[p][i].contains(&b'*') || pats[p][i].contains(&b'?'));
        let entries = if wild {
            tree.list(&dir)
        } else {
            let mut names: Vec<&[u8]> = states.iter().map(|&(p, i)| pats[p][i]).collect();
            names.sort_unstable();
            names.dedup();
            names
                .into_iter()
                .filter_map(|n| tree.lookup(&dir, n))
                .collect()
        };
        // Per entry, allocations only for what is kept: a whole-tree walk
        // meets every entry once.
        let mut next = Vec::new();
        for entry in entries {
            let mut matched = false;
            next.clear();
            for &(p, i) in &states {
                let seg = pats[p][i];
                let last = i + 1 == pats[p].len();
                if seg == ANY_DIRS {
                    // A trailing `**` takes everything below; an inner one
                    // takes this directory and stays for the next.
                    if last {
                        matched = true;
                    } else {
                        next.push((p, i));
                    }
                } else if segment_matches(seg, &entry.name) {
                    if last {
                        matched = true;
                    } else {
                        next.push((p, i + 1));
                    }
                }
            }
            if matched {
                found.push((rel.join(OsStr::from_bytes(&entry.name)), entry.node));
            } else if entry.is_dir
                && !next.is_empty()
                && let Some(child) = tree.enter(&dir, &entry)
            {
                stack.push((
                    rel.join(OsStr::from_bytes(&entry.name)),
                    child,
                    next.clone(),
                ));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The host's file system; directories are absolute paths.
struct HostTree;

impl Tree for HostTree {
    type Dir = PathBuf;
    type Node = ();

    fn list(&self, dir: &PathBuf) -> Vec<Entry<()>> {
        use std::os::unix::ffi::OsStringExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| Entry {
                // The type comes with the entry (no stat, no link followed).
                is_dir: e.file_type().is_ok_and(|t| t.is_dir()),
                name: e.file_name().into_vec(),
                node: (),
            })
            .collect()
    }

    fn lookup(&self, dir: &PathBuf, name: &[u8]) -> Option<Entry<()>> {
        let md = dir.join(OsStr::from_bytes(name)).symlink_metadata().ok()?;
        Some(Entry {
            name: name.to_vec(),
            is_dir: md.is_dir(),
            node: (),
        })
    }

    fn enter(&self, dir: &PathBuf, entry: &Entry<()>) -> Option<PathBuf> {
        Some(dir.join(OsStr::from_bytes(&entry.name)))
    }
}

/// Every existing path under `root` that one of `patterns` matches, sorted,
/// without following symlinks while walking (a symlinked directory is matched
/// as a name, not entered).
pub fn expand(root: &Path, patterns: &[&str]) -> Vec<PathBuf> {
    walk(&HostTree, root.to_path_buf(), patterns)
        .into_iter()
        .map(|(rel, ())| root.join(rel))
        .collect()
}

/// A workspace's merged view (store + base), read in-process.
struct ViewTree<'a> {
    store: &'a cordon_fs::store::Store,
    base: &'a cordon_fs::base::Base,
}

impl ViewTree<'_> {
    fn entry(
        &self,
        name: Vec<u8>,
        src: cordon_fs::merge::Source,
    ) -> Entry<(cordon_fs::merge::Source, u32)> {
        let mut kind = src.kind();
        if kind == 0
            && let cordon_fs::merge::Source::Base { rel, .. } = &src
            && let Ok(Some(st)) = self.base.stat(rel)
        {
            kind = st.mode & libc::S_IFMT;
        }
        Entry {
            name,
            is_dir: kind == libc::S_IFDIR,
            node: (src, kind),
        }
    }
}

impl Tree for ViewTree<'_> {
    type Dir = cordon_fs::merge::Dir;
    type Node = (cordon_fs::merge::Source, u32);

    fn list(&self, dir: &Self::Dir) -> Vec<Entry<Self::Node>> {
        cordon_fs::merge::list(self.store, self.base, dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, src)| self.entry(name, src))
            .collect()
    }

    fn lookup(&self, dir: &Self::Dir, name: &[u8]) -> Option<Entry<Self::Node>> {
        match cordon_fs::merge::lookup(self.store, self.base, dir, name) {
            Ok(Some(src)) => Some(self.entry(name.to_vec(), src)),
            _ => None,
        }
    }

    fn enter(&self, dir: &Self::Dir, entry: &Entry<Self::Node>) -> Option<Self::Dir> {
        cordon_fs::merge::child_dir(self.store, dir, &entry.name, &entry.node.0).ok()
    }
}

/// [`expand`] over a workspace's merged view read in-process (store + base),
/// without going through its FUSE mount: relative paths and their `S_IFMT`
/// type. Used for resumed sessions, where the view differs from the project.
pub fn expand_view(
    store: &cordon_fs::store::Store,
    base: &cordon_fs::base::Base,
    patterns: &[&str],
) -> Vec<(PathBuf, u32)> {
    let Ok(root) = cordon_fs::merge::root(store) else {
        return Vec::new();
    };
    walk(&ViewTree { store, base }, root, patterns)
        .into_iter()
        .map(|(rel, (_, kind))| (rel, kind))
        .collect()
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
        let got = expand(t.path(), &[".env*"]);
        assert_eq!(got, vec![t.path().join(".env"), t.path().join(".env.prod")]);
        assert_eq!(
            expand(t.path(), &[".git/hooks"]),
            vec![t.path().join(".git/hooks")]
        );
        assert!(expand(t.path(), &[".git/config"]).is_empty());
    }

    /// A project with secrets at several depths, a symlink to a directory
    /// holding one, and names that only look alike.
    fn nested_project() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let w = |rel: &str| {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "S=1").unwrap();
        };
        for rel in [
            ".env",
            "services/api/.env",
            "services/api/.env.local",
            "services/api/app.py",
            "services/api/.envrc",
            "services/api/x.env",
            "a/b/c/d/e/.env.production",
            ".git/hooks/pre-commit",
            "outside/.env",
        ] {
            w(rel);
        }
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("services/link"))
            .unwrap();
        t
    }

    fn rel(root: &Path, got: Vec<PathBuf>) -> Vec<String> {
        got.iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn double_star_matches_at_any_depth_in_one_walk() {
        let t = nested_project();
        assert_eq!(
            rel(t.path(), expand(t.path(), &["**/.env", "**/.env.*"])),
            [
                ".env",
                "a/b/c/d/e/.env.production",
                "outside/.env",
                "services/api/.env",
                "services/api/.env.local",
            ],
            "a symlinked directory is not entered; .envrc and x.env are other names"
        );
        // Rooted patterns stay rooted.
        assert_eq!(
            rel(t.path(), expand(t.path(), &[".env", ".env.*"])),
            [".env"]
        );
        // `**` in the middle: zero or more directories.
        assert_eq!(
            rel(t.path(), expand(t.path(), &["services/**/.env"])),
            ["services/api/.env"]
        );
        assert_eq!(
            rel(
                t.path(),
                expand(t.path(), &["a/**/e/.env.*", "a/b/**/c/d/e/*"])
            ),
            ["a/b/c/d/e/.env.production"]
        );
        // A trailing `**` is everything below, not the directory itself.
        assert_eq!(
            rel(t.path(), expand(t.path(), &["services/**"])),
            ["services/api", "services/link"]
        );
        assert!(expand(t.path(), &["services/api/app.py/**"]).is_empty());
    }

    #[test]
    fn a_matched_directory_is_not_walked_further() {
        let t = nested_project();
        std::fs::create_dir_all(t.path().join("conf/.env/.env")).unwrap();
        assert!(rel(t.path(), expand(t.path(), &["**/.env"])).contains(&"conf/.env".to_string()));
        assert!(
            !rel(t.path(), expand(t.path(), &["**/.env"])).contains(&"conf/.env/.env".to_string())
        );
    }

    /// An in-memory tree that counts the directories it was asked to list.
    struct FakeTree {
        /// path -> (is_dir)
        entries: Vec<(&'static str, bool)>,
        listed: std::cell::RefCell<Vec<String>>,
    }

    impl Tree for FakeTree {
        type Dir = String;
        type Node = ();

        fn list(&self, dir: &String) -> Vec<Entry<()>> {
            self.listed.borrow_mut().push(dir.clone());
            self.entries
                .iter()
                .filter_map(|(p, is_dir)| {
                    let name = match dir.as_str() {
                        "" => *p,
                        d => p.strip_prefix(d)?.strip_prefix('/')?,
                    };
                    (!name.contains('/')).then(|| Entry {
                        name: name.as_bytes().to_vec(),
                        is_dir: *is_dir,
                        node: (),
                    })
                })
                .collect()
        }

        fn lookup(&self, dir: &String, name: &[u8]) -> Option<Entry<()>> {
            let name = std::str::from_utf8(name).ok()?;
            let full = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            let &(_, is_dir) = self.entries.iter().find(|(p, _)| *p == full)?;
            Some(Entry {
                name: name.as_bytes().to_vec(),
                is_dir,
                node: (),
            })
        }

        fn enter(&self, dir: &String, entry: &Entry<()>) -> Option<String> {
            let name = String::from_utf8(entry.name.clone()).ok()?;
            Some(if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            })
        }
    }

    #[test]
    fn literal_segments_are_looked_up_not_listed() {
        let tree = FakeTree {
            entries: vec![
                (".git", true),
                (".git/hooks", true),
                (".git/objects", true),
                ("src", true),
                ("src/.env", false),
            ],
            listed: Default::default(),
        };
        let found = walk(&tree, String::new(), &[".git/hooks", ".git/config"]);
        assert_eq!(found.len(), 1);
        assert!(tree.listed.borrow().is_empty(), "{:?}", tree.listed);
        // `**` lists every directory it may pass through, once per walk.
        let found = walk(&tree, String::new(), &["**/.env", "**/.env.*"]);
        assert_eq!(
            found.iter().map(|f| &f.0).collect::<Vec<_>>(),
            [Path::new("src/.env")]
        );
        let mut listed = tree.listed.take();
        listed.sort();
        assert_eq!(listed, ["", ".git", ".git/hooks", ".git/objects", "src"]);
    }

    #[test]
    fn ill_formed_patterns_match_nothing() {
        let t = nested_project();
        assert!(expand(t.path(), &["/etc", "../x", "a//b"]).is_empty());
    }
}
