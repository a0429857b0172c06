#!/usr/bin/env bash
# ALM learning check and ALM/MBPO bench on a GPU machine, in one command that fits 10 minutes.
#
# Trains ALM, ALM without Dyna and Table-1 SAC at replay ratio 1 on gym:HalfCheetah-v5 (2 seeds,
# 30,000 env steps each; three processes sharing the GPU), then benches ALM and MBPO on the same
# machine. Everything lands in $OUT/alm_check.tgz (metrics, configs, run.json, bench JSON, logs).
# Run from the repository root on the device (see ../shared/device/README.md):
#   bash .devsite/install.sh && export PYTHONPATH=/tmp/site:$PWD/src && bash scripts/device_alm_check.sh
# (dynalab sets MUJOCO_GL to a backend the machine has; the H200 image has no libEGL, where
# MUJOCO_GL=egl made every run fail at import, so the recorded run used MUJOCO_GL=disable.)
set -uo pipefail
OUT=${OUT:-/tmp/out}
WORK=/tmp/alm_check
mkdir -p "$WORK" "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
STEPS=${STEPS:-30000}
LIMIT=${LIMIT:-380}   # seconds the trainings may take (ALM took 346 s on an H200); what they logged by then comes back
nvidia-smi -L > "$WORK/device.txt" 2>&1
python -c "import jax; print(jax.devices())" >> "$WORK/device.txt" 2>&1
common=(--env gym:HalfCheetah-v5 --seeds 2 --steps "$STEPS" --checkpoint-every 0 --no-progress)
timeout "$LIMIT" python -m dynalab train --algo alm "${common[@]}" --out "$WORK/runs/alm" > "$WORK/alm.log" 2>&1 &
timeout "$LIMIT" python -m dynalab train --algo alm-nodyna "${common[@]}" --out "$WORK/runs/alm-nodyna" > "$WORK/alm-nodyna.log" 2>&1 &
timeout "$LIMIT" python -m dynalab train --algo sac --replay-ratio 1 "${common[@]}" --out "$WORK/runs/sac-rr1" > "$WORK/sac-rr1.log" 2>&1 &
wait
for algo in alm mbpo; do
  timeout 90 python -m dynalab bench --algo "$algo" --env gym:HalfCheetah-v5 --seeds 1 --steps 50 \
    --json "$WORK/bench-$algo.json" > "$WORK/bench-$algo.log" 2>&1
done
cd "$WORK" && tar czf "$OUT/alm_check.tgz" --exclude='checkpoints' device.txt *.log bench-*.json runs
ls -la "$OUT"
