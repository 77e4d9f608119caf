# shellcheck shell=bash
# shellcheck source-path=SCRIPTDIR/../..
# shellcheck disable=SC2034 # sets variables for the scripts that source it
# Shared helpers for bench/workspace/run and bench/workspace/chunks. Source it
# after `cd` to the repository root; do not run it.
#
# The sourcing script sets SCRATCH (via bench_setup) and uses:
#   bench_time COLUMN WORKLOAD REP CMD   time CMD (a bash command string), record it
#   bench_record COLUMN WORKLOAD REP VALUE
#   cordon_mount ID MNT [ARGS...] / cordon_unmount MNT
#   ovl_mount LOWER UPPER WORK MNT / ovl_unmount MNT
#   bench_report OUT_MD TITLE           median table (markdown + JSON)

# shellcheck source=scripts/lib.sh disable=SC1091
source scripts/lib.sh

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Say which command failed when set -e stops the script.
set -o errtrace
trap '[ "$BASH_SUBSHELL" -gt 0 ] || log "error: status $? at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND"' ERR

# note TEXT: something odd worth reading; goes into the report's Notes section.
note() { log "note: $*"; printf '%s\n' "$*" >> "$SCRATCH/notes.txt"; }

# Options shared by both scripts. Sets SIZE, REPEAT, OUT, and EXTRA_ARGS (the
# arguments the caller handles itself); exits on --help.
parse_common_args() { # DEFAULT_REPEAT DEFAULT_OUT USAGE_TEXT ARGS...
    REPEAT=$1 OUT=$2; local usage=$3; shift 3
    SIZE=full
    EXTRA_ARGS=()
    while [ $# -gt 0 ]; do
        case $1 in
            --size) SIZE=${2:?--size needs small or full}; shift 2 ;;
            --size=*) SIZE=${1#*=}; shift ;;
            --repeat) REPEAT=${2:?--repeat needs a number}; shift 2 ;;
            --repeat=*) REPEAT=${1#*=}; shift ;;
            --out) OUT=${2:?--out needs a file}; shift 2 ;;
            --out=*) OUT=${1#*=}; shift ;;
            -h|--help) printf '%s\n' "$usage"; exit 0 ;;
            *) EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    case $SIZE in small|full) ;; *) printf '%s\n' "$usage" >&2; die "--size must be small or full" ;; esac
    [[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat must be a positive integer"
}

# True when MNT is a mount point right now.
is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# True while PID runs (a zombie counts as gone).
alive() { local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1; [ -n "$st" ] && [ "$st" != Z ]; }

# Builds target/release/cordon and prepares SCRATCH under /var/tmp with a trap
# that unmounts and removes everything, on success, failure or Ctrl-C.
BENCH_PIDS=()
bench_setup() { # NAME
    ensure_packages fuse3 fuse-overlayfs git python3 2>&1 | sed 's/^/[packages] /' >&2
    log "building cordon (release)"
    cargo build --release -p cordon --locked
    CORDON=${CARGO_TARGET_DIR:-$PWD/target}/release/cordon
    [ -x "$CORDON" ] || die "$CORDON was not built"

    SCRATCH=$(mktemp -d "/var/tmp/cordon-bench-$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    export CORDON_HOME=$SCRATCH/cordon-home
    # Keep host git configuration out of every git call.
    export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
    mkdir -p "$CORDON_HOME"
    : > "$SCRATCH/samples.tsv"
    : > "$SCRATCH/notes.txt"
    : > "$SCRATCH/mount.log"
    local fstype; fstype=$(df --output=fstype "$SCRATCH" | tail -1)
    SCRATCH_FS=$fstype
    [ "$fstype" != tmpfs ] || note "scratch directory $SCRATCH is on tmpfs; results do not reflect a disk-backed file system"
    cat > "$SCRATCH/timer.py" <<'PY'
# Runs one bash command; prints its wall time in ms from the monotonic clock.
import subprocess, sys, time
t0 = time.monotonic_ns()
r = subprocess.run(["bash", "-c", sys.argv[1]])
t1 = time.monotonic_ns()
if r.returncode != 0:
    sys.exit(f"timed command failed with status {r.returncode}: {sys.argv[1]}")
print(f"{(t1 - t0) / 1e6:.1f}")
PY
    cat > "$SCRATCH/create.py" <<'PY'
# create.py DIR N: makes DIR and N files of 100 bytes in it.
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
data = b"x" * 99 + b"\n"
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(data)
PY
    LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
    log "scratch: $SCRATCH ($fstype); load average: $LOAD_AT_START"
}

bench_cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    if [ -n "${SCRATCH:-}" ] && [ -d "$SCRATCH" ]; then
        local m
        # Deepest first; fusermount3 for FUSE, then umount, then a lazy detach.
        while read -r m; do
            log "cleanup: unmounting $m"
            fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
        done < <(awk -v p="$SCRATCH/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        local pid i
        for pid in "${BENCH_PIDS[@]}"; do
            for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
            if alive "$pid"; then
                log "cleanup: process $pid still running; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null
            fi
            wait "$pid" 2>/dev/null
        done
        if awk -v p="$SCRATCH/" 'index($5, p) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            log "cleanup: mounts remain under $SCRATCH; not removing it"
        else
            rm -rf "$SCRATCH"
        fi
    fi
    exit "$rc"
}

# Waits until MNT is mounted; fails if PID (when given) exits first.
wait_mounted() { # MNT [PID]
    local i
    for ((i = 0; i < 600; i++)); do
        is_mounted "$1" && return 0
        if [ -n "${2:-}" ] && ! alive "$2"; then
            tail -20 "$SCRATCH/mount.log" >&2
            die "mount process for $1 exited before the mount appeared"
        fi
        sleep 0.05
    done
    tail -20 "$SCRATCH/mount.log" >&2
    die "$1 did not appear in /proc/self/mountinfo within 30 s"
}

# Waits up to SECONDS for PID to exit; returns its exit status, or 255 on timeout.
wait_exit() { # PID SECONDS
    local i
    for ((i = 0; i < $2 * 20; i++)); do alive "$1" || break; sleep 0.05; done
    alive "$1" && return 255
    local rc=0
    wait "$1" || rc=$?
    return "$rc"
}

forget_pid() { local p keep=(); for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; BENCH_PIDS=("${keep[@]}"); }

# Mounts workspace ID at MNT in the background; sets CORDON_PID and MOUNT_MS.
cordon_mount() { # ID MNT [ARGS...]
    local id=$1 mnt=$2; shift 2
    local t0; t0=$(date +%s%N)
    echo "--- cordon workspace mount $id $mnt $*" >> "$SCRATCH/mount.log"
    # cordon=info makes the CLI log the negotiated kernel features (passthrough).
    CORDON_LOG=warn,fuser=error,cordon=info "$CORDON" workspace mount "$id" "$mnt" "$@" >> "$SCRATCH/mount.log" 2>&1 &
    CORDON_PID=$!
    BENCH_PIDS+=("$CORDON_PID")
    wait_mounted "$mnt" "$CORDON_PID"
    MOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

# SIGINT to the mount process, which unmounts and exits; sets UNMOUNT_MS.
cordon_unmount() { # MNT
    local mnt=$1 rc=0 t0; t0=$(date +%s%N)
    kill -INT "$CORDON_PID"
    wait_exit "$CORDON_PID" 300 || rc=$?
    if [ "$rc" = 255 ]; then
        note "cordon mount (pid $CORDON_PID) did not exit within 300 s of SIGINT; detaching $mnt"
        umount -l "$mnt" 2>/dev/null
        kill -KILL "$CORDON_PID" 2>/dev/null
        wait "$CORDON_PID" 2>/dev/null || true
    elif [ "$rc" != 0 ]; then
        note "cordon mount exited with status $rc after SIGINT (see the mount log lines below)"
        tail -5 "$SCRATCH/mount.log" | sed 's/^/    /' >> "$SCRATCH/notes.txt"
    fi
    forget_pid "$CORDON_PID"
    UNMOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
    ! is_mounted "$mnt" || die "$mnt is still mounted after cordon exited"
}

# fuse-overlayfs in the foreground (background job) so its exit can be awaited.
ovl_mount() { # LOWER UPPER WORK MNT
    local t0; t0=$(date +%s%N)
    mkdir -p "$2" "$3"
    echo "--- fuse-overlayfs $4" >> "$SCRATCH/mount.log"
    fuse-overlayfs -f -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" >> "$SCRATCH/mount.log" 2>&1 &
    OVL_PID=$!
    BENCH_PIDS+=("$OVL_PID")
    wait_mounted "$4" "$OVL_PID"
    MOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

ovl_unmount() { # MNT
    local rc=0 t0; t0=$(date +%s%N)
    fusermount3 -u "$1" || umount "$1"
    wait_exit "$OVL_PID" 60 || rc=$?
    if [ "$rc" = 255 ]; then
        note "fuse-overlayfs (pid $OVL_PID) did not exit within 60 s of unmount"
        kill -KILL "$OVL_PID" 2>/dev/null
        wait "$OVL_PID" 2>/dev/null || true
    fi
    forget_pid "$OVL_PID"
    UNMOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
    ! is_mounted "$1" || die "$1 is still mounted"
}

bench_record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SCRATCH/samples.tsv"; }

# Flushes dirty data first (untimed) so one workload's writeback does not land
# in the next one's time, then times CMD.
# Cordon copies its WAL into the database in the background once a workspace is
# idle. When SETTLE_DB names a workspace database, wait (untimed) until that
# deferred work is done, so it never lands in the next workload's time, and add
# the wait to SETTLE_MS, which the caller reports as a setup cost.
SETTLE_DB=
SETTLE_MS=0
settle() {
    [ -n "$SETTLE_DB" ] || return 0
    local t0 last="" now quiet=0
    t0=$(date +%s%N)
    while [ "$quiet" -lt 3 ]; do
        sleep 0.2
        now=$(stat -c '%Y.%y %s' "$SETTLE_DB" "$SETTLE_DB-wal" 2>/dev/null | tr '\n' ' ')
        if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; last=$now; fi
        [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 120 ] || { note "cordon did not settle within 120 s"; break; }
    done
    SETTLE_MS=$(( SETTLE_MS + ($(date +%s%N) - t0) / 1000000 - 600 ))
}

bench_time() { # COLUMN WORKLOAD REP CMD
    settle
    sync
    local ms
    ms=$(python3 "$SCRATCH/timer.py" "$4") || die "$2 on $1 failed: $4"
    bench_record "$1" "$2" "$3" "$ms"
    log "  $1 $2: $ms ms"
}

# Writes the median table as markdown (OUT_MD and stdout) and the raw samples as
# JSON (OUT_MD with .json). Reads, besides samples.tsv and notes.txt in SCRATCH:
#   $SCRATCH/meta.tsv       key<TAB>value lines for the header, in order
#   $SCRATCH/workloads.tsv  id<TAB>unit<TAB>description, in table order
#   BENCH_COLUMNS           column names in order (space-separated)
#   BENCH_RATIOS            "a/b" pairs (space-separated) shown as ratio columns
# Workloads whose id starts with "_" go into a second table (setup costs).
bench_report() { # OUT_MD TITLE
    mkdir -p "$(dirname "$1")"
    BENCH_COLUMNS=$BENCH_COLUMNS BENCH_RATIOS=${BENCH_RATIOS:-} python3 - "$SCRATCH" "$1" "$2" <<'PY'
import json, os, statistics, sys
scratch, out_md, title = sys.argv[1:4]
columns = os.environ["BENCH_COLUMNS"].split()
ratios = [r.split("/") for r in os.environ["BENCH_RATIOS"].split()]

def tsv(name):
    with open(os.path.join(scratch, name)) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]

meta = [(k, v) for k, v in tsv("meta.tsv")]
workloads = tsv("workloads.tsv")
samples = {}
for col, wl, rep, val in tsv("samples.tsv"):
    samples.setdefault(wl, {}).setdefault(col, []).append(float(val))
with open(os.path.join(scratch, "notes.txt")) as f:
    notes = f.read().rstrip()

def median(wl, col):
    v = samples.get(wl, {}).get(col)
    return statistics.median(v) if v else None

def fmt(x, unit):
    if x is None:
        return "-"
    return f"{x:.1f}" if unit == "ms" else f"{x:.2f}"

def ratio(wl, a, b):
    x, y = median(wl, a), median(wl, b)
    return f"{x / y:.2f}" if x is not None and y else "-"

def table(rows):
    head = ["workload", "unit", *columns, *[f"{a}/{b}" for a, b in ratios]]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for wl, unit, _ in rows:
        cells = [f"`{wl}`", unit, *[fmt(median(wl, c), unit) for c in columns],
                 *[ratio(wl, a, b) for a, b in ratios]]
        out.append("| " + " | ".join(cells) + " |")
    return out

main_rows = [w for w in workloads if not w[0].startswith("_")]
setup_rows = [w for w in workloads if w[0].startswith("_")]
md = [f"# {title}", ""]
md += [f"- {k}: {v}" for k, v in meta]
md += ["", "Median of the repetitions; lower is better"
       + ("; a ratio above 1 means cordon is slower." if ratios else ".") , ""]
md += table(main_rows)
md += ["", "| workload | what it does |", "|---|---|"]
md += [f"| `{wl}` | {desc} |" for wl, _, desc in main_rows]
if setup_rows and any(w[0] in samples for w in setup_rows):
    md += ["", "Not part of the comparison (outside the timed workloads):", ""]
    md += table(setup_rows)
md += ["", "## Notes", "", notes if notes else "None: every command succeeded and every check passed."]
text = "\n".join(md) + "\n"
with open(out_md, "w") as f:
    f.write(text)
sys.stdout.write(text)

data = {
    "title": title,
    "meta": dict(meta),
    "columns": columns,
    "workloads": [{"id": w, "unit": u, "description": d} for w, u, d in workloads],
    "samples": samples,
    "median": {w: {c: median(w, c) for c in columns if median(w, c) is not None} for w, _, _ in workloads},
    "ratios": {w: {f"{a}/{b}": (median(w, a) / median(w, b) if median(w, a) is not None and median(w, b) else None)
                   for a, b in ratios} for w, _, _ in main_rows},
    "notes": notes.splitlines(),
}
json_path = os.path.splitext(out_md)[0] + ".json"
with open(json_path, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
print(f"\nwritten: {out_md} and {json_path}", file=sys.stderr)
PY
}

# meta KEY VALUE: one header line of the report.
meta() { printf '%s\t%s\n' "$1" "$2" >> "$SCRATCH/meta.tsv"; }

# Header lines both scripts share.
common_meta() { # CMDLINE
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    meta kernel "$(uname -r)"
    meta CPUs "$(nproc)${cpu:+ ($cpu)}"
    meta "load average at start" "$LOAD_AT_START"
    meta size "$SIZE"
    meta repetitions "$REPEAT"
    meta command "\`$1\`"
    meta cordon "$("$CORDON" --version), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (work tree has uncommitted changes)')"
    meta "scratch file system" "$SCRATCH_FS (under /var/tmp)"
}

# What cordon's mount log said about FUSE passthrough: its "kernel features"
# line (logged at info level) for each mount, by mount mode.
passthrough_summary() {
    local said
    said=$(sed 's/\x1b\[[0-9;]*m//g' "$SCRATCH/mount.log" | awk '
        /^--- cordon workspace mount/ { mode = ($0 ~ /--no-passthrough/) ? "mount --no-passthrough" : "mount"; next }
        /^--- / { mode = ""; next }
        mode != "" && /kernel features/ && match($0, /passthrough=[a-z]+/) { c["`" mode "`: " substr($0, RSTART, RLENGTH)]++ }
        END { for (k in c) printf "%s%s x%d", (n++ ? "; " : ""), k, c[k] }')
    grep -q 'passthrough unavailable' "$SCRATCH/mount.log" \
        && said+="; cordon logged 'FUSE passthrough unavailable' and fell back to userspace reads"
    printf 'kernel %s (passthrough needs Linux >= 6.9); negotiated per cordon mount log: %s' "$(uname -r)" "${said:-no kernel-features line found}"
}

# Copies warnings and errors from the mount servers' logs into the notes.
mount_log_notes() {
    local lines
    lines=$(sed 's/\x1b\[[0-9;]*m//g' "$SCRATCH/mount.log" | grep -E ' (WARN|ERROR) |panicked|[Ee]rror' \
        | sed -E 's/^[0-9T:.-]+Z +//' | sort | uniq -c | sort -rn | head -20 || true)
    [ -z "$lines" ] || note "warnings/errors in the mount servers' logs (count, message):
$(printf '%s\n' "$lines" | sed 's/^ */    /')"
}
