# Attacks run inside `cordon run` by the escape suite (tests/escape/main.rs).
# Each attack prints "ESCAPED: ..." when it got through and "BLOCKED: ..." when
# the sandbox stopped it; the Rust side asserts on those words, on the host's
# state, and on the session's event log.
import ctypes, errno, fcntl, os, socket, struct, sys, time

# The backend the attack runs on (`cordon run` sets it): on gVisor the agent's /dev
# is the sentry's own device file system, and its /proc shows neither NoNewPrivs nor
# mount flags, so a few checks look at what matters there instead.
SANDBOX = os.environ.get("CORDON_SANDBOX", "native")


def openable(path):
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

NR = dict(ptrace=101, mount=165, umount2=166, pivot_root=155, chroot=161,
          unshare=272, setns=308, init_module=175, finit_module=313,
          delete_module=176, keyctl=250, add_key=248, bpf=321,
          io_uring_setup=425, open_by_handle_at=304, perf_event_open=298,
          kexec_load=246, userfaultfd=323, process_vm_readv=310, mknodat=259,
          clone=56, modify_ldt=154, personality=135, open_tree_attr=467)


def sys_call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno()


def expect_fail(what, r, err):
    if r < 0:
        print(f"BLOCKED: {what}: {errno.errorcode.get(err, err)}")
    else:
        print(f"ESCAPED: {what} returned {r}")


def try_read(path):
    try:
        with open(path, "rb") as f:
            data = f.read(64)
        print(f"ESCAPED: read {path}: {data[:20]!r}")
    except OSError as e:
        print(f"BLOCKED: read {path}: {e.strerror}")


def try_write(path, data=b"pwned\n"):
    try:
        with open(path, "ab") as f:
            f.write(data)
        print(f"ESCAPED: wrote {path}")
    except OSError as e:
        print(f"BLOCKED: write {path}: {e.strerror}")


