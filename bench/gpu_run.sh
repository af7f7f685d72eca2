#!/usr/bin/env bash
# One prepared GPU session (device tool): correctness, speed and λ calibration. Results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/bench PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
V="python3 -m vsae.cli"
python3 bench/gpu_check.py 2>&1 | tee $OUT/gpu_check.log
python3 bench/topk_sparse.py --device cuda --batch 4096 2>&1 | tee $OUT/topk_sparse.log
python3 bench/vsae_multi_cost.py --device cuda --batch 4096 --sizes 4096,16384,65536 2>&1 | tee $OUT/vsae_multi.log
python3 bench/reader_throughput.py --store .gpu/acts --device cuda 2>&1 | tee $OUT/reader.log
$V synthetic --store /tmp/syn --d 48 --atoms 96 --active 3 --tokens 100000 >/dev/null 2>&1
$V train --store /tmp/syn --config tests/data/recovery_base.toml --device cuda --out /tmp/rec 2>&1 | tail -2
$V eval /tmp/rec --json $OUT/recovery_gpu.json 2>&1 | grep -E "true-atom|FVE"
(time $V train --store .gpu/acts --config bench/calibrate_l1.toml --device cuda --out /tmp/cal) 2>&1 | tail -5
$V eval /tmp/cal --no-ce --json $OUT/calib.json > /dev/null 2>&1
python3 -c "
import json
for r in json.load(open('$OUT/calib.json')): print(r['checkpoint'].split('/')[-1], 'L0 %.1f FVE %.4f alive %.3f' % (r['l0'], r['fve'], r['frac_alive']))
" | tee $OUT/calib.txt
# issue #8: the L1 and JumpReLU families at ≥ 1M tokens per SAE (an hour and a half on 2 CPU cores)
$V train --store .gpu/acts --config bench/sweep_l1_1m.toml --device cuda --out /tmp/l1 2>&1 | tail -16 | tee $OUT/l1_train.log
$V eval /tmp/l1 --ce-windows 24 --json $OUT/l1_1m.json > /dev/null 2>&1
# issue #13: topk F = 16,384 from the store, one SAE (tokens/s in the summary table)
$V train --store .gpu/acts --arch topk --dict-size 16384 --k 32 --batch-size 4096 --tokens 20000000 --device cuda --out /tmp/t16k 2>&1 | tail -6 | tee $OUT/topk16k.log
# issue #13: harvest ÷ bare forward with a model of SmolLM2's shape and random weights (no weights on the
# device). Prepare here: `python bench/harvest_overhead.py --save-shape .gpu/smollm2-shape` (3.4 MB, carried
# with .gpu).
python3 bench/harvest_overhead.py --random-init .gpu/smollm2-shape --device cuda --tokens 200000 --batch-size 64 2>&1 | tail -4 | tee $OUT/harvest_overhead.log
# issue #13: torch.compile of the step on the GPU (eager first), from 60k store tokens
python3 bench/peers.py dump --store .gpu/acts --tokens 60000 --out /tmp/acts.npy > /dev/null
for arch in topk standard; do for mode in eager compile; do python3 bench/compile_step.py /tmp/acts.npy $arch $mode cuda 2>&1 | tail -1 | tee -a $OUT/compile.log; done; done
