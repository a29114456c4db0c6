#!/bin/bash
# make bench: what pve-nvidia-hook costs per container start (against an
# empty Rust program, the previous release and the original plan's way), what
# a boot with many GPU containers costs, and how much host memory a hook and
# an install take on a tenant's hostile inputs, measured in one run on the
# sandbox's real LXC containers (tests/e2e/sandbox.sh). Prints the tables and
# writes bench/RESULTS.md.
#
# BENCH_FIRST_VMID (default 9201): the containers are that vmid and the 17
# after it. RUNS (default 300): runs per timed row. ROUNDS (default 5): the
# comparison with the empty program is made in that many rounds.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
sandbox=$top/tests/e2e/sandbox.sh
bin=$top/target/release/pve-nvidia-hook
version=550.54.14
runs=${RUNS:-300}
# The hook as it was before the hostile-tenant, cluster and installer work,
# measured in the same run: its up-to-date path is the one to stay within a
# millisecond of.
baseline_rev=${BASELINE:-0accdfa}
storm=${STORM:-8}
rounds=${ROUNDS:-5}
first=${BENCH_FIRST_VMID:-9201}
up_to_date=$first
not_requested=$((first + 1))
hostile_dpkg=$((first + 2))
hostile_record=$((first + 3))
hostile_mounts=$((first + 4))
storm_first=$((first + 10))
lxcpath=$(lxc-config lxc.lxcpath 2>/dev/null || echo /var/lib/lxc)

[ "$(id -u)" -eq 0 ] || { echo "make bench needs root (real LXC containers)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }

work=$(mktemp -d /tmp/pve-nvidia-hook-bench.XXXXXX)
vmids=("$up_to_date" "$not_requested" "$hostile_dpkg" "$hostile_record" "$hostile_mounts")
for i in $(seq 0 $((storm - 1))); do vmids+=($((storm_first + i))); done
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    git -C "$top" worktree remove --force "$work/baseline" >/dev/null 2>&1 || true
    for v in "${vmids[@]}"; do "$sandbox" down "$v" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
note() { printf '%s\n' "bench: $*" >&2; }

note "sandbox: host driver $version, stand-in runfile (slow: 5 s, as a real install takes time)"
"$sandbox" host-version "$work" "$version"
"$sandbox" runfile "$version" "$work/runfiles" slow
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/runfiles" 2> "$work/http.log" >/dev/null &
server=$!
digest=$(sha256sum "$work/runfiles/NVIDIA-Linux-x86_64-$version.run" | cut -d' ' -f1)
write_config() {
    cat > "$work/config.json" <<JSON
{
  "background": $1,
  "dependencies": ["kmod"],
  "runfile_url": "http://127.0.0.1:$port/NVIDIA-Linux-x86_64-{version}.run",
  "runfile_sha256": {"$version": "$digest"},
  "paths": {"pve": "$work/pve", "sys": "$work/sys", "cache": "$work/cache", "lock": "$work/lock", "log": "$work/log"}
}
JSON
}
write_config false
export PVE_NVIDIA_HOOK_CONFIG=$work/config.json

# The original plan's stage 1, run the way the plan runs it: nvidia-smi on
# the host, then `pct exec <vmid> -- nvidia-smi ...` piped into grep. The
# host has no GPU here, so its nvidia-smi is a stand-in that prints the
# stand-in module version; `pct` is a stand-in that execs lxc-attach, as the
# real one ends in (the real pct is a Perl program that costs far more).
mkdir -p "$work/planbin"
cat > "$work/planbin/nvidia-smi" <<SH
#!/bin/sh
cat "$work/sys/module/nvidia/version"
SH
cat > "$work/planbin/pct" <<'SH'
#!/bin/sh
[ "$1" = exec ] || exit 2
vmid=$2; shift 2; [ "$1" = -- ] && shift
exec lxc-attach -n "$vmid" -- "$@"
SH
cat > "$work/plan-stage1.sh" <<'SH'
#!/bin/bash
CTID=$1
host_driver_version=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader,nounits | head -n 1)
if pct exec "$CTID" -- nvidia-smi --query-gpu=driver_version --format=csv,noheader,nounits | grep -q "$host_driver_version"; then
    exit 0
fi
exit 1
SH
chmod 755 "$work/planbin/"* "$work/plan-stage1.sh"
plan=(env "PATH=$work/planbin:$PATH" bash "$work/plan-stage1.sh")

