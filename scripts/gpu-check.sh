#!/usr/bin/env bash
# The GPU path, measured in one command (docs/performance.md; the results go under docs/bench/).
#
#   bash scripts/gpu-check.sh [OUT_DIR]          on a node with one NVIDIA GPU (about 8 minutes on an H100/H200)
#   bash scripts/gpu-check.sh --rehearse [OUT]   every step on the CPU at toy sizes (checks the script itself)
#
# Steps, each printed as it starts, each writing text and JSON into OUT_DIR
# (default docs/bench/gpu-<date>):
#   machine     GPU, driver, CUDA, cuDNN, torch (machine.json)
#   tests       the CUDA tests: pytest -m cuda (tests.txt, tests.xml)
#   bench       python -m kdsweep bench --pack-sizes 1 4 8 at full size, config.yaml's defaults
#               (runtime.deterministic true) (bench.txt, bench.json)
#   fast        the same training and distillation rows with runtime.deterministic=false (cuDNN
#               autotuning): what determinism costs (bench-fast.txt, bench-fast.json)
#   parity      a short training run of each student on the bundled digits in fp32 and in bf16,
#               same seeds (parity/, and in summary.json)
#   summary     one table of all of it (summary.txt, summary.json)
# GPU_CHECK_STEPS="bench fast" runs only those steps (a rerun of what failed, within a lease).
#
# It installs nothing beyond `pip install -e '.[test]'`, and only when kdsweep is not importable
# from this checkout already. Without a visible GPU it stops at once with one sentence (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."

rehearse=0
if [[ "${1:-}" == "--rehearse" ]]; then
    rehearse=1
    shift
fi
out=${1:-docs/bench/gpu-$(date +%Y%m%d)}
python=${PYTHON:-python3}
steps=${GPU_CHECK_STEPS:-machine tests bench fast parity summary}
started=$SECONDS

say() { printf '[gpu-check %4ds] %s\n' "$((SECONDS - started))" "$*"; }
wants() { [[ " $steps " == *" $1 "* ]]; }

if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "gpu-check: $python cannot import torch; activate the environment that has PyTorch (or set PYTHON)" >&2
    exit 1
fi
if [[ $rehearse == 0 ]] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: no CUDA GPU is visible here (torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); run it on a GPU node, or use --rehearse to check the script on the CPU" >&2
    exit 1
fi
if ! "$python" - <<'EOF' 2>/dev/null
import pathlib, sys
import kdsweep
sys.exit(0 if pathlib.Path(kdsweep.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()) else 1)
EOF
then
    say "installing this checkout: pip install -e '.[test]'"
    "$python" -m pip install -q -e '.[test]'
fi

mkdir -p "$out"
export PYTHONUNBUFFERED=1
kdsweep=("$python" -m kdsweep)
if [[ $rehearse == 1 ]]; then
    device=(runtime.device=cpu runtime.threads=1)
    bench_size=(--quick --device cpu --teacher mobilenet_v3_small --students mobilenet_v3_small --image-size 16)
    parity_epochs=1
    seeds="0"
else
    device=(runtime.device=cuda)
    bench_size=(--device cuda)
    parity_epochs=15
    seeds="0 1 2"
fi

if wants machine; then
    say "machine"
    "$python" scripts/gpu_check_report.py machine "$out/machine.json"
fi

if wants tests; then
    say "CUDA tests (pytest -m cuda)"
    # a skipped CUDA test counts as not passed in the summary: on a GPU node every one must run
    "$python" -m pytest -m cuda -p no:cacheprovider -rs --junitxml "$out/tests.xml" tests 2>&1 \
        | tee "$out/tests.txt" || say "CUDA tests FAILED (see $out/tests.txt)"
fi

if wants bench; then
    say "benchmark, full size, pack sizes 1 4 8 (runtime.deterministic=true)"
    "${kdsweep[@]}" bench "${bench_size[@]}" --pack-sizes 1 4 8 --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
fi

if wants fast; then
    say "benchmark, training and distillation with runtime.deterministic=false (cuDNN autotuning)"
    "${kdsweep[@]}" bench "${bench_size[@]}" --only train distill --pack-sizes 1 --json "$out/bench-fast.json" \
        runtime.deterministic=false 2>&1 | tee "$out/bench-fast.txt"
fi

if wants parity; then
    say "bf16 against fp32: each student on the digits, $parity_epochs epochs, seeds $seeds"
    work="$out/parity"
    mkdir -p "$work"
    common=(--config config.yaml --config studies/demo.yaml)
    settings=("${device[@]}" "training.max_epochs=$parity_epochs" "training.early_stopping_patience=$parity_epochs")
    "${kdsweep[@]}" stats "${common[@]}" --out "$work/stats.json" "${settings[@]}" > "$work/stats.log"
    for student in resnet18 mobilenet_v3_small; do
        # the runs of one student side by side: each is too small to fill the GPU
        for precision in fp32 bf16; do
            for seed in $seeds; do
                name="${student}_${precision}_seed$seed"
                "${kdsweep[@]}" train "${common[@]}" --role baseline --model "$student" --seed "$seed" \
                    --stats "$work/stats.json" --out "$work/runs/$name" \
                    "${settings[@]}" "runtime.precision=$precision" > "$work/$name.log" 2>&1 &
            done
        done
        wait
        for log in "$work/${student}"_*.log; do say "  $(basename "$log" .log): $(tail -n 1 "$log")"; done
    done
fi

if wants summary; then
    say "summary"
    "$python" scripts/gpu_check_report.py summary "$out" | tee "$out/summary.txt"
fi
say "done: $out ($((SECONDS - started)) s)"
