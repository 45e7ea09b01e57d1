#!/usr/bin/env bash
# The GPU checks of the accelerator issue, in one run on an NVIDIA H100/H200 machine (about 10 minutes
# of device time, 16 cores, no network). Each check prints PASS / FAIL / BLOCKED with its figures and
# the run goes on to the next; everything lands in $OUT (default gpu-checks-out/), summary.txt last.
#
# Assumptions (no network there, so nothing is built or installed by this script):
#   - the CUDA binary is already built: $BIN, default target-cuda/release/tardbot-pipeline, made by
#     scripts/build-cuda.sh on any machine (CUDA 13.0, sm_90) and carried along;
#   - the machine has an NVIDIA driver >= 580 and the CUDA 13 libraries the binary links
#     (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13): from
#     $CUDA_LIBS, a Python's nvidia/cu13/lib (torch built for CUDA 13), or /usr/local/cuda*/lib64;
#   - a Python with torch and CUDA for the peer: $PEER_PYTHON (default python3), and the peer script
#     ../shared/bench/torch_ref.py or shared/bench/torch_ref.py ($PEER_SCRIPT);
#   - the CPU f32 reference of the 200-step pretrain: $CPU_REF, a JSON-lines file of {"step","loss"}
#     made on a CPU machine with `scripts/gpu-checks.sh cpu-reference` (same config, device = "cpu",
#     precision = "f32"; hours on 2 cores). Without it, the pretrain check reports the GPU losses only.
#
#   scripts/gpu-checks.sh                # all checks
#   scripts/gpu-checks.sh bench pretrain # some of: bench experts pretrain resume
#   scripts/gpu-checks.sh cpu-reference  # (CPU machine) the f32 reference losses -> $CPU_REF
#
# Tolerance of the pretrain comparison: |mean loss of steps 181..200 (bf16, GPU) − the same mean
# (f32, CPU)| <= 0.05 nats, and the per-step losses within 0.15 (bf16 rounding and other kernels'
# summation order; the CPU test at micro measures 0.013 at most over 30 steps).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-$ROOT/gpu-checks-out}"
mkdir -p "$OUT"
BIN="${BIN:-$ROOT/target-cuda/release/tardbot-pipeline}"
PEER_PYTHON="${PEER_PYTHON:-python3}"
PEER_SCRIPT="${PEER_SCRIPT:-}"
CPU_REF="${CPU_REF:-$ROOT/scripts/gpu-reference/mac_nano-200-f32.jsonl}"
PRECISION="${PRECISION:-bf16}"
CHECKS=("$@")
[ ${#CHECKS[@]} -gt 0 ] || CHECKS=(bench experts pretrain resume)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

for p in "$PEER_SCRIPT" ../shared/bench/torch_ref.py shared/bench/torch_ref.py; do
    if [ -n "$p" ] && [ -f "$p" ]; then PEER_SCRIPT=$p; break; fi
done

# The CUDA 13 libraries.
find_cuda_libs() {
    local c
    for c in "${CUDA_LIBS:-}" \
        $("$PEER_PYTHON" -c 'import nvidia, os; [print(os.path.join(p, "cu13/lib")) for p in nvidia.__path__]' 2>/dev/null) \
        /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
        if [ -n "$c" ] && [ -e "$c/libcublas.so.13" ]; then echo "$c"; return; fi
    done
}

pretrain_config() { # $1 file, $2 device, $3 precision, $4 steps
    sed -e 's/^preset = "tiny".*/preset = "mac_nano"\noverrides = { vocab_size = 4096 }/' \
        -e "s/^device = .*/device = \"$2\"\nprecision = \"$3\"/" \
        -e '/^\[pretrain\]/,/^\[/ s/^steps = .*/steps = '"$4"'/' \
        -e '/^\[pretrain\]/,/^\[/ s/^batch_size = .*/batch_size = 16/' \
        -e '/^\[pretrain\]/,/^\[/ s/^checkpoint_every = .*/checkpoint_every = 50/' \
        -e "s#^workspace = .*#workspace = \"$OUT/work-$2-$3\"#" \
        -e "s#\"data/#\"$ROOT/data/#g" \
        pipeline.toml > "$1"
}

# Per-step `loss` of the newest run's pretrain attempts, as JSON lines.
losses() { # $1 workspace
    "$PEER_PYTHON" - "$1/ledger.db" <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("""select m.step, m.value from metrics m join stage_attempts a on a.id = m.attempt_id
                     where a.stage = 'pretrain' and m.key = 'loss' order by m.step""").fetchall()
for step, v in rows: print(json.dumps({"step": step, "loss": v}))
PY
}

if [ "${CHECKS[0]}" = cpu-reference ]; then
    BIN="${CPU_BIN:-$ROOT/target/release/tardbot-pipeline}"
    pretrain_config "$OUT/cpu.toml" cpu f32 200
    "$BIN" -c "$OUT/cpu.toml" run pretrain && losses "$OUT/work-cpu-f32" > "$CPU_REF"
    echo "wrote $CPU_REF"; exit
fi

[ -x "$BIN" ] || { say "BLOCKED all: no CUDA binary at $BIN (scripts/build-cuda.sh makes it)"; exit 1; }
LIBS="$(find_cuda_libs)"
[ -n "$LIBS" ] && export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
say "binary $BIN; CUDA libraries: ${LIBS:-not found (libcublas.so.13)}; peer $PEER_PYTHON ${PEER_SCRIPT:-(no torch_ref.py)}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
ldd "$BIN" | grep -E "not found|cuda|cublas|nvrtc|curand" | tee -a "$SUMMARY"

# 1. Training throughput, ours against the peer (eager and compiled), batch 16 x 1024.
if [[ " ${CHECKS[*]} " == *" bench "* ]]; then
    for preset in mac_nano mac_mini; do
        timeout 240 "$BIN" bench train --preset "$preset" --batch 16 --seq 1024 --steps 5 --warmup 2 \
            --device cuda --precision "$PRECISION" --peak-gflops 989000 > "$OUT/bench-$preset.txt" 2>&1
        rc=$?
        ours=$(tail -1 "$OUT/bench-$preset.txt" | "$PEER_PYTHON" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s"])' 2>/dev/null)
        [ -n "$PEER_SCRIPT" ] || { say "BLOCKED bench $preset peer: no torch_ref.py"; continue; }
        # The peer's mac_mini has a 4x MLP where ours is 4.5x: its figure is indicative only.
        for mode in eager compile; do
            flag=(); [ $mode = compile ] && flag=(--compile)
            timeout 240 "$PEER_PYTHON" "$PEER_SCRIPT" --preset "$preset" --batch 16 --seq 1024 --steps 5 \
                --device cuda --bf16 "${flag[@]}" > "$OUT/peer-$preset-$mode.txt" 2>&1
            theirs=$(tail -1 "$OUT/peer-$preset-$mode.txt" | "$PEER_PYTHON" -c 'import json,sys; print(json.loads(sys.stdin.read())["tokens_per_s"])' 2>/dev/null)
            if [ $rc -eq 0 ] && [ -n "$ours" ] && [ -n "$theirs" ]; then
                say "PASS bench $preset $mode: ours $ours tokens/s, peer $theirs, ratio $("$PEER_PYTHON" -c "print(round($ours/$theirs, 3))")"
            else
                say "FAIL bench $preset $mode: ours exit $rc (${ours:-no figure}: $(grep -m1 -i error "$OUT/bench-$preset.txt")), peer ${theirs:-no figure}"
            fi
        done
    done
fi

# 2. max_experts_in_memory = 1 against all resident: device memory and step time.
if [[ " ${CHECKS[*]} " == *" experts "* ]]; then
    for m in 8 1; do
        ( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$OUT/mem-experts-$m.txt" 2>/dev/null &
        mon=$!
        timeout 180 "$BIN" bench train --preset mac_nano --batch 16 --seq 1024 --steps 3 --warmup 1 \
            --device cuda --precision "$PRECISION" --max-experts-in-memory $m > "$OUT/experts-$m.txt" 2>&1
        rc=$?
        kill $mon 2>/dev/null
        peak=$(sort -n "$OUT/mem-experts-$m.txt" | tail -1)
        step=$(tail -1 "$OUT/experts-$m.txt" | "$PEER_PYTHON" -c 'import json,sys; print(json.loads(sys.stdin.read())["step_s"])' 2>/dev/null)
        if [ $rc -eq 0 ]; then say "PASS experts max_experts_in_memory=$m: step ${step} s, peak device memory ${peak} MiB"
        else say "FAIL experts max_experts_in_memory=$m: exit $rc: $(grep -m1 -i error "$OUT/experts-$m.txt")"; fi
    done
fi

# 3. 200 steps of mac_nano on the bundled corpus, against the CPU's f32 losses.
if [[ " ${CHECKS[*]} " == *" pretrain "* ]]; then
    pretrain_config "$OUT/gpu.toml" cuda "$PRECISION" 200
    timeout 300 "$BIN" -c "$OUT/gpu.toml" run pretrain > "$OUT/pretrain.txt" 2>&1
    rc=$?
    losses "$OUT/work-cuda-$PRECISION" > "$OUT/pretrain-gpu.jsonl" 2>/dev/null
    if [ $rc -ne 0 ]; then
        say "FAIL pretrain: exit $rc: $(grep -m1 -i error "$OUT/pretrain.txt")"
    elif [ -f "$CPU_REF" ]; then
        say "$("$PEER_PYTHON" - "$OUT/pretrain-gpu.jsonl" "$CPU_REF" <<'PY'
import json, sys
g = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[1]))}
c = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[2]))}
steps = sorted(set(g) & set(c)); last = [s for s in steps if s > 180]
worst = max(abs(g[s] - c[s]) for s in steps)
tail = abs(sum(g[s] for s in last) / len(last) - sum(c[s] for s in last) / len(last))
ok = len(steps) >= 200 and tail <= 0.05 and worst <= 0.15
print(f"{'PASS' if ok else 'FAIL'} pretrain: {len(steps)} steps compared, final loss gpu {g[steps[-1]]:.4f} cpu {c[steps[-1]]:.4f}, "
      f"mean of steps 181-200 differs by {tail:.4f} (<= 0.05), worst step {worst:.4f} (<= 0.15)")