# A container as an install finds it: kmod in place (NVIDIA's installer
# needs its programs), so that the storm measures the hook and not the
# mirror: with its dependencies there, an install runs no apt at all.
up() {
    "$sandbox" up "$@"
    lxc-attach -n "$1" -- env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kmod >/dev/null
}

note "baseline: building $baseline_rev"
git -C "$top" worktree add -f --detach "$work/baseline" "$baseline_rev" >/dev/null 2>&1
cargo build --release --locked --quiet --manifest-path "$work/baseline/Cargo.toml" --target-dir "$top/target/bench-baseline"
before=$top/target/bench-baseline/release/pve-nvidia-hook
# The floor: a Rust program that does nothing, built with the tool's own
# release profile; and the door's micro-benchmark.
cargo build --release --locked --quiet --manifest-path "$top/Cargo.toml" --example empty --example probe-cost
empty=$top/target/release/examples/empty
probe_cost=$top/target/release/examples/probe-cost

note "containers: $up_to_date (up to date), $not_requested (not requested)"
up "$up_to_date" "$work" gpu nvidia
up "$not_requested" "$work" gpu ""
"$bin" install "$up_to_date" >/dev/null 2>&1
"$bin" status --json "$up_to_date" | grep -q '"up-to-date"' || { echo "setup: $up_to_date is not up to date" >&2; exit 1; }

# Wall time with hyperfine (no shell in between); children counted with strace.
measure() {
    local name=$1; shift
    # -i: the plan's stage 1 exits 1 when it finds no matching driver (its
    # "go and install" answer), which is still a measurement.
    hyperfine -N -i --warmup 20 --runs "$runs" --export-json "$work/$name.json" "$*" >/dev/null 2>&1
    python3 - "$work/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = sorted(r["times"])
q = lambda p: t[int(p * (len(t) - 1))] * 1000
print(f"{r['median']*1000:.2f} {q(0.05):.2f} {q(0.95):.2f}")
PY
}
# "<programs started> <processes forked>" by a command, its own left out.
procs() {
    strace -f -q -e trace=execve -o "$work/trace" "$@" >/dev/null 2>&1 || true
    # Successful execs only (a shell also probes each PATH entry); every
    # process of the tree, the measured one included, has one exit line.
    local execs forks
    execs=$(grep -cE 'execve(\(| resumed>).* = 0$' "$work/trace" || true)
    forks=$(grep -cE '^[0-9]+ +\+\+\+ (exited with|killed by)' "$work/trace" || true)
    echo "$((execs - 1)) $((forks - 1))"
}
children() {
    local execs _
    read -r execs _ < <(procs "$@")
    echo "$execs"
}
row() {
    local label=$1 vmid=$2
    # -i below must not hide a failing hook.
    "$bin" "$vmid" post-start >/dev/null 2>&1 || { echo "bench: $label: the hook failed" >&2; exit 1; }
    read -r hm h5 h95 < <(measure "hook-$vmid" "$bin" "$vmid" post-start)
    hc=$(children "$bin" "$vmid" post-start)
    read -r pm p5 p95 < <(measure "plan-$vmid" "${plan[@]}" "$vmid")
    pc=$(children "${plan[@]}" "$vmid")
    ratio=$(python3 -c "print(f'{$pm/$hm:.0f}')")
    printf '| %s | %s ms (p5 %s, p95 %s) | %s | %s ms (p5 %s, p95 %s) | %s | %s× |\n' \
        "$label" "$hm" "$h5" "$h95" "$hc" "$pm" "$p5" "$p95" "$pc" "$ratio"
}
note "timing the up-to-date and not-requested paths ($runs runs each)"
table1=$(row "up to date, \`$up_to_date post-start\`" "$up_to_date"; row "not requested, \`$not_requested post-start\`" "$not_requested")
"$before" "$up_to_date" post-start >/dev/null 2>&1 || { echo "bench: the baseline hook failed" >&2; exit 1; }

# The up-to-date hook, the previous release's and an empty Rust program, in
# rounds (each round all three, one after another) so that the machine's
# load weighs on all alike; each median is of all rounds' runs. Then the
# same on one CPU (taskset -c 0): without this VM's wakeups of its other
# virtual CPU.
note "the up-to-date path against an empty Rust program and $baseline_rev ($rounds rounds of $((runs / rounds)) runs)"
read -r load_before _ < /proc/loadavg
for r in $(seq "$rounds"); do
    for cpus in all one; do
        pin=()
        [ "$cpus" = one ] && pin=(taskset -c 0)
        for name in empty before now; do
            case "$name" in
                empty) cmd="$empty" ;;
                before) cmd="$before $up_to_date post-start" ;;
                now) cmd="$bin $up_to_date post-start" ;;
            esac
            "${pin[@]}" hyperfine -N --warmup 10 --runs $((runs / rounds)) \
                --export-json "$work/floor-$cpus-$name-$r.json" "$cmd" >/dev/null 2>&1
        done
    done
