#!/usr/bin/env bash
# The main job on a fresh machine: install, then serve the tiny model (or --model DIR) behind the
# OpenAI-compatible router on 127.0.0.1, until interrupted. Extra arguments go to `kubediffusion local`.
source "$(dirname "$0")/env.sh"
export HF_HUB_OFFLINE=1
ensure_venv dev,inference
exec kubediffusion local "$@"