PY
)"
    else
        say "PASS? pretrain: ran 200 steps, final loss $(tail -1 "$OUT/pretrain-gpu.jsonl"); no CPU reference at $CPU_REF to compare"
    fi
fi

# 4. SIGKILL in the middle, resume, and the same losses and final weights as an uninterrupted run.
if [[ " ${CHECKS[*]} " == *" resume "* ]]; then
    pretrain_config "$OUT/resume-a.toml" cuda "$PRECISION" 120
    sed -e "s#work-cuda-$PRECISION#work-resume-a#" -i "$OUT/resume-a.toml"
    sed -e "s#work-resume-a#work-resume-b#" "$OUT/resume-a.toml" > "$OUT/resume-b.toml"
    timeout 150 "$BIN" -c "$OUT/resume-a.toml" run pretrain > "$OUT/resume-a.txt" 2>&1
    rca=$?
    "$BIN" -c "$OUT/resume-b.toml" run pretrain > "$OUT/resume-b.txt" 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do # kill once the step-50 checkpoint exists
        sleep 1; ls -d "$OUT"/work-resume-b/runs/*/stages/pretrain/work/ckpt-00000050 >/dev/null 2>&1 && break
        kill -0 $pid 2>/dev/null || break
    done
    sleep 2; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    run=$(ls "$OUT/work-resume-b/runs" 2>/dev/null | head -1)
    timeout 150 "$BIN" -c "$OUT/resume-b.toml" resume "$run" >> "$OUT/resume-b.txt" 2>&1
    rcb=$?
    if [ $rca -ne 0 ] || [ $rcb -ne 0 ]; then
        say "FAIL resume: exits $rca / $rcb: $(grep -m1 -i error "$OUT/resume-a.txt" "$OUT/resume-b.txt")"
    else
        a=$(find "$OUT/work-resume-a" -path '*pretrain/out*' -name '*.safetensors' | head -1)
        b=$(find "$OUT/work-resume-b" -path '*pretrain/out*' -name '*.safetensors' | head -1)
        la=$(losses "$OUT/work-resume-a" | tail -20 | md5sum); lb=$(losses "$OUT/work-resume-b" | tail -20 | md5sum)
        if cmp -s "$a" "$b"; then say "PASS resume: SIGKILL after step 50, resumed: final weights bit-identical"
        else say "FAIL resume: final weights differ ($a vs $b; last 20 losses $([ "$la" = "$lb" ] && echo equal || echo differ)) — bitwise only where the CUDA kernels are deterministic (cuBLAS split-K, atomics in index_add)"; fi
    fi
fi
say "done: $OUT"
