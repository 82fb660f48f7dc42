#!/usr/bin/env bash
# The GPU check, in one sitting (about 5 minutes on an H200): our loop against the DataLoader reference,
# a 20-epoch baseline arm on synthetic CIFAR-10 files, and what `parallel=auto` puts on one GPU.
# Every result goes to $OUT (default ./gpu_check), one file per step, and the console.
#   bash scripts/gpu_check.sh            # on a CUDA machine with lradvisor's packages importable
# Sizes can be shrunk for a dry run on a CPU: TRAIN_PER_CLASS, TEST_PER_CLASS, EPOCHS, BENCH_EPOCHS, SWEEP_SEEDS.
set -uo pipefail
OUT=${OUT:-gpu_check}; mkdir -p "$OUT"
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-5000}; TEST_PER_CLASS=${TEST_PER_CLASS:-1000}
EPOCHS=${EPOCHS:-20}; BENCH_EPOCHS=${BENCH_EPOCHS:-3}; SWEEP_EPOCHS=${SWEEP_EPOCHS:-3}
SWEEP_SEEDS=${SWEEP_SEEDS:-0,1,2,3,4,5,6,7}; DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-8}
STORE=$(mktemp -d)
export PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI=sqlite:///$STORE/mlflow.db
N_TRAIN=$((TRAIN_PER_CLASS * 10)); N_TEST=$((TEST_PER_CLASS * 10))
PY=${PY:-python3}

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step machine
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  $PY -c "import torch, mlflow, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'mlflow', mlflow.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/machine.txt"

step "bench: ours vs the DataLoader reference ($N_TRAIN/$N_TEST random images, $BENCH_EPOCHS epochs, $WORKERS workers)"
$PY -m lradvisor bench --device "$DEVICE" --epochs "$BENCH_EPOCHS" --train-size "$N_TRAIN" --test-size "$N_TEST" \
    --workers "$WORKERS" --data-dir /nonexistent 2>&1 | tee "$OUT/bench.jsonl"
$PY -m lradvisor bench --device "$DEVICE" --loops ours --precision fp32 --channels-last 0 --epochs "$BENCH_EPOCHS" \
    --train-size "$N_TRAIN" --test-size "$N_TEST" --data-dir /nonexistent 2>&1 | tee -a "$OUT/bench.jsonl"
$PY -m lradvisor bench --device "$DEVICE" --loops ours --processes 4 --epochs "$BENCH_EPOCHS" \
    --train-size "$N_TRAIN" --test-size "$N_TEST" --data-dir /nonexistent 2>&1 | tee -a "$OUT/bench.jsonl"

step "synthetic CIFAR-10 files ($TRAIN_PER_CLASS/$TEST_PER_CLASS per class)"
$PY scripts/make_fake_cifar.py --out /tmp/fake --train-per-class "$TRAIN_PER_CLASS" --test-per-class "$TEST_PER_CLASS"

step "baseline arm, $EPOCHS epochs"
time $PY -m lradvisor train --arm baseline --epochs "$EPOCHS" \
    --data-dir /tmp/fake --device "$DEVICE" --experiment gpu-check 2>&1 | tee "$OUT/baseline.log"

step "sweep with parallel=auto: baseline x seeds $SWEEP_SEEDS, $SWEEP_EPOCHS epochs; GPU memory sampled every 0.5 s"
( while :; do t=$(date +%s.%N)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$t, total, /"
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$t, /"
    sleep 0.5; done ) > "$OUT/gpu_mem.csv" &
SAMPLER=$!
start=$(date +%s)
$PY -m lradvisor sweep --arms baseline --seeds "$SWEEP_SEEDS" --epochs "$SWEEP_EPOCHS" --data-dir /tmp/fake \
    --device "$DEVICE" --parallel auto --sweep-id gpu-auto --experiment gpu-check 2>&1 | tee "$OUT/sweep.log"
echo "sweep wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/sweep.log"
kill $SAMPLER
$PY - "$OUT/gpu_mem.csv" <<'EOF' | tee -a "$OUT/sweep.log"
import collections, sys
peak, at = collections.defaultdict(int), collections.defaultdict(set)
for line in open(sys.argv[1]):
    t, pid, mib = [s.strip() for s in line.split(",")]
    peak[pid] = max(peak[pid], int(mib))
    if pid != "total":
        at[t].add(pid)
print(f"GPU memory used, peak over the sweep: {peak.pop('total', '?')} MiB")
if peak:
    print(f"processes seen on the GPU: {len(peak)}; most at once: {max(map(len, at.values()))}; "
          f"peak MiB per process: {sorted(peak.values())}")
else:
    print("no per-process GPU memory readings (nvidia-smi --query-compute-apps gave none)")
EOF
$PY -m lradvisor compare --sweep-id gpu-auto --experiment gpu-check --output-dir /tmp/cmp 2>&1 | tail -30 | tee -a "$OUT/sweep.log"
cp "$STORE/mlflow.db" "$OUT/"  # the runs, for a look in the MLflow UI
step done
