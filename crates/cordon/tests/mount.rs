//! End-to-end behaviour of a mounted workspace, through the real kernel.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::Path;

use common::*;

fn project(base: &Path) {
    write(&base.join("README.md"), b"# demo\n");
    write(
        &base.join("src/main.rs"),
        b"fn main() {\n    println!(\"hi\");\n}\n",
    );
    write(&base.join("src/lib.rs"), b"pub fn f() -> u32 {\n    1\n}\n");
    write(&base.join("docs/guide/intro.md"), b"intro\n");
    write(&base.join("docs/guide/deep/more.md"), b"more\n");
    write(&base.join("bin/tool"), &[0u8, 1, 2, 3, 255]);
    fs::set_permissions(base.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("src/main.rs", base.join("main-link")).unwrap();
}

#[test]
fn read_only_opens_never_copy_up_and_the_base_stays_byte_identical() {
    let Some(env) = fuse_env(project) else { return };
    let before = tree_hash(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    // Everything a reader does: list, stat, read, and open read-write without writing.
    sh(
        &env.mnt,
        "ls -laR . >/dev/null; find . -type f -exec cat {} + >/dev/null; stat -L main-link >/dev/null",
    );
    for f in ["README.md", "src/main.rs", "bin/tool"] {
        let mut h = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(env.mnt.join(f))
            .unwrap();
        let mut s = Vec::new();
        h.read_to_end(&mut s).unwrap();
        assert_eq!(s, fs::read(env.base.join(f)).unwrap());
    }
    drop(m);
    assert_eq!(
        env.count(&id, "SELECT COUNT(*) FROM fs_inode"),
        1,
        "only the root inode"
    );
    assert_eq!(env.count(&id, "SELECT COUNT(*) FROM fs_data"), 0);
    assert_eq!(env.diff_json(&id)["changes"].as_array().unwrap().len(), 0);
    assert_eq!(tree_hash(&env.base), before);
}

#[test]
fn changes_land_in_the_delta_and_the_base_stays_untouched() {
    let Some(env) = fuse_env(project) else { return };
    let before = tree_hash(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    let mnt = &env.mnt;
    sh(
        mnt,
        "echo 'appended' >> README.md
         printf 'new\\n' > src/new.rs
         rm src/lib.rs
         mkdir -p out/a/b && echo x > out/a/b/f
         chmod 600 src/main.rs
         truncate -s 2 bin/tool
         ln -s README.md readme-link
         ln src/main.rs main-hard",
    );
    assert_eq!(
        fs::read(mnt.join("README.md")).unwrap(),
        b"# demo\nappended\n"
    );
    assert!(!mnt.join("src/lib.rs").exists());
    assert_eq!(fs::read(mnt.join("bin/tool")).unwrap(), [0, 1]);
    let main = fs::metadata(mnt.join("src/main.rs")).unwrap();
    assert_eq!(main.mode() & 0o777, 0o600);
    assert_eq!(main.nlink(), 2);
    assert_eq!(
        main.ino(),
        fs::metadata(mnt.join("main-hard")).unwrap().ino()
    );
    drop(m);
    assert_eq!(tree_hash(&env.base), before, "the base changed");

    let d = env.diff_json(&id);
    assert_eq!(
        diff_paths(&d, "added"),
        [
            "main-hard",
            "out",
            "out/a",
            "out/a/b",
            "out/a/b/f",
            "readme-link",
            "src/new.rs"
        ]
    );
    assert_eq!(diff_paths(&d, "deleted"), ["src/lib.rs"]);
    assert_eq!(
        diff_paths(&d, "modified"),
        ["README.md", "bin/tool", "src/main.rs"]
    );
    let main = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "src/main.rs")
        .unwrap();
    assert_eq!(main["mode"], true);
    assert_eq!(main["content"], false, "chmod copies metadata only");
    assert_eq!(
        env.count(&id, "SELECT COUNT(*) FROM cordon_metacopy"),
        1,
        "src/main.rs is a metadata-only copy"
    );
}

#[test]
fn changes_and_inode_numbers_survive_a_remount() {
    let Some(env) = fuse_env(project) else { return };
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        "echo more >> README.md; mkdir newdir; echo n > newdir/n",
    );
    let inos: Vec<u64> = ["README.md", "newdir/n", "src/main.rs", "docs/guide"]
        .iter()
        .map(|p| fs::symlink_metadata(env.mnt.join(p)).unwrap().ino())
        .collect();
    let base_ino = fs::metadata(env.base.join("src/main.rs")).unwrap().ino();
    assert_eq!(
        inos[2], base_ino,
        "unmodified base files keep their host inode number"
    );
    drop(m);
    // Unmounting folds the WAL into the database: one self-contained file.
    let wal = format!("{}-wal", env.db(&id).display());
    assert_eq!(
        fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "WAL left behind"
    );
    let _m = env.mount(&id);
    let again: Vec<u64> = ["README.md", "newdir/n", "src/main.rs", "docs/guide"]
        .iter()
        .map(|p| fs::symlink_metadata(env.mnt.join(p)).unwrap().ino())
        .collect();
    assert_eq!(inos, again);
    assert_eq!(
        fs::read(env.mnt.join("README.md")).unwrap(),
        b"# demo\nmore\n"
    );
    assert_eq!(fs::read(env.mnt.join("newdir/n")).unwrap(), b"n\n");
}

#[test]
fn renamed_base_directories_keep_their_contents() {
    let Some(env) = fuse_env(project) else { return };
    let before = tree_hash(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        "mv docs manual
         test -f manual/guide/intro.md && test -f manual/guide/deep/more.md
         test ! -e docs
         rm manual/guide/intro.md
         echo changed > manual/guide/deep/more.md
         mv manual/guide manual/g2
         mkdir docs && echo fresh > docs/new.md",
    );
    let listing = sh(&env.mnt, "find manual docs | sort");
    assert_eq!(
        listing,
        "docs\ndocs/new.md\nmanual\nmanual/g2\nmanual/g2/deep\nmanual/g2/deep/more.md\n"
    );
    assert_eq!(
        fs::read(env.mnt.join("manual/g2/deep/more.md")).unwrap(),
        b"changed\n"
    );
    drop(m);
    // The same view after a remount.
    let m = env.mount(&id);
    assert_eq!(sh(&env.mnt, "find manual docs | sort"), listing);
    drop(m);
    assert_eq!(tree_hash(&env.base), before);
    let d = env.diff_json(&id);
    assert_eq!(
        diff_paths(&d, "deleted"),
        [
            "docs/guide",
            "docs/guide/deep",
            "docs/guide/deep/more.md",
            "docs/guide/intro.md"
        ]
    );
    assert_eq!(
        diff_paths(&d, "added"),
        [
            "docs/new.md",
            "manual",
            "manual/g2",
            "manual/g2/deep",
            "manual/g2/deep/more.md"
        ]
    );
    // Applying reproduces the agent's tree on the host exactly.
    env.ok(&["apply", &id]);
    assert_eq!(
        sh(&env.base, "find manual docs | sort"),
        "docs\ndocs/new.md\nmanual\nmanual/g2\nmanual/g2/deep\nmanual/g2/deep/more.md\n"
    );
    assert_eq!(
        fs::read(env.base.join("manual/g2/deep/more.md")).unwrap(),
        b"changed\n"
    );
    assert_eq!(env.diff_json(&id)["changes"].as_array().unwrap().len(), 0);
}

#[test]
fn git_works_through_the_mount() {
    let Some(env) = fuse_env(project) else { return };
    // A repository on the host that the agent then works in.
    sh(
        &env.base,
        "git init -q -b main && git add -A && git commit -qm initial
         for i in $(seq 1 200); do echo \"line $i\" > gen_$i.txt; done
         git add -A && git commit -qm generated",
    );
    let before = tree_hash(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    let mnt = &env.mnt;
    assert_eq!(sh(mnt, "git status --porcelain"), "");
    sh(
        mnt,
        "git checkout -q -b feature
         echo 'fn g() {}' >> src/lib.rs
         git commit -qam 'feature: g'
         git checkout -q main
         echo '# more' >> README.md
         git commit -qam 'main: readme'
         git checkout -q feature
         git rebase -q main
         git checkout -q main
         git merge -q --ff-only feature
         git gc -q
         git fsck --full --strict",
    );
    assert_eq!(
        sh(mnt, "git log --format=%s"),
        "feature: g\nmain: readme\ngenerated\ninitial\n"
    );
    assert_eq!(sh(mnt, "git status --porcelain"), "");
    assert!(sh(mnt, "cat src/lib.rs").contains("fn g()"));
    // A fresh repository created entirely inside the workspace.
    sh(
        mnt,
        "mkdir sub && cd sub && git init -q -b main && echo a > a && git add a && git commit -qm a
         git checkout -q -b x && echo b > b && git add b && git commit -qm b && git checkout -q main
         git merge -q x && git log --oneline | wc -l | grep -qx 2",
    );
    drop(m);
    assert_eq!(
        tree_hash(&env.base),
        before,
        "git through the mount changed the host"
    );
}

#[test]
fn untar_and_rm_rf_of_ten_thousand_files() {
    let Some(env) = fuse_env(|_| {}) else { return };
    // A base tree of 10k files too, removed with rm -rf through the mount.
    sh(
        &env.base,
        "mkdir -p tree && cd tree && for d in $(seq 1 100); do mkdir d$d; for f in $(seq 1 100); do echo $d.$f > d$d/f$f; done; done",
    );
    let src = env.dir.path().join("src");
    sh(
        env.dir.path(),
        "mkdir -p src/pkg && cd src/pkg && for d in $(seq 1 50); do mkdir m$d; for f in $(seq 1 200); do echo \"module.exports = $d*$f;\" > m$d/i$f.js; done; done; cd .. && tar cf ../pkg.tar pkg",
    );
    let before = tree_hash(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    let tar = env.dir.path().join("pkg.tar");
    sh(&env.mnt, &format!("tar xf {}", tar.display()));
    assert_eq!(sh(&env.mnt, "find pkg -type f | wc -l").trim(), "10000");
    assert_eq!(
        sh(&env.mnt, "cat pkg/m7/i13.js"),
        fs::read_to_string(src.join("pkg/m7/i13.js")).unwrap()
    );
    sh(&env.mnt, "rm -rf pkg tree");
    assert_eq!(sh(&env.mnt, "ls -A"), "");
    drop(m);
    assert_eq!(tree_hash(&env.base), before);
    // Nothing of the untarred tree is left in the delta.
    assert_eq!(env.count(&id, "SELECT COUNT(*) FROM fs_inode"), 1);
    assert_eq!(env.count(&id, "SELECT COUNT(*) FROM fs_data"), 0);
    let d = env.diff_json(&id);
    assert_eq!(
        d["summary"]["deleted"], 10101,
        "10k files, 100 dirs and tree/"
    );
    env.ok(&["workspace", "check", &id]);
}

#[test]
fn apply_refuses_to_overwrite_host_changes() {
    let Some(env) = fuse_env(project) else { return };
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        "echo agent >> README.md; echo agent >> src/main.rs; echo new > created.txt; rm src/lib.rs",
    );
    drop(m);
    // Meanwhile on the host: README edited, a file appears where the agent made one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(env.base.join("README.md"))
        .unwrap();
    f.write_all(b"host\n").unwrap();
    drop(f);
    fs::write(env.base.join("created.txt"), "host made this\n").unwrap();
    let host_readme = fs::read(env.base.join("README.md")).unwrap();

    let out = env.run(&["apply", &id]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("README.md"), "{err}");
    assert!(err.contains("created.txt"), "{err}");
    assert!(!err.contains("src/main.rs"), "{err}");
    // Nothing was written.
    assert_eq!(fs::read(env.base.join("README.md")).unwrap(), host_readme);
    assert!(env.base.join("src/lib.rs").exists());

    // The non-conflicting changes can go in on their own...
    let out = env.ok(&["apply", &id, "--skip-conflicts", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["conflicts"].as_array().unwrap().len(), 2);
    assert!(
        fs::read_to_string(env.base.join("src/main.rs"))
            .unwrap()
            .ends_with("agent\n")
    );
    assert!(!env.base.join("src/lib.rs").exists());
    assert_eq!(fs::read(env.base.join("README.md")).unwrap(), host_readme);
    // ...and --force overwrites the rest.
    env.ok(&["apply", &id, "--force"]);
    assert_eq!(
        fs::read_to_string(env.base.join("README.md")).unwrap(),
        "# demo\nagent\n"
    );
    assert_eq!(
        fs::read_to_string(env.base.join("created.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(env.diff_json(&id)["changes"].as_array().unwrap().len(), 0);
}

#[test]
fn apply_strips_setuid_and_never_escapes_the_base() {
    let Some(env) = fuse_env(project) else { return };
    let outside = env.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        &format!(
            "cp bin/tool bin/suid && chmod 4755 bin/suid
             ln -s {} escape",
            outside.display()
        ),
    );
    drop(m);
    env.ok(&["apply", &id]);
    let mode = fs::metadata(env.base.join("bin/suid")).unwrap().mode();
    assert_eq!(
        mode & 0o7777,
        0o755,
        "set-user-id bit must not reach the host"
    );
    // The symlink is created as a link; nothing was written through it.
    assert_eq!(fs::read_link(env.base.join("escape")).unwrap(), outside);
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_symlink_to_a_host_secret_shows_the_link_never_the_bytes() {
    let Some(env) = fuse_env(|_| {}) else { return };
    let secret = env.dir.path().join("secret");
    fs::write(&secret, "host secret").unwrap();
    symlink(&secret, env.base.join("link")).unwrap();
    symlink("/etc", env.base.join("etc-link")).unwrap();
    let id = env.create();
    let m = env.mount(&id);
    let st = fs::symlink_metadata(env.mnt.join("link")).unwrap();
    assert!(st.file_type().is_symlink());
    assert_eq!(fs::read_link(env.mnt.join("link")).unwrap(), secret);
    let nofollow = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(env.mnt.join("link"));
    assert_eq!(nofollow.unwrap_err().raw_os_error(), Some(libc::ELOOP));
    // chmod on a link path acts on the target (outside the mount); lchown-style
    // metadata changes keep the link a link.
    sh(&env.mnt, "touch -h link; mv etc-link etc-link2");
    assert!(
        fs::symlink_metadata(env.mnt.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(env.mnt.join("etc-link2")).unwrap(),
        Path::new("/etc")
    );
    drop(m);
    // Export carries the link, not the secret.
    let tar = env.dir.path().join("t.tar");
    env.ok(&[
        "export",
        &id,
        "--format",
        "tar",
        "-o",
        tar.to_str().unwrap(),
    ]);
    let listing = sh(env.dir.path(), "tar tvf t.tar");
    assert!(
        listing.contains(&format!("link -> {}", secret.display())),
        "{listing}"
    );
    let bytes = fs::read(&tar).unwrap();
    assert!(!bytes.windows(11).any(|w| w == b"host secret"));
}

#[test]
fn names_at_name_max_and_non_utf8_names() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let Some(env) = fuse_env(|_| {}) else { return };
    let id = env.create();
    let m = env.mount(&id);
    let long = "n".repeat(255);
    fs::write(env.mnt.join(&long), "max").unwrap();
    assert_eq!(fs::read(env.mnt.join(&long)).unwrap(), b"max");
    let too_long = "n".repeat(256);
    let e = fs::write(env.mnt.join(&too_long), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    let weird = OsStr::from_bytes(b"caf\xe9-\xff\x01");
    fs::write(env.mnt.join(weird), "latin1").unwrap();
    let names: Vec<_> = fs::read_dir(&env.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.iter().any(|n| n.as_bytes() == weird.as_bytes()));
    fs::rename(
        env.mnt.join(weird),
        env.mnt.join(OsStr::from_bytes(b"\xfe")),
    )
    .unwrap();
    drop(m);
    let d = env.diff_json(&id);
    let bytes: Vec<u64> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.get("path_bytes"))
        .flat_map(|b| b.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .collect();
    assert_eq!(bytes, [0xfe]);
    env.ok(&["apply", &id]);
    assert_eq!(
        fs::read(env.base.join(OsStr::from_bytes(b"\xfe"))).unwrap(),
        b"latin1"
    );
    assert_eq!(fs::read(env.base.join(&long)).unwrap(), b"max");
}

#[test]
fn sparse_files_xattrs_append_and_times_behave_like_ext4() {
    let Some(env) = fuse_env(|_| {}) else { return };
    write(&env.base.join("old.txt"), b"old\n");
    let id = env.create();
    let m = env.mount(&id);
    let mnt = &env.mnt;

    // Sparse: a 1 GiB file with 4 bytes stored.
    let mut f = fs::File::create(mnt.join("sparse")).unwrap();
    f.seek(SeekFrom::Start(1 << 30)).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let st = fs::metadata(mnt.join("sparse")).unwrap();
    assert_eq!(st.len(), (1 << 30) + 4);
    assert!(
        st.blocks() < 1024,
        "holes are not stored ({} blocks)",
        st.blocks()
    );
    let f = fs::File::open(mnt.join("sparse")).unwrap();
    let data = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).unwrap();
    assert!(data > 0 && data <= 1 << 30, "SEEK_DATA found {data}");
    let mut head = [1u8; 64];
    f.read_at_exact(&mut head, 4096);
    assert_eq!(head, [0u8; 64]);

    // O_APPEND appends even after a seek.
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("old.txt"))
        .unwrap();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"more\n").unwrap();
    drop(a);
    assert_eq!(fs::read(mnt.join("old.txt")).unwrap(), b"old\nmore\n");

    // Extended attributes on a base file and a new one; copy-up keeps them.
    sh(mnt, "touch x.txt");
    for p in ["x.txt", "old.txt"] {
        let path = mnt.join(p);
        rustix::fs::setxattr(&path, "user.agent", b"v1", rustix::fs::XattrFlags::empty()).unwrap();
        let mut buf = vec![0u8; 16];
        let n = rustix::fs::getxattr(&path, "user.agent", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"v1");
    }
    let e = rustix::fs::setxattr(
        mnt.join("x.txt"),
        "user.agent",
        b"v2",
        rustix::fs::XattrFlags::CREATE,
    )
    .unwrap_err();
    assert_eq!(e, rustix::io::Errno::EXIST);

    // Explicit times, and a metadata-only change keeps the base mtime.
    sh(
        mnt,
        "touch -d '2001-02-03 04:05:06' x.txt; chmod 640 README 2>/dev/null || true",
    );
    assert_eq!(fs::metadata(mnt.join("x.txt")).unwrap().mtime(), 981173106);
    drop(m);
    let m = env.mount(&id);
    sh(mnt, "chmod 600 old.txt");
    drop(m);
    assert_eq!(fs::read(env.base.join("old.txt")).unwrap(), b"old\n");
}

trait ReadAtExact {
    fn read_at_exact(&self, buf: &mut [u8], off: u64);
}

impl ReadAtExact for fs::File {
    fn read_at_exact(&self, buf: &mut [u8], off: u64) {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, off).unwrap();
    }
}

#[test]
fn copy_up_keeps_mtime_and_owner_of_the_base_file() {
    let Some(env) = fuse_env(|_| {}) else { return };
    write(&env.base.join("f"), b"data\n");
    sh(
        &env.base,
        "touch -d '2010-01-01 00:00:00' f && chown 1234:5678 f",
    );
    let id = env.create();
    let m = env.mount(&id);
    sh(&env.mnt, "chmod 640 f");
    let st = fs::metadata(env.mnt.join("f")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1234, 5678));
    assert_eq!(st.mtime(), 1262304000, "chmod must not touch mtime");
    sh(&env.mnt, "echo x >> f");
    assert!(fs::metadata(env.mnt.join("f")).unwrap().mtime() > 1262304000);
    drop(m);
}

#[test]
fn unmodified_base_files_are_read_by_the_kernel_not_by_the_server() {
    let Some(env) = fuse_env(|_| {}) else { return };
    let big = vec![7u8; 32 << 20];
    write(&env.base.join("big.bin"), &big);
    let id = env.create();

    let server_read_bytes = |extra: &[&str]| -> u64 {
        let m = Mount::start(&env, &id, &env.mnt, extra);
        let io = |pid: u32| -> u64 {
            let s = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let before = io(m.pid());
        let data = fs::read(env.mnt.join("big.bin")).unwrap();
        assert_eq!(data.len(), big.len());
        let after = io(m.pid());
        drop(m);
        after - before
    };
    let with_passthrough = server_read_bytes(&[]);
    let without = server_read_bytes(&["--no-passthrough"]);
    assert!(
        without >= 32 << 20,
        "without passthrough the server reads the file ({without} bytes)"
    );
    assert!(
        with_passthrough < 4 << 20,
        "with passthrough the server must not read the file ({with_passthrough} bytes)"
    );
}

#[test]
fn bad_mount_points_and_double_mounts_get_one_line_errors() {
    let Some(env) = fuse_env(project) else { return };
    let id = env.create();
    let err_of = |args: &[&str]| -> String {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8(out.stderr).unwrap();
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        e
    };
    let missing = env.dir.path().join("nope");
    assert!(
        err_of(&["workspace", "mount", &id, missing.to_str().unwrap()]).contains("does not exist")
    );
    let full = env.dir.path().join("full");
    write(&full.join("x"), b"x");
    assert!(err_of(&["workspace", "mount", &id, full.to_str().unwrap()]).contains("not empty"));
    let inside = env.base.join("mnt-inside");
    fs::create_dir(&inside).unwrap();
    assert!(
        err_of(&["workspace", "mount", &id, inside.to_str().unwrap()]).contains("inside the base")
    );
    let m = env.mount(&id);
    let other = env.dir.path().join("other");
    fs::create_dir(&other).unwrap();
    let e = err_of(&["workspace", "mount", &id, other.to_str().unwrap()]);
    assert!(e.contains("is mounted by process"), "{e}");
    assert!(
        err_of(&["workspace", "mount", &id, env.mnt.to_str().unwrap()]).contains("already mounted")
    );
    assert!(err_of(&["discard", &id]).contains("is mounted"));
    assert!(err_of(&["apply", &id]).contains("is mounted"));
    drop(m);
    assert!(err_of(&["diff", "doesnotexist"]).contains("no workspace"));
}

#[test]
fn snapshots_and_forks_capture_the_delta_at_a_point_in_time() {
    let Some(env) = fuse_env(project) else { return };
    let id = env.create();
    let m = env.mount(&id);
    sh(&env.mnt, "echo one > state.txt; rm README.md");
    // A snapshot is taken while the workspace is mounted and in use.
    env.ok(&["snapshot", &id, "first"]);
    sh(&env.mnt, "echo two > state.txt; echo extra > extra.txt");
    drop(m);
    let snaps: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshots", &id, "--json"])).unwrap();
    assert_eq!(snaps[0]["name"], "first");
    let dup = env.run(&["snapshot", &id, "first"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists"));

    let fork = env.ok(&["fork", &format!("{id}@first")]).trim().to_string();
    let fm = Mount::start(&env, &fork, &env.mnt, &[]);
    assert_eq!(
        fs::read_to_string(env.mnt.join("state.txt")).unwrap(),
        "one\n"
    );
    assert!(!env.mnt.join("extra.txt").exists());
    assert!(!env.mnt.join("README.md").exists());
    assert!(env.mnt.join("src/main.rs").exists());
    drop(fm);
    // The original moved on independently.
    let m = env.mount(&id);
    assert_eq!(
        fs::read_to_string(env.mnt.join("state.txt")).unwrap(),
        "two\n"
    );
    drop(m);
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["workspace", "info", &fork, "--json"])).unwrap();
    assert_eq!(info["forked_from"], format!("{id}@first"));
    env.ok(&["discard", &fork]);
    assert_eq!(
        env.run(&["workspace", "info", &fork]).status.code(),
        Some(1)
    );
}

#[test]
fn a_corrupt_or_foreign_database_or_missing_base_is_named_in_one_line() {
    let Some(env) = fuse_env(project) else { return };
    let id = env.create();
    let m = env.mount(&id);
    sh(&env.mnt, "echo keep > keep.txt");
    drop(m);
    let db = env.db(&id);
    let good = fs::read(&db).unwrap();
    let one_line_err = |args: &[&str], needle: &str| {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8(out.stderr).unwrap();
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle), "{e}");
    };
    fs::write(&db, vec![0x5au8; 16384]).unwrap();
    one_line_err(&["diff", &id], "not a SQLite database");
    one_line_err(
        &["workspace", "mount", &id, env.mnt.to_str().unwrap()],
        "not a SQLite database",
    );
    rusqlite::Connection::open(env.dir.path().join("foreign.db"))
        .unwrap()
        .execute_batch("CREATE TABLE notes (t TEXT)")
        .unwrap();
    fs::copy(env.dir.path().join("foreign.db"), &db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    one_line_err(&["diff", &id], "not a Cordon workspace");
    fs::write(&db, &good).unwrap();
    assert!(env.ok(&["diff", &id]).contains("keep.txt"));
    let moved = env.dir.path().join("moved-base");
    fs::rename(&env.base, &moved).unwrap();
    one_line_err(&["diff", &id], "does not exist");
    one_line_err(
        &["workspace", "mount", &id, env.mnt.to_str().unwrap()],
        "does not exist",
    );
    fs::rename(&moved, &env.base).unwrap();
    assert!(
        env.ok(&["diff", &id]).contains("keep.txt"),
        "nothing stored was lost"
    );
}

#[test]
fn a_full_disk_fails_the_write_and_loses_nothing_stored() {
    let Some(env) = fuse_env(|_| {}) else { return };
    // The data directory on a 24 MiB tmpfs.
    let small = env.dir.path().join("small");
    fs::create_dir(&small).unwrap();
    sh(
        env.dir.path(),
        &format!("mount -t tmpfs -o size=24m tmpfs {}", small.display()),
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(small.clone());
    let id = env
        .cmd()
        .env("CORDON_HOME", &small)
        .args(["workspace", "create", "--base", env.base.to_str().unwrap()])
        .output()
        .unwrap();
    let id = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let mut cmd = env.cmd();
    cmd.env("CORDON_HOME", &small)
        .args(["workspace", "mount", &id, env.mnt.to_str().unwrap()])
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let m = Mount {
        child: Some(child),
        path: env.mnt.clone(),
    };
    while !is_mounted(&env.mnt) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fs::write(env.mnt.join("precious.txt"), "keep me\n").unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let mut f = fs::File::create(env.mnt.join("filler")).unwrap();
    let mut written = 0;
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 64, "the 24 MiB disk never filled");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert_eq!(
        fs::read(env.mnt.join("precious.txt")).unwrap(),
        b"keep me\n"
    );
    fs::remove_file(env.mnt.join("filler")).unwrap();
    fs::write(env.mnt.join("after.txt"), "room again\n").unwrap();
    drop(m);
    let check = env
        .cmd()
        .env("CORDON_HOME", &small)
        .args(["workspace", "check", &id])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let diff = env
        .cmd()
        .env("CORDON_HOME", &small)
        .args(["diff", &id, "--stat"])
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&diff.stdout);
    assert!(
        stat.contains("precious.txt") && stat.contains("after.txt"),
        "{stat}"
    );
}

#[test]
fn apply_guards_git_hooks_hard_links_and_exports_without_set_id_bits() {
    let Some(env) = fuse_env(project) else { return };
    sh(&env.base, "git init -q -b main");
    // A file hard-linked from outside the base (as a pnpm store does).
    let store = env.dir.path().join("store-file");
    fs::write(&store, "shared\n").unwrap();
    fs::hard_link(&store, env.base.join("linked.js")).unwrap();
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        "printf '#!/bin/sh\\ncurl evil\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit
         git config core.fsmonitor 'sh -c evil'
         chmod 700 linked.js
         cp bin/tool bin/suid && chmod 4755 bin/suid",
    );
    drop(m);
    // Refused by default, and nothing is written.
    let out = env.run(&["apply", &id]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".git/hooks/pre-commit") && err.contains(".git/config"),
        "{err}"
    );
    assert!(err.contains("--allow-git-config"), "{err}");
    assert!(!env.base.join(".git/hooks/pre-commit").exists());
    assert!(!env.base.join("bin/suid").exists());
    // The rest can go in without them.
    env.ok(&["apply", &id, "--skip-conflicts"]);
    assert!(!env.base.join(".git/hooks/pre-commit").exists());
    assert!(
        !fs::read_to_string(env.base.join(".git/config"))
            .unwrap()
            .contains("evil")
    );
    assert_eq!(
        fs::metadata(env.base.join("linked.js")).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(&store).unwrap().mode() & 0o777,
        0o644,
        "the mode change must not reach files linked from outside the base"
    );
    assert_eq!(fs::read(env.base.join("linked.js")).unwrap(), b"shared\n");
    // With explicit consent, they do.
    env.ok(&["apply", &id, "--allow-git-config"]);
    assert!(env.base.join(".git/hooks/pre-commit").exists());
    // A tar export never carries set-id bits or the agent's owners.
    let tar = env.dir.path().join("t.tar");
    env.ok(&[
        "export",
        &id,
        "--format",
        "tar",
        "-o",
        tar.to_str().unwrap(),
    ]);
    let listing = sh(
        env.dir.path(),
        "tar tvf t.tar --numeric-owner | grep 'bin/suid'",
    );
    assert!(listing.starts_with("-rwxr-xr-x 0/0"), "{listing}");
}

