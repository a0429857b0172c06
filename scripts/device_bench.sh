#!/usr/bin/env bash
# The GPU measurement of issue 13 in one command, sized for one 10-minute device run (about 8 min on
# one H100/H200): scaling curves of SAC (replay ratio 20) and MBPO (the STFL paper's defaults, model
# refits amortised into the curve) on dmc:humanoid-stand at 1, 6 and 32 seeds, and MBPO with the
# perfect model at 6 seeds; each with compile time and peak device memory. Writes OUT/{sac,mbpo,
# mbpo-perfect}.json and .png (command, commit, date and device inside) and prints the tables.
#
# On the device machine (../shared/device/README.md: carry .devsite, the image's own jax):
#   bash .devsite/install.sh && export PYTHONPATH=/tmp/site:$PWD/src MUJOCO_GL=egl PYTHON=python \
#     DYNALAB_COMMIT=<sha> && bash scripts/device_bench.sh $OUT
# Here, the same script at toy sizes (what tests/test_device_script.py runs, so it cannot rot):
#   PYTHON=.venv/bin/python scripts/device_bench.sh /tmp/device-dry-run --tiny
set -euo pipefail
out="${1:?usage: scripts/device_bench.sh OUT_DIR [--tiny]}"
tiny="${2:-}"
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

if [[ "$tiny" == "--tiny" ]]; then
  # Every command once, cheaply: the curve's two-count path with SAC, one count for the others.
  env="gym:InvertedPendulum-v5"; counts=(1 2); mbpo_counts=(1); perfect_counts=(1)
  common=(--steps 3 --warmup-steps 64 --batch-size 16 --sac.hidden 16 16 --eval-episodes 1 --eval-every 1000
          --checkpoint-every 1000)
  mbpo=(--model.width 16 --model.refit-steps 5 --rollouts-per-step 8 --model-refit-every 250)
elif [[ -z "$tiny" ]]; then
  env="dmc:humanoid-stand"; counts=(1 6 32); mbpo_counts=(1 6 32); perfect_counts=(6)
  # 30 timed steps per count after 1,000 random ones; everything else at the papers' defaults.
  # No checkpoint timing: at full 1M buffers it writes every block once (32 MBPO seeds: about 40 GB),
  # more than this run's disk and time; its cost is bytes per interval, measured on the CPU machine.
  common=(--steps 30 --warmup-steps 1000 --checkpoint-every 0)
  mbpo=()
else
  echo "scripts/device_bench.sh: the second argument may only be --tiny, got '$tiny'." >&2
  exit 2
fi

run() {  # name, then dynalab bench flags
  local name="$1"; shift
  echo "== $name"
  "$python" -m dynalab bench --env "$env" "${common[@]}" "$@" --json "$out/$name.json" --plot "$out/$name.png"
}
run sac --algo sac --seed-counts "${counts[@]}"
run mbpo --algo mbpo "${mbpo[@]}" --seed-counts "${mbpo_counts[@]}"
run mbpo-perfect --algo mbpo --perfect-model "${mbpo[@]}" --seed-counts "${perfect_counts[@]}"
echo "wrote $out/{sac,mbpo,mbpo-perfect}.{json,png}"
