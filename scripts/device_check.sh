#!/usr/bin/env bash
# Every GPU measurement of issue 12 in one go (docs/PERFORMANCE.md, "The device check"):
#   setup      install the wheels brought along (.whl/part*, made by shared/gpu/wheels.sh) with shared/gpu/setup.sh
#   doctor         python -m fetchjax.doctor --quick --warp
#   profile_warp   full env step of MJX-Warp at FETCHJAX_CHECK_SIZES envs, Reach and Push (python -m fetchjax.profile)
#   fidelity_warp  python -m parity --skip mjx: warp trajectories/observations/scripted push against the stock CPU
#                  gymnasium-robotics env replayed on this machine's CPU
#   ppo            python -m fetchjax.train (PPO, FetchReachDense-v4, the device's preset and `auto` backend)
#   profile_mjx    the same for MJX-JAX at FETCHJAX_CHECK_MJX_SIZES envs
#   fidelity_mjx   python -m parity --skip warp (MJX-JAX)
#   sac_push       a short SAC+HER FetchPush-v4 run
#   pixels_parity  issue 15: warp's batch-rendered 84x84 frames (inside the jitted step, on the GPU) vs the OpenGL
#                  frames of the same states (scripts/measure_pixels.py parity; side-by-side PNG)
#   pixels_rate    issue 15: rendered pixel env-steps/s vs num_envs, warp (84x84), beside the env without pixels
#   sac_pixels     issue 15: the book's ch9 Step 2 (preset book_pixels), 3 seeds, a short run
# in this order (most wanted first): a stage starts only with time left in the budget.
# Writes $OUT/<stage>.log, each tool's JSON, $OUT/stages.json and $OUT/summary.json, and prints a short table last.
#
#   OUT=/tmp/out bash scripts/device_check.sh                          # on the GPU machine (sizes: full)
#   FETCHJAX_CHECK_SIZE=small OUT=/tmp/dc bash scripts/device_check.sh  # CPU dry run of every stage, small sizes
#
# Knobs (environment): FETCHJAX_CHECK_SIZE=full|small, FETCHJAX_CHECK_BUDGET_S (total seconds for the stages after
# setup; default 540 full / 3600 small: a device command may run 600 s), FETCHJAX_CHECK_SIZES /
# FETCHJAX_CHECK_MJX_SIZES (profile num_envs, comma-separated), FETCHJAX_CHECK_STAGES (comma-separated subset, e.g.
# the stages a first call had no time for, in a second call with the same OUT: programs then load from its cache), FETCHJAX_CHECK_WARP (profile --warp knobs,
# e.g. "contacts_per_env=32,njmax=96,graph_mode=WARP"), FETCHJAX_GPU_SETUP (path of setup.sh), PYTHON (default python3).
# A stage that runs out of time is stopped (SIGTERM: the train CLI checkpoints and records `interrupted`); the
# later stages and the table still run. Exit status: 0 if every stage that ran finished with status 0.
set -u
PY=${PYTHON:-python3}  # the interpreter (default python3: the GPU image's, with setup.sh's PYTHONPATH)
cd "$(dirname "$0")/.."
OUT=${OUT:-device_check_$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SIZE=${FETCHJAX_CHECK_SIZE:-full}
case "$SIZE" in full|small) ;; *) echo "device_check: FETCHJAX_CHECK_SIZE must be full or small" >&2; exit 2;; esac
STAGES=${FETCHJAX_CHECK_STAGES:-setup,doctor,profile_warp,fidelity_warp,ppo,profile_mjx,fidelity_mjx,sac_push,pixels_parity,pixels_rate,sac_pixels}
START=$(date +%s)
STAGES_JSON="$OUT/stages.json"
echo "[]" > "$STAGES_JSON"