#[test]
fn hostile_names_cannot_drive_the_reviewers_terminal_and_usage_errors_exit_2() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let Some(env) = fuse_env(|_| {}) else { return };
    project(&env.base);
    let id = env.create();
    let m = env.mount(&id);
    let evil = OsStr::from_bytes(b"innocent\x1b[2A\x1b[J\nREADME.md");
    fs::write(env.mnt.join(evil), "x").unwrap();
    drop(m);
    for args in [
        vec!["diff", id.as_str(), "--stat"],
        vec!["apply", id.as_str(), "--dry-run"],
        vec!["diff", id.as_str()],
    ] {
        let out = env.run(&args);
        assert!(out.status.success());
        for stream in [&out.stdout, &out.stderr] {
            assert!(!stream.contains(&0x1b), "{args:?} printed an escape");
        }
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().all(|l| !l.starts_with("README.md")),
            "{args:?} let a name break a line: {text}"
        );
    }
    let usage = env.run(&["diff", &id, "/etc"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = env.run(&["workspace", "mount", &id, "/tmp", "--ttl", "-1"]);
    assert_eq!(usage.status.code(), Some(2));
    let prefix = env.run(&["discard", &id[..6]]);
    assert_eq!(prefix.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&prefix.stderr).contains("full id"));
    assert!(env.db(&id).exists(), "a prefix must not discard");
}

