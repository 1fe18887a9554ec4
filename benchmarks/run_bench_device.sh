#!/usr/bin/env bash
# One-shot JAX kernel benchmark on a GPU machine (the device tool runs it from the repo root).
#
#   bash benchmarks/run_bench_device.sh            # writes $OUT/h100-jax.csv (+ .meta.yaml)
#
# Non-quick configuration sized to finish within ~6 minutes on one H100: the full grid
# (Llama-3.1-8B/70B GEMMs at TP 1-8 x m = 1..16384 in BF16 and FP8, 1 MB-1 GB copies,
# GQA prefill/decode attention, collectives when there are several GPUs) is capped by
# --time-budget (default 300 s of measuring, split across the kinds; cases run coarse-to-fine
# so a cut grid stays even). About 30 s more go to start-up and the last case of each kind.
# Rows are written as they are measured, so even a killed run leaves its finished rows.
# Override with BENCH_BUDGET_S=<seconds>, BENCH_NAME=<file stem>, PYTHON=<interpreter>.
set -uo pipefail

OUT="${OUT:-out}"
PY="${PYTHON:-python3}"
NAME="${BENCH_NAME:-h100-jax}"
BUDGET="${BENCH_BUDGET_S:-300}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

echo "== nvidia-smi"
nvidia-smi || echo "(nvidia-smi not available)"
echo "== jax devices"
PYTHONPATH=. "$PY" - <<'PY' || exit 1
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend())
for d in jax.devices():
    print(d, "|", d.device_kind, "| compute capability", getattr(d, "compute_capability", None))
PY

echo "== bench (time budget ${BUDGET} s)"
start=$(date +%s)
PYTHONPATH=. "$PY" -m jaxplan.cli bench --out "$OUT/$NAME.csv" --time-budget "$BUDGET" \
    --no-progress 2>&1 | tee "$OUT/$NAME.log"
rc=${PIPESTATUS[0]}
echo "== done in $(( $(date +%s) - start )) s, exit $rc"
echo "rows per table:"
cut -d, -f1 "$OUT/$NAME.csv" | sort | uniq -c
exit "$rc"