done
read -r load_after _ < /proc/loadavg
# Per program: "median p5 p95 median-minus-the-empty-program's" (ms).
floor_stats() {
    python3 - "$work" "$1" <<'PY'
import glob, json, sys
work, cpus = sys.argv[1], sys.argv[2]
def times(name):
    t = []
    for f in glob.glob(f"{work}/floor-{cpus}-{name}-*.json"):
        t += json.load(open(f))["results"][0]["times"]
    return sorted(x * 1000 for x in t)
q = lambda t, p: t[int(p * (len(t) - 1))]
floor = q(times("empty"), 0.5)
for name in ("empty", "before", "now"):
    t = times(name)
    print(f"{q(t, 0.5):.2f} {q(t, 0.05):.2f} {q(t, 0.95):.2f} {q(t, 0.5) - floor:+.2f}")
PY
}
{ read -r em e5 e95 _; read -r bm b5 b95 bd; read -r nm n5 n95 nd; } < <(floor_stats all)
{ read -r _ _ _ _; read -r _ _ _ bd1; read -r _ _ _ nd1; } < <(floor_stats one)
read -r ec ef < <(procs "$empty")
read -r bc bf < <(procs "$before" "$up_to_date" post-start)
read -r ac af < <(procs "$bin" "$up_to_date" post-start)
delta=$(python3 -c "print(f'{$nm - $bm:+.2f}')")

# The door's parts, each timed alone in one process (examples/probe-cost.rs).
init_pid=$(lxc-info -n "$up_to_date" -p -H)
"$probe_cost" "$init_pid" /proc "$runs" > "$work/probe-cost" 2>/dev/null
door=$(python3 - "$work/probe-cost" <<'PY'
import sys
what = {
    "fork": "a bare `fork`: the child `_exit`s at once, and is reaped",
    "run_in_child": "`run_in_child` with an empty closure: pipe, fork, the child's setup, its answer",
    "probe": "a read through the container's probe that does nothing: the child also opens the root, reads and parses the mount table",
    "detect": "the up-to-date check (`detect_in`): also the record, one `statx` or `readlinkat` per recorded file",
}
prev = None
for line in open(sys.argv[1]):
    name, med, p5, p95 = line.split()
    m = float(med)
    step = "" if prev is None else f"{m - prev:+.0f} µs"
    print(f"| {what[name]} | {m:.0f} µs (p5 {float(p5):.0f}, p95 {float(p95):.0f}) | {step} |")
    prev = m
PY
)

# Peak memory: the largest process of a run's tree, those it leaves to end
# on their own (the hook's last reader) included.
peak_rss=$("$sandbox" peak-rss)
"$peak_rss" "$work/rss" "$bin" "$up_to_date" post-start >/dev/null 2>&1
rss_kb=$(cat "$work/rss")
objcopy --strip-all "$bin" "$work/stripped"
size=$(stat -c %s "$work/stripped")

# What a tenant writes, and how much host memory reading it takes: the peak
# RSS of a hook and of an install (of the largest process of its tree, its
# forked readers included: tests/e2e/stand-in/peak-rss.c), each on a container
# that is up to date before the hostile input is added.
note "hostile inputs: $hostile_dpkg (dpkg status), $hostile_record (installer record), $hostile_mounts (mount table)"
for v in "$hostile_dpkg" "$hostile_record" "$hostile_mounts"; do
    up "$v" "$work" gpu nvidia
    "$bin" install "$v" >/dev/null 2>&1 || { echo "bench: setup: installing into $v failed" >&2; exit 1; }
done
# 300,000 installed packages with long NVIDIA names.
python3 - "$lxcpath/$hostile_dpkg/rootfs/var/lib/dpkg/status" <<'PY'
import sys
with open(sys.argv[1], "a") as f:
    f.write("\n")
    for i in range(300_000):
        f.write(f"Package: libnvidia-{i}-{'x' * 100}\nStatus: install ok installed\nVersion: 1\n\n")