#[test]
fn cached_directory_listings_follow_changes_from_both_sides() {
    let Some(env) = fuse_env(|b| write(&b.join("d/a"), b"a")) else {
        return;
    };
    let id = env.create();
    let m = env.mount(&id);
    let list = || sh(&env.mnt, "ls -A d | tr '\\n' ' '");
    assert_eq!(list(), "a ");
    assert_eq!(
        list(),
        "a ",
        "a second listing (served from the kernel's cache)"
    );
    // The agent's own changes show at once.
    sh(&env.mnt, "touch d/agent; rm d/a");
    assert_eq!(list(), "agent ");
    // A change on the host shows once the kernel's cache expires (1 s TTL).
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&env.base.join("d/host"), b"h");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(list(), "agent host ");
    drop(m);
}

#[test]
fn a_directory_read_while_it_changes_returns_every_lasting_entry_once() {
    // Directories are read without opendir handles: a reader that continues
    // after entries came and went must resume where it was (offset cookies),
    // never skipping or repeating an entry that was there all along.
    let Some(env) = fuse_env(|b| {
        for i in 0..3000 {
            write(&b.join(format!("big/base-{i:04}")), b"");
        }
        // Other directories read at the same time: more than the server keeps
        // listings for, so the reader of big/ also resumes from a new listing.
        for d in 0..70 {
            for i in 0..200 {
                write(&b.join(format!("other/o{d:02}/f{i:03}")), b"");
            }
        }
    }) else {
        return;
    };
    let id = env.create();
    let m = env.mount(&id);
    let out = sh(
        &env.mnt,
        r#"python3 - <<'PY'
import os, collections
d = "big"
for i in range(2000):  # the directory is now in the delta and in the base
    open(f"{d}/delta-{i:04}", "w").close()
start = set(os.listdir(d))
victims = sorted(n for n in start if hash(n) % 5 == 0)
# A change after that listing, so the kernel does not serve the read below
# from the listing it just cached but asks the server as the read goes on.
open(f"{d}/marker", "w").close()
os.unlink(f"{d}/marker")
seen, late = [], 0
with os.scandir(d) as it:
    for n, e in enumerate(it):
        seen.append(e.name)
        if n % 200 == 199:  # between the reader's getdents calls, now and then
            for v in victims[:40]:
                os.unlink(f"{d}/{v}")
            del victims[:40]
            for _ in range(20):
                open(f"{d}/late-{late:04}", "w").close()
                late += 1
            others = [os.scandir(f"other/{o}") for o in sorted(os.listdir("other"))]
            for o in others:
                next(o)
            for o in others:
                o.close()
removed = start - set(os.listdir(d))
counts = collections.Counter(seen)
lasting = start - removed
missing = sorted(lasting - set(seen))
twice = sorted(k for k, c in counts.items() if c > 1)
print(len(start), len(removed) > 0, late > 0, len(missing), len(twice), missing[:3], twice[:3])
PY"#,
    );
    assert_eq!(out.trim(), "5000 True True 0 0 [] []", "{out}");
    assert_eq!(
        sh(&env.mnt, "ls -A big | wc -l").trim(),
        sh(&env.mnt, "find big -mindepth 1 | wc -l").trim()
    );
    drop(m);
}