def attack(name, args):
    if name == "read_shadow":
        try_read("/etc/shadow")
    elif name == "read_other_home":
        try_read(args[0])
    elif name == "read_host_home_secrets":
        home = os.environ["HOME"]
        for rel in [".ssh/id_rsa", ".aws/credentials", ".config/gh/hosts.yml"]:
            try_read(os.path.join(home, rel))
    elif name == "write_outside":
        for p in ["/etc/cordon-pwned", "/usr/bin/cordon-pwned", "/cordon-pwned", "/var/cordon-pwned", "/opt/cordon-pwned"]:
            try_write(p)
    elif name == "write_host_path_of_workspace_parent":
        try_write(args[0])
    elif name == "unmount_workspace":
        r, e = sys_call("umount2", ctypes.c_char_p(os.getcwd().encode()), 2)
        expect_fail("umount2 workspace", r, e)
    elif name == "see_host_processes":
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        host_pid = int(args[0])
        if host_pid in pids and os.path.exists(f"/proc/{host_pid}/cmdline") and b"escape" in open(f"/proc/{host_pid}/cmdline", "rb").read():
            print(f"ESCAPED: sees host pid {host_pid}")
        else:
            print(f"BLOCKED: sandbox sees pids {sorted(pids)[:10]}")
    elif name == "signal_host_process":
        try:
            os.kill(int(args[0]), 0)
            print("ESCAPED: can signal the host test process")
        except OSError as e:
            print(f"BLOCKED: kill: {e.strerror}")
    elif name == "ptrace":
        r, e = sys_call("ptrace", 16, 1, 0, 0)  # PTRACE_ATTACH to init
        expect_fail("ptrace attach", r, e)
    elif name == "mount":
        os.makedirs("/tmp/m", exist_ok=True)
        r, e = sys_call("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp/m"), ctypes.c_char_p(b"tmpfs"), 0, 0)
        expect_fail("mount tmpfs", r, e)
    elif name == "nested_userns":
        r, e = sys_call("unshare", 0x10000000)  # CLONE_NEWUSER
        expect_fail("unshare(CLONE_NEWUSER)", r, e)
    elif name == "clone_newuser":
        r, e = sys_call("clone", 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER|SIGCHLD
        if r == 0:
            os._exit(0)
        expect_fail("clone(CLONE_NEWUSER)", r, e)
    elif name == "setns":
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        r, e = sys_call("setns", fd, 0)
        expect_fail("setns", r, e)
    elif name == "module_load":
        r, e = sys_call("init_module", ctypes.c_char_p(b"\0" * 64), 64, ctypes.c_char_p(b""))
        expect_fail("init_module", r, e)
        fd = os.open("/etc/hostname", os.O_RDONLY)
        r, e = sys_call("finit_module", fd, ctypes.c_char_p(b""), 0)
        expect_fail("finit_module", r, e)
    elif name == "raw_socket":
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            print("ESCAPED: raw socket")
        except OSError as e:
            print(f"BLOCKED: raw socket: {e.strerror}")
    elif name == "packet_socket":
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            print("ESCAPED: packet socket")
        except OSError as e:
            print(f"BLOCKED: packet socket: {e.strerror}")
    elif name == "host_loopback_tcp":
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", int(args[0])))
            print("ESCAPED: connected to the host's loopback service")
        except OSError as e:
            print(f"BLOCKED: connect 127.0.0.1:{args[0]}: {e.strerror or e}")
    elif name == "internet":
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("1.1.1.1", 443))
            print("ESCAPED: reached the internet")
        except OSError as e:
            print(f"BLOCKED: connect 1.1.1.1:443: {e.strerror or e}")
    elif name == "host_abstract_socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect("\0" + args[0])
            print("ESCAPED: connected to the host's abstract socket")
        except OSError as e:
            print(f"BLOCKED: abstract socket: {e.strerror}")
    elif name == "proc_sys_write":
        try_write("/proc/sys/kernel/core_pattern", b"|/tmp/pwn\n")
        try_write("/proc/sys/vm/drop_caches", b"3\n")
    elif name == "sysrq":
        try_write("/proc/sysrq-trigger", b"h")
    elif name == "cgroup_release_agent":
        found = False
        for root, dirs, files in os.walk("/sys/fs/cgroup"):
            if "release_agent" in files:
                found = True
                try_write(os.path.join(root, "release_agent"), b"/tmp/pwn\n")
        if not found:
            # None visible: try where cgroup v1 would put one.
            try_write("/sys/fs/cgroup/release_agent", b"/tmp/pwn\n")
        os.makedirs("/tmp/cg", exist_ok=True)
        r, e = sys_call("mount", ctypes.c_char_p(b"cgroup"), ctypes.c_char_p(b"/tmp/cg"), ctypes.c_char_p(b"cgroup"), 0, ctypes.c_char_p(b"memory"))
        expect_fail("mount cgroup", r, e)
    elif name == "keyctl":
        r, e = sys_call("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID session keyring
        expect_fail("keyctl", r, e)
        r, e = sys_call("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"x"), ctypes.c_char_p(b"y"), 1, -3)
        expect_fail("add_key", r, e)
    elif name == "bpf":
        r, e = sys_call("bpf", 0, 0, 0)
        expect_fail("bpf", r, e)
    elif name == "io_uring":
        params = ctypes.create_string_buffer(120)
        r, e = sys_call("io_uring_setup", 8, params)
        expect_fail("io_uring_setup", r, e)
    elif name == "mknod":
        r, e = sys_call("mknodat", -100, ctypes.c_char_p(b"/tmp/sda"), 0o060600, os.makedev(8, 0))
        expect_fail("mknod block device", r, e)
        r, e = sys_call("mknodat", -100, ctypes.c_char_p(b"/tmp/mem"), 0o020600, os.makedev(1, 1))
        expect_fail("mknod char device", r, e)
    elif name == "setuid_binary":
        status = open("/proc/self/status").read()
        cap = [l for l in status.splitlines() if l.startswith(("CapEff", "CapPrm", "NoNewPrivs"))]
        mounts = open("/proc/self/mountinfo").read()
        usr = [l for l in mounts.splitlines() if l.split()[4] == "/usr"]
        su = "/usr/bin/su" if os.path.exists("/usr/bin/su") else "/bin/su"
        pid = os.fork()
        if pid == 0:
            try:
                os.execv(su, [su, "-c", "cat /proc/self/status"])
            except OSError:
                os._exit(99)
        _, st = os.waitpid(pid, 0)
        if SANDBOX == "gvisor":
            # gVisor's /proc has no NoNewPrivs line and no mount flags: what must
            # hold is no capability and a setuid-root su that fails.
            ok = "CapEff:\t0000000000000000" in status and os.WEXITSTATUS(st) != 0
        else:
            ok = ("CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
                  and usr and "nosuid" in usr[0])
        print(("BLOCKED" if ok else "ESCAPED") + f": {cap} usr={'nosuid' in (usr[0] if usr else '')} su_status={st}")
    elif name == "tiocsti":
        for fd in (0, 1, 2):
            try:
                fcntl.ioctl(fd, 0x5412, b"x")
                print(f"ESCAPED: TIOCSTI on fd {fd}")
                return
            except OSError as e:
                err = e.strerror
        print(f"BLOCKED: TIOCSTI: {err}")
        try:
            fcntl.ioctl(0, 0x541C, bytes([12]))
            print("ESCAPED: TIOCLINUX")
        except OSError as e:
            print(f"BLOCKED: TIOCLINUX: {e.strerror}")
    elif name == "open_by_handle_at":
        r, e = sys_call("open_by_handle_at", -100, ctypes.create_string_buffer(16), 0)
        expect_fail("open_by_handle_at", r, e)
    elif name == "perf_event_open":
        r, e = sys_call("perf_event_open", ctypes.create_string_buffer(128), 0, -1, -1, 0)
        expect_fail("perf_event_open", r, e)
    elif name == "kexec":
        r, e = sys_call("kexec_load", 0, 0, 0, 0)
        expect_fail("kexec_load", r, e)
    elif name == "userfaultfd":
        r, e = sys_call("userfaultfd", 0)
        expect_fail("userfaultfd", r, e)
    elif name == "process_vm_readv":
        r, e = sys_call("process_vm_readv", 1, 0, 0, 0, 0, 0)
        expect_fail("process_vm_readv", r, e)
    elif name == "chroot":
        r, e = sys_call("chroot", ctypes.c_char_p(b"/tmp"))
        expect_fail("chroot", r, e)
    elif name == "pivot_root":
        r, e = sys_call("pivot_root", ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"/tmp"))
        expect_fail("pivot_root", r, e)
    elif name == "kcore":
        try_read("/proc/kcore")
    elif name == "dev_disk":
        devs = sorted(os.listdir("/dev"))
        bad = [d for d in devs if d.startswith(("sd", "vd", "nvme", "mem", "kmem", "port", "kvm", "fuse", "loop"))
               and openable("/dev/" + d)]
        print(("ESCAPED" if bad else "BLOCKED") + f": /dev has {devs}")
    elif name == "host_env":
        leaked = [k for k in os.environ if k.startswith("CORDON_CANARY")]
        print(("ESCAPED" if leaked else "BLOCKED") + f": environment {sorted(os.environ)}")
    elif name == "hidden_env_file":
        for path in args or [".env"]:
            try:
                data = open(path, "rb").read()
                print(("ESCAPED" if data else "BLOCKED") + f": {path} holds {len(data)} bytes")
            except OSError as e:
                print(f"BLOCKED: {path}: {e.strerror}")
            try_write(path, b"API_KEY=from-the-agent\n")
    elif name == "git_hooks":
        try_write(".git/hooks/pre-commit", b"#!/bin/sh\ncurl evil\n")
        try_write(".git/config", b"[core]\nfsmonitor = evil\n")
    elif name == "rename_race_hooks":
        # Move the protected directory's parent aside and plant a new hook where
        # the old one was; the host must still never receive it.
        try:
            os.rename(".git", ".git-moved")
            os.makedirs(".git/hooks", exist_ok=True)
            with open(".git/hooks/pre-commit", "w") as f:
                f.write("#!/bin/sh\necho pwned\n")
            print("RENAMED: planted .git/hooks/pre-commit in the workspace")
        except OSError as e:
            print(f"BLOCKED: rename .git: {e.strerror}")
    elif name == "symlink_out":
        os.symlink("/etc/shadow", "shadow-link")
        try_read("shadow-link")
        os.symlink(args[0], "host-link")
        try_write("host-link")
    elif name == "fork_bomb":
        n = 0
        try:
            for _ in range(100000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
            print(f"ESCAPED: forked {n} processes")
        except OSError as e:
            print(f"BLOCKED: fork failed after {n}: {e.strerror}")
        sys.stdout.flush()
        os._exit(0)
    elif name == "memory_bomb":
        chunks = []
        for i in range(64):
            chunks.append(bytearray(64 << 20))
            for j in range(0, len(chunks[-1]), 4096):
                chunks[-1][j] = 1
        print("ESCAPED: allocated 4 GiB")
    elif name == "disk_fill":
        try:
            with open("fill.bin", "wb") as f:
                for _ in range(100):
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            print("ESCAPED: wrote 100 MiB")
        except OSError as e:
            print(f"BLOCKED: disk fill: {e.strerror}")
    elif name == "cpu_spin":
        sys.stdout.write("spinning\n")
        sys.stdout.flush()
        while True:
            pass
    elif name == "output_flood":
        line = b"x" * 1023 + b"\n"
        out = sys.stdout.buffer
        for _ in range(100000):
            out.write(line)
        out.flush()
        print("ESCAPED: flooded 100 MiB")
    elif name == "inherited_fds":
        hits = []
        for fd in range(3, 256):
            try:
                os.write(fd, b"written from inside\n")
                hits.append(fd)
            except OSError:
                pass
        print(("ESCAPED" if hits else "BLOCKED") + f": writable inherited descriptors {hits}")
    elif name == "vsock":
        try:
            socket.socket(40, socket.SOCK_STREAM)  # AF_VSOCK
            print("ESCAPED: vsock socket")
        except OSError as e:
            print(f"BLOCKED: vsock: {e.strerror}")
    elif name == "dev_chmod":
        for d in ("/dev/null", "/dev/full"):
            try:
                os.chmod(d, 0o600)
                sentry_dev = SANDBOX == "gvisor" and any(
                    l.split()[4] == "/dev" and " - tmpfs none " in l
                    for l in open("/proc/self/mountinfo"))
                if sentry_dev:
                    # The node is gVisor's own, in its private /dev; the host's is
                    # checked unchanged by the test.
                    print(f"BLOCKED: chmod {d} reached only gVisor's device node")
                else:
                    print(f"ESCAPED: chmod {d}")
            except OSError as e:
                print(f"BLOCKED: chmod {d}: {e.strerror}")
    elif name == "hidden_through_symlink":
        for p in (".env", "config/app.env"):
            try:
                data = open(p, "rb").read()
                print(("ESCAPED" if data else "BLOCKED") + f": {p} holds {len(data)} bytes")
            except OSError as e:
                print(f"BLOCKED: {p}: {e.strerror}")
        try_write("config/app.env", b"DB_PASSWORD=from-the-agent\n")
    elif name == "etc_private":
        for p in args:
            try:
                data = open(p, "rb").read()
                print(("ESCAPED" if data else "BLOCKED") + f": {p} holds {len(data)} bytes")
            except OSError as e:
                print(f"BLOCKED: read {p}: {e.strerror}")
    elif name == "odd_syscalls":
        r, e = sys_call("modify_ldt", 0, ctypes.create_string_buffer(16), 16)
        expect_fail("modify_ldt", r, e)
        r, e = sys_call("personality", 0x0400000)  # READ_IMPLIES_EXEC
        expect_fail("personality(READ_IMPLIES_EXEC)", r, e)
        r, e = sys_call("open_tree_attr", -100, ctypes.c_char_p(b"/"), 0, 0, 0)
        expect_fail("open_tree_attr", r, e)
    elif name == "flood_exec_args":
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"] + ["A" * 4000] * 100)
        os.waitpid(pid, 0)
        print("BLOCKED: exec with 100 arguments of 4000 bytes logged within bounds")
    else:
        print(f"unknown attack {name}")
        sys.exit(2)


attack(sys.argv[1], sys.argv[2:])
