#!/bin/bash
# make bench: what pve-nvidia-hook costs per container start, and what a boot
# with many GPU containers costs, against the original plan's way, measured
# in one run on the sandbox's real LXC containers (tests/e2e/sandbox.sh).
# Prints one table and writes bench/RESULTS.md.
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
up_to_date=9201
not_requested=9202
storm_first=9211

[ "$(id -u)" -eq 0 ] || { echo "make bench needs root (real LXC containers)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }

work=$(mktemp -d /tmp/pve-nvidia-hook-bench.XXXXXX)
vmids=("$up_to_date" "$not_requested")
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
children() {
    strace -f -qq -e trace=execve -o "$work/trace" "$@" >/dev/null 2>&1 || true
    # Successful execs only (a shell also probes each PATH entry), less the
    # measured program's own.
    echo $(( $(grep 'execve(' "$work/trace" | grep -c ' = 0$') - 1 ))
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
read -r bm b5 b95 < <(measure "before-$up_to_date" "$before" "$up_to_date" post-start)
bc=$(children "$before" "$up_to_date" post-start)
read -r nm _ _ < <(measure "after-$up_to_date" "$bin" "$up_to_date" post-start)
ac=$(children "$bin" "$up_to_date" post-start)
delta=$(python3 -c "print(f'{$nm - $bm:+.2f}')")

/usr/bin/time -f '%M' -o "$work/rss" "$bin" "$up_to_date" post-start >/dev/null 2>&1
rss_kb=$(tail -n1 "$work/rss")
objcopy --strip-all "$bin" "$work/stripped"
size=$(stat -c %s "$work/stripped")

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

| up to date, the same container and run | median wall (spread) | child processes |
| --- | --- | --- |
| before (\`$baseline_rev\`) | $bm ms (p5 $b5, p95 $b95) | $bc |
| now | $nm ms | $ac |
| difference | $delta ms | |

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
| peak RSS of one up-to-date \`post-start\` (\`/usr/bin/time -f %M\`) | $rss_kb KB |
MD
)
echo
echo "$table"
measured=$(
    echo "Measured $(date -u +%Y-%m-%d) on $cores cores, $cpu; kernel $(uname -r)."
    echo "Command: \`make bench\` (bench/run.sh: $runs runs per row with hyperfine $(hyperfine --version | cut -d' ' -f2) -N, children counted with strace -f -e trace=execve, real LXC containers from tests/e2e/sandbox.sh)."
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