PY
dpkg_mb=$(( $(stat -c %s "$lxcpath/$hostile_dpkg/rootfs/var/lib/dpkg/status") / 1000000 ))
# The installer's record grown to 20,000 entries (the most it reads) and
# just under 1 MiB (the largest it reads), every file it lists there, in
# 200 folders: the hook finds the container up to date after 20,000 statx.
record_bytes=$(python3 - "$lxcpath/$hostile_record/rootfs" <<'PY'
import os, re, sys
root = sys.argv[1]
path = os.path.join(root, "var/lib/nvidia/log")
text = open(path).read().rstrip("\n") + "\n"
extra = 20_000 - len(re.findall(r"^\d+: /", text, re.M))
entry = lambda i, pad: f"1: /usr/lib/nvidia-hostile/f{i % 200:03d}/h{i:05d}{'x' * pad}\n0\n"
pad = ((1 << 20) - 1000 - len(text)) // extra - len(entry(0, 0))
lines = []
for i in range(extra):
    line = entry(i, pad)
    file = root + line[3:line.index("\n")]
    os.makedirs(os.path.dirname(file), exist_ok=True)
    open(file, "w").close()
    lines.append(line)
text += "".join(lines)
assert len(text.encode()) <= 1 << 20
open(path, "w").write(text)
print(len(text.encode()))
PY
)
# Thousands of mounts in the container's own namespace (made private
# first, so that none reaches the host), with long mount points.
python3 - "$(lxc-info -n "$hostile_mounts" -p -H)" <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(ret, what):
    if ret != 0:
        raise OSError(ctypes.get_errno(), what)
check(libc.setns(os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY), 0x00020000), "setns")
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
name = "m" * 200
for i in range(4000):
    point = f"/mnt/hostile/{name}/{name}/{name}/{i:04d}"
    os.makedirs(point)
    check(libc.mount(b"none", point.encode(), b"tmpfs", 0, b"size=4k"), point)
PY
mounts=$(wc -l < "/proc/$(lxc-info -n "$hostile_mounts" -p -H)/mountinfo")
mountinfo_kb=$(( $(wc -c < "/proc/$(lxc-info -n "$hostile_mounts" -p -H)/mountinfo") / 1000 ))