if [ "$SIZE" = full ]; then
  BUDGET=${FETCHJAX_CHECK_BUDGET_S:-540}
  SIZES=${FETCHJAX_CHECK_SIZES:-8192,32768}; MJX_SIZES=${FETCHJAX_CHECK_MJX_SIZES:-8192}
  PROFILE_STEPS=50; PARITY_ARGS=(--envs FetchReach-v4 FetchPush-v4 --episodes 200)
  PPO_ARGS=(--total-steps 1000000); SAC_ARGS=(--total-steps 200000)
  T_DOCTOR=90; T_PROFILE=150; T_FIDELITY=120; T_PPO=150; T_SAC=120
  PIXEL_SIZES=${FETCHJAX_CHECK_PIXEL_SIZES:-256,1024,4096}; PIXEL_SAC_ARGS=(--seeds 0-2 --total-steps 20000 --eval-episodes 20)
  T_PIXELS=150
else
  BUDGET=${FETCHJAX_CHECK_BUDGET_S:-3600}
  SIZES=${FETCHJAX_CHECK_SIZES:-4}; MJX_SIZES=${FETCHJAX_CHECK_MJX_SIZES:-4}
  PROFILE_STEPS=5; PARITY_ARGS=(--quick --envs FetchReach-v4 FetchPush-v4 --episodes 200)  # 3 pp needs 200
  PPO_ARGS=(--n-envs 4 --set n_steps=32 --set batch_size=64 --set n_epochs=1 --total-steps 256 --eval-episodes 4
            --video-episodes 0)
  SAC_ARGS=(--n-envs 2 --set buffer_size=1000 --set batch_size=32 --set learning_starts=100
            --set hidden_sizes=16,16 --total-steps 300 --eval-episodes 2 --video-episodes 0)
  T_DOCTOR=600; T_PROFILE=900; T_FIDELITY=1200; T_PPO=600; T_SAC=600
  PIXEL_SIZES=${FETCHJAX_CHECK_PIXEL_SIZES:-2}; T_PIXELS=600
  PIXEL_SAC_ARGS=(--seeds 0-1 --n-envs 2 --image-size 16 --set buffer_size=1000 --set batch_size=16 --set learning_starts=100
                  --set hidden_sizes=16,16 --total-steps 200 --eval-episodes 2 --video-episodes 0)
fi
WARP_KNOBS=()
[ -n "${FETCHJAX_CHECK_WARP:-}" ] && WARP_KNOBS=(--warp "$FETCHJAX_CHECK_WARP")

want() { case ",$STAGES," in *",$1,"*) return 0;; *) return 1;; esac; }

# stage NAME TIMEOUT_S CMD...: runs CMD with its output in $OUT/NAME.log, within the time left of the budget
RC_ALL=0
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "device_check: $name skipped (time budget spent)"
    "$PY" - "$STAGES_JSON" "$name" <<'EOF'
import json, sys
p, name = sys.argv[1:]
d = json.load(open(p)); d.append({"stage": name, "rc": None, "seconds": 0, "skipped": "time budget spent"})
json.dump(d, open(p, "w"), indent=1)
EOF
    return
  fi
  echo "device_check: $name (at most ${limit} s) ..."
  local t0=$(date +%s)
  timeout -s TERM -k 30 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  [ $rc -ne 0 ] && RC_ALL=1
  echo "device_check: $name rc=$rc in ${dt} s$([ $rc -eq 124 ] && echo ' (stopped: out of time)')"
  "$PY" - "$STAGES_JSON" "$name" "$rc" "$dt" <<'EOF'
import json, sys
p, name, rc, dt = sys.argv[1:]
d = json.load(open(p)); d.append({"stage": name, "rc": int(rc), "seconds": int(dt), "timed_out": rc in ("124", "137")})
json.dump(d, open(p, "w"), indent=1)
EOF
}

