#!/usr/bin/env bash
# Run a command in the fetchjax image, with this working tree mounted at /opt/fetchjax (the editable install
# there runs your current code) and a runs/ directory for outputs; all GPUs when the host has nvidia-smi.
#
#   docker/dev.sh                                   # python -m fetchjax.doctor (the image's default command)
#   docker/dev.sh python -m fetchjax.profile envs
#   docker/dev.sh python -m fetchjax.train --run-dir runs/ppo
#   docker/dev.sh --build python -m pytest -q -m "not slow"     # rebuild the image first
#
# Environment: FETCHJAX_IMAGE (default fetchjax:dev), FETCHJAX_RUNS (host directory mounted at
# /opt/fetchjax/runs, default <repo>/runs), MUJOCO_GL (passed through when set).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${FETCHJAX_IMAGE:-fetchjax:dev}"
runs_dir="${FETCHJAX_RUNS:-$repo/runs}"

build=0
if [[ "${1:-}" == "--build" ]]; then
  build=1
  shift
fi

if ! command -v docker >/dev/null 2>&1; then
  echo "error: docker is not installed (https://docs.docker.com/engine/install/)" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "error: cannot reach the Docker daemon (is it running, and may this user use it?)" >&2
  exit 2
fi

if [[ $build == 1 ]] || ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "building $image from $repo/docker/Dockerfile ..." >&2
  DOCKER_BUILDKIT=1 docker build -f "$repo/docker/Dockerfile" -t "$image" "$repo"
fi

args=(--rm --init -w /opt/fetchjax -v "$repo:/opt/fetchjax")
mkdir -p "$runs_dir"
runs_dir="$(cd "$runs_dir" && pwd)"
if [[ "$runs_dir" != "$repo/runs" ]]; then
  args+=(-v "$runs_dir:/opt/fetchjax/runs")
fi
# Files written into the mounts belong to you, not root; HOME must then be somewhere writable.
args+=(--user "$(id -u):$(id -g)" -e HOME=/tmp)
if command -v nvidia-smi >/dev/null 2>&1; then
  args+=(--gpus all)
fi
if [[ -n "${MUJOCO_GL:-}" ]]; then
  args+=(-e "MUJOCO_GL=$MUJOCO_GL")
fi
if [[ -t 0 && -t 1 ]]; then
  args+=(-it)
fi

exec docker run "${args[@]}" "$image" "$@"