#[test]
fn an_idle_workspace_empties_a_large_wal_itself() {
    // Left to the next writer, cutting a large WAL down costs that write
    // (the agent's next open) a long truncate while the overlay waits.
    let Some(env) = fuse_env(|_| {}) else { return };
    let id = env.create();
    let m = env.mount(&id);
    sh(
        &env.mnt,
        "dd if=/dev/zero of=big bs=1M count=96 conv=fsync status=none",
    );
    let wal = env
        .home
        .join("workspaces")
        .join(&id)
        .join("workspace.db-wal");
    let size = || fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        size() > 64 << 20,
        "the write went through the WAL: {}",
        size()
    );
    let t0 = std::time::Instant::now();
    while size() > 0 && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        size(),
        0,
        "the WAL was emptied while the workspace sat idle"
    );
    // Still mounted and working: the next write starts a new WAL.
    sh(&env.mnt, "echo more >> big2 && sync");
    assert_eq!(fs::metadata(env.mnt.join("big")).unwrap().len(), 96 << 20);
    assert_eq!(sh(&env.mnt, "cat big2"), "more\n");
    drop(m);
}

#[test]
fn a_base_file_held_open_for_reading_can_still_be_rewritten() {
    // With FUSE passthrough the kernel ties an inode to its backing file, and
    // on Linux 6.9+ refuses a non-passthrough open of that inode with EIO.
    let Some(env) = fuse_env(|b| {
        write(&b.join("log.txt"), b"old\n");
        write(&b.join("cut.txt"), b"cut me\n");
        write(&b.join("tail.txt"), b"line 1\n");
    }) else {
        return;
    };
    let id = env.create();
    let m = env.mount(&id);
    let read_all = |f: &mut fs::File| {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };

    // A reader keeps the file open while another open rewrites it.
    let mut reader = fs::File::open(env.mnt.join("log.txt")).unwrap();
    assert_eq!(read_all(&mut reader), "old\n");
    let mut w = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(env.mnt.join("log.txt"))
        .expect("a write open next to a passthrough reader");
    w.write_all(b"new\n").unwrap();
    drop(w);
    assert_eq!(
        fs::read_to_string(env.mnt.join("log.txt")).unwrap(),
        "new\n"
    );
    // The earlier reader keeps a working descriptor on the old bytes.
    assert!(reader.metadata().is_ok());
    assert_eq!(read_all(&mut reader), "old\n");
    // The same through a shell's `>` (O_CREAT|O_TRUNC).
    sh(&env.mnt, "echo newer > log.txt");
    assert_eq!(
        fs::read_to_string(env.mnt.join("log.txt")).unwrap(),
        "newer\n"
    );

    // Truncated by path (no open), then opened again while a reader holds it.
    let reader2 = fs::File::open(env.mnt.join("cut.txt")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(env.mnt.join("cut.txt"))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs::read_to_string(env.mnt.join("cut.txt")).unwrap(), "cut");
    drop(reader2);

    // Appending while a follower has it open, as `tail -f` would.
    let follower = fs::File::open(env.mnt.join("tail.txt")).unwrap();
    sh(
        &env.mnt,
        "echo 'line 2' >> tail.txt && cat tail.txt >/dev/null",
    );
    let mut again = fs::File::open(env.mnt.join("tail.txt")).unwrap();
    assert_eq!(read_all(&mut again), "line 1\nline 2\n");
    drop((again, follower, reader));
    drop(m);

    let changed = diff_paths(&env.diff_json(&id), "modified");
    for f in ["log.txt", "cut.txt", "tail.txt"] {
        assert!(changed.iter().any(|p| p == f), "{f} in {changed:?}");
    }
    assert_eq!(fs::read(env.base.join("log.txt")).unwrap(), b"old\n");
}