# --- setup: wheels brought along (offline GPU machine); on a machine with fetchjax installed there is nothing to do
if want setup; then
  if ls .whl/part*/ >/dev/null 2>&1; then
    SETUP=${FETCHJAX_GPU_SETUP:-}
    for c in "$SETUP" ./setup.sh ../shared/gpu/setup.sh /work/shared/gpu/setup.sh; do
      [ -n "$c" ] && [ -f "$c" ] && { SETUP=$c; break; }
    done
    if [ -f "$SETUP" ]; then
      echo "device_check: setup: sourcing $SETUP"
      # shellcheck disable=SC1090
      . "$SETUP" > "$OUT/setup.log" 2>&1 || { echo "device_check: setup FAILED (see $OUT/setup.log)"; RC_ALL=1; }
      tail -2 "$OUT/setup.log"
    else
      echo "device_check: .whl/ is here but no setup.sh (set FETCHJAX_GPU_SETUP)"; RC_ALL=1
    fi
  else
    echo "device_check: setup: no .whl/ here; using the installed packages" | tee "$OUT/setup.log"
  fi
  "$PY" -c "import jax, mujoco, warp, fetchjax; print('jax', jax.__version__, jax.devices(), 'mujoco', mujoco.__version__, 'warp', warp.__version__)" \
    >> "$OUT/setup.log" 2>&1 || { echo "device_check: imports failed (see $OUT/setup.log)"; RC_ALL=1; }
fi
export PYTHONUNBUFFERED=1
# compiled programs shared by the stages (a second run of the same program loads it)
export FETCHJAX_COMPILE_CACHE=${FETCHJAX_COMPILE_CACHE:-$OUT/jax_cache}

profile() {  # profile NAME BACKEND SIZES
  stage "$1" "$T_PROFILE" "$PY" -m fetchjax.profile envs --backends "$2" --envs FetchReach-v4,FetchPush-v4 \
    --num-envs "$3" --steps "$PROFILE_STEPS" --env-step-only --gym-steps 500 "${WARP_KNOBS[@]}" --out "$OUT/$1"
}
fidelity() {  # fidelity NAME SKIPPED_BACKEND (float32 matmuls at full precision: no TF32 in the parity numbers)
  stage "$1" "$T_FIDELITY" env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m parity \
    --only observations,trajectories,scripted --skip "$2" "${PARITY_ARGS[@]}" --out "$OUT/$1"
}
want doctor && stage doctor "$T_DOCTOR" "$PY" -m fetchjax.doctor --quick --warp --out "$OUT/doctor"
want profile_warp && profile profile_warp warp "$SIZES"
want fidelity_warp && fidelity fidelity_warp mjx
want ppo && stage ppo "$T_PPO" "$PY" -m fetchjax.train "${PPO_ARGS[@]}" --run-dir "$OUT/ppo"
want profile_mjx && profile profile_mjx mjx "$MJX_SIZES"
want fidelity_mjx && fidelity fidelity_mjx warp
want sac_push && stage sac_push "$T_SAC" "$PY" -m fetchjax.train --algo sac --her --env FetchPush-v4 \
  "${SAC_ARGS[@]}" --run-dir "$OUT/sac_push"
want pixels_parity && stage pixels_parity "$T_PIXELS" "$PY" scripts/measure_pixels.py parity --size 84 \
  --png "$OUT/pixels_parity.png" --out "$OUT/pixels_parity.json"
want pixels_rate && stage pixels_rate "$T_PIXELS" "$PY" scripts/measure_pixels.py rate --backends warp \
  --num-envs "$PIXEL_SIZES" --out "$OUT/pixels_rate.json"
# The book's ch9 Step 2 (preset book_pixels: ManipulationExtractor in the critic, 4-frame stacks, no DrQ, buffer
# 500k, HER k 8), 3 seeds vmapped on the GPU: its training rate gives the wall-clock of the 5M-step run.
want sac_pixels && stage sac_pixels "$T_SAC" "$PY" -m fetchjax.train --algo sac --her --env FetchPush-v4 \
  --preset book_pixels --backend warp "${PIXEL_SAC_ARGS[@]}" --run-dir "$OUT/sac_pixels"

"$PY" scripts/device_check_summary.py "$OUT" "$SIZE" "$(( $(date +%s) - START ))"
exit $RC_ALL