# The peak RSS (KB) of the tool run with these arguments, into $peak_kb;
# its output must show EXPECTED (what the run is meant to measure).
peak() {
    local expected=$1
    shift
    "$peak_rss" "$work/rss" "$bin" "$@" > "$work/out" 2>&1 || true
    grep -q "$expected" "$work/out" || {
        echo "bench: \`$*\` did not say '$expected':" >&2
        tail -n 5 "$work/out" >&2
        exit 1
    }
    peak_kb=$(cat "$work/rss")
}
limit_kb=$((64 * 1024))
# One cell: the peak, and whether it is within 64 MiB.
cell() {
    local kb=$1 what=$2
    if [ "$kb" -lt "$limit_kb" ]; then
        printf '%s KB (%s)' "$kb" "$what"
    else
        printf '**%s KB, over 64 MiB** (%s)' "$kb" "$what"
    fi
}
timed() {
    local vmid=$1
    hyperfine -N --warmup 3 --runs 30 --export-json "$work/hostile-$vmid.json" "$bin $vmid post-start" >/dev/null 2>&1
    python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['results'][0]['median']*1000:.1f}\")" "$work/hostile-$vmid.json"
}
peak "up to date" "$hostile_dpkg" post-start
dpkg_hook=$peak_kb
peak "300000 NVIDIA driver packages" install --force "$hostile_dpkg"
dpkg_install=$peak_kb
peak "up to date" "$hostile_record" post-start
record_hook=$peak_kb
record_ms=$(timed "$hostile_record")
peak "installed and verified" install --force "$hostile_record"
record_install=$peak_kb
peak "up to date" "$hostile_mounts" post-start
mounts_hook=$peak_kb
mounts_ms=$(timed "$hostile_mounts")
peak "installed and verified" install --force "$hostile_mounts"
mounts_install=$peak_kb
hostile=$(cat <<MD
| hostile input | a hook (\`post-start\`): peak RSS | an install (\`install --force\`): peak RSS |
| --- | --- | --- |
| dpkg status: 300,000 installed packages named \`libnvidia-<n>-<100 x>\` ($dpkg_mb MB) | $(cell "$dpkg_hook" "up to date: the start path reads no dpkg status") | $(cell "$dpkg_install" "refused: 300000 NVIDIA driver packages") |
| installer record: 20,000 entries, $record_bytes bytes, every listed file there | $(cell "$record_hook" "up to date, in $record_ms ms") | $(cell "$record_install" "installed and verified") |
| mount table: $mounts mounts, $mountinfo_kb KB of mountinfo | $(cell "$mounts_hook" "up to date, in $mounts_ms ms") | $(cell "$mounts_install" "installed and verified") |
MD
)

note "boot storm: $storm containers needing $version, all hooks at once, background mode"
for i in $(seq 0 $((storm - 1))); do up $((storm_first + i)) "$work" gpu nvidia; done
write_config true
: > "$work/http.log"
rm -rf "$work/cache"
start=$(date +%s%N)
hooks=()
for i in $(seq 0 $((storm - 1))); do
    "$bin" $((storm_first + i)) post-start >/dev/null 2>&1 &
    hooks+=($!)
done
wait "${hooks[@]}"
hooks_returned_ms=$(( ($(date +%s%N) - start) / 1000000 ))
max_installers=0
peak_hwm=0
while :; do
    n=$(pgrep -fc '/nvidia-installer' || true)
    (( n > max_installers )) && max_installers=$n
    for pid in $(pgrep -x pve-nvidia-hook || true); do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        (( ${kb:-0} > peak_hwm )) && peak_hwm=$kb
    done
    done_count=$("$bin" status --json $(seq "$storm_first" $((storm_first + storm - 1))) | grep -c '"state": "up-to-date"' || true)
    [ "$done_count" -eq "$storm" ] && break
    (( ($(date +%s%N) - start) / 1000000000 > 600 )) && { echo "storm did not finish in 600 s" >&2; exit 1; }
    sleep 0.05
done
storm_s=$(python3 -c "print(f'{($(date +%s%N) - $start)/1e9:.1f}')")
downloads=$(grep -c "GET /NVIDIA-Linux-x86_64-$version.run " "$work/http.log" || true)

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
cores=$(nproc)
table=$(cat <<MD
| path | pve-nvidia-hook: median wall (spread) | its child processes | plan's stage 1: median wall (spread) | its child processes | plan / hook |
| --- | --- | --- | --- | --- | --- |
$table1

| up to date, the same container and run ($runs runs each, in $rounds rounds) | median wall (spread) | minus the empty program | the same on one CPU | programs started | processes forked |
| --- | --- | --- | --- | --- | --- |
| an empty Rust program, the tool's release profile (\`examples/empty.rs\`) | $em ms (p5 $e5, p95 $e95) | | | $ec | $ef |
| before (\`$baseline_rev\`) | $bm ms (p5 $b5, p95 $b95) | $bd ms | $bd1 ms | $bc | $bf |
| now | $nm ms (p5 $n5, p95 $n95) | $nd ms | $nd1 ms | $ac | $af |
| now against before | $delta ms | | | | |

| the door, step by step in one process (\`examples/probe-cost.rs\`, $runs runs each) | median (spread) | the step adds |
| --- | --- | --- |
$door

$hostile

| boot storm ($storm containers, one driver version, background mode) | |
| --- | --- |
| all $storm hooks returned after | $hooks_returned_ms ms |
| total time until all are up-to-date | $storm_s s (stand-in installer: 5 s each; default cap: 2 at once) |
| downloads of the runfile | $downloads |
| installers running at the same time (max seen) | $max_installers |
| peak RSS of any hook process (VmHWM, sampled) | $peak_hwm KB |

| one hook run | |
| --- | --- |
| binary size (release build, stripped as in the package) | $size bytes |
| peak RSS of one up-to-date \`post-start\`, its reader included | $rss_kb KB |
MD
)
echo
echo "$table"
measured=$(
    echo "Measured $(date -u +%Y-%m-%d) on $cores cores, $cpu; kernel $(uname -r)."
    echo "Command: \`make bench\` (bench/run.sh: $runs runs per row with hyperfine $(hyperfine --version | cut -d' ' -f2) -N, programs and processes counted with strace -f, peak memory as the largest process of a run's tree (tests/e2e/stand-in/peak-rss.c), real LXC containers from tests/e2e/sandbox.sh)."
    echo "Machine load (1-minute average, $cores cores): $load_before when the comparison with the empty program began, $load_after when it ended."
    echo
    echo "$table"
)
# The measured block between the markers is replaced; the analysis around
# it is kept.
python3 - "$top/bench/RESULTS.md" "$measured" <<'PY'
import sys, os
path, block = sys.argv[1], sys.argv[2]
start, end = "<!-- measured: bench/run.sh writes this block -->", "<!-- /measured -->"
text = open(path).read() if os.path.exists(path) else f"# Benchmark results\n\n{start}\n{end}\n"
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{start}\n{block}\n{end}{tail}")
PY
echo "bench: wrote bench/RESULTS.md" >&2