#[test]
fn large_writes_land_in_order_and_still_drop_file_capabilities() {
    let Some(env) = fuse_env(|_| {}) else { return };
    let id = env.create();
    let m = env.mount(&id);
    let path = env.mnt.join("big.bin");

    // 1 MiB writes are acknowledged before they are stored (the data
    // directory has room): overlapping rewrites must still land in order.
    let mut model = vec![0u8; 6 << 20];
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for (i, off) in [0usize, 1 << 20, 512 << 10, 3 << 20, 2560 << 10, 5 << 20, 0]
        .into_iter()
        .enumerate()
    {
        let chunk: Vec<u8> = (0..1usize << 20)
            .map(|j| (i * 31 + j % 251) as u8)
            .collect();
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        f.write_all(&chunk).unwrap();
        model[off..off + chunk.len()].copy_from_slice(&chunk);
        // Read back at once, through another descriptor.
        let mut back = vec![0u8; chunk.len()];
        fs::File::open(&path)
            .unwrap()
            .read_at_exact(&mut back, off as u64);
        assert!(back == chunk, "write {i} at {off} reads back");
    }
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(&path).unwrap() == model, "the whole file");

    // A write removes the file's capabilities (the kernel asks before each
    // write), also right after a write that found none.
    // vfs_cap_data revision 2: effective, permitted = CAP_NET_RAW (13).
    let mut caps = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    rustix::fs::setxattr(
        &path,
        "security.capability",
        &caps,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        rustix::fs::getxattr(&path, "security.capability", &mut buf).unwrap(),
        caps.len()
    );
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(&[7u8; 1 << 20]).unwrap();
    drop(f);
    assert_eq!(
        rustix::fs::getxattr(&path, "security.capability", &mut buf).unwrap_err(),
        rustix::io::Errno::NODATA,
        "the write dropped the capabilities"
    );
    drop(m);
    let m = env.mount(&id);
    assert_eq!(
        rustix::fs::getxattr(&path, "security.capability", &mut buf).unwrap_err(),
        rustix::io::Errno::NODATA,
        "and the delta agrees"
    );
    drop(m);
}

#[test]
fn write_only_opens_skip_the_page_cache_yet_readers_see_every_byte_and_set_id_bits_drop() {
    use std::os::unix::fs::FileExt;
    let Some(env) = fuse_env(|_| {}) else { return };
    let id = env.create();
    let m = env.mount(&id);
    let path = env.mnt.join("f.bin");

    // A reader holds a file of the delta open (a base file's readers keep
    // the base's bytes, as in overlayfs), its pages cached and mapped; a
    // write-only descriptor (served past the page cache) then rewrites
    // part of it. Every reader sees the new bytes at once.
    fs::write(&path, vec![b'a'; 64 << 10]).unwrap();
    let reader = fs::File::open(&path).unwrap();
    let mut before = vec![0u8; 64 << 10];
    reader.read_exact_at(&mut before, 0).unwrap();
    assert!(before.iter().all(|&b| b == b'a'));
    // SAFETY: a read-only shared mapping of a file this test owns; nothing
    // truncates it while mapped.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            64 << 10,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&reader),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY: the mapping is 64 KiB long and lives until the munmap below.
    let mapped = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), 64 << 10) };
    assert_eq!(mapped[5000], b'a');
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(&[b'b'; 3000], 4096).unwrap();
    writer.write_all_at(b"tail", 64 << 10).unwrap();
    let mut now = vec![0u8; 8192];
    reader.read_exact_at(&mut now, 2048).unwrap();
    assert!(now[..2048].iter().all(|&b| b == b'a'));
    assert!(
        now[2048..5048].iter().all(|&b| b == b'b'),
        "the open reader"
    );
    assert!(now[5048..].iter().all(|&b| b == b'a'));
    assert_eq!(mapped[5000], b'b', "the mapping");
    assert_eq!(mapped[4095], b'a');
    let fresh = fs::read(&path).unwrap();
    assert_eq!(fresh.len(), (64 << 10) + 4, "a new open");
    assert_eq!(&fresh[4096..7096], &[b'b'; 3000][..]);
    assert_eq!(&fresh[64 << 10..], b"tail");
    // SAFETY: unmapping the mapping made above; `mapped` is not used after.
    assert_eq!(unsafe { libc::munmap(map, 64 << 10) }, 0);
    drop((reader, writer));

    // A write by a user without CAP_FSETID drops set-user-ID, and
    // set-group-ID with group execute, as ext4 does; root's write keeps
    // them. The mode is asked for alone (as `stat -c %a` does), so an
    // attribute the kernel cached before the write would show.
    let mode = |p: &Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            p,
            rustix::fs::AtFlags::empty(),
            rustix::fs::StatxFlags::MODE,
        )
        .unwrap()
        .stx_mode
            & 0o7777
    };
    let s = env.mnt.join("s");
    for (before, (user, group), after) in [
        (0o4777, ("tests", "tests"), 0o777),
        (0o6777, ("tests", "tests"), 0o777),
        (0o2777, ("nobody", "nogroup"), 0o777),
        (0o2767, ("tests", "tests"), 0o2767),
        (0o6777, ("root", "root"), 0o6777),
    ] {
        fs::write(&s, b"x").unwrap();
        fs::set_permissions(&s, fs::Permissions::from_mode(before)).unwrap();
        assert_eq!(u32::from(mode(&s)), before);
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", user, "--regid", group, "--clear-groups", "--"])
            .args(["sh", "-c", "printf y >> \"$1\"", "sh"])
            .arg(&s)
            .output()
            .unwrap();
        assert!(out.status.success(), "{user}: {out:?}");
        assert_eq!(u32::from(mode(&s)), after, "{before:o} written by {user}");
        assert_eq!(fs::read(&s).unwrap(), b"xy");
        fs::remove_file(&s).unwrap();
    }
    drop(m);
}
