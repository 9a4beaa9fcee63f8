#!/usr/bin/env bash
# GPU check for the device machine (NVIDIA H200, Python 3.12 with CUDA torch, no internet); about 2-5 minutes.
#   loadtest/gpu_check.sh prepare [--with-triton] [--build-dir DIR]  # CPU host, once: build/gpu-bundle/ (<= 64 MiB)
#   loadtest/gpu_check.sh run [--skip-triton]                        # device, with build/gpu-bundle carried
# "run" installs nothing system-wide: the bundle's wheels go to a temporary folder on PYTHONPATH, and the
# veil.* packages are mapped onto this checkout with symlinks (no pip install -e, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${VEIL_GPU_BUNDLE:-build/gpu-bundle}
cmd=${1:-run}; shift || true
case "$cmd" in
    prepare)
        export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
        exec "${VEIL_VENV:-.venv}/bin/python" -m veil.loadtest.gpu_check prepare --bundle "$BUNDLE" "$@"
        ;;
    run)
        PY=${PYTHON:-python3}
        [[ -f "$BUNDLE/manifest.json" ]] || { echo "no $BUNDLE/manifest.json: run '$0 prepare' on the host" >&2; exit 2; }
        work=$(mktemp -d /tmp/veil-gpu-check.XXXXXX)
        mkdir -p "$work/src/veil" "$work/site"
        cp veil/*.py "$work/src/veil/"  # the package root (veil.wire, ...); each other folder is veil.<folder>
        for folder in python_backend export model_repository serving client privacy loadtest; do
            ln -s "$PWD/$folder" "$work/src/veil/$folder"
        done
        shopt -s nullglob
        wheels=("$BUNDLE"/wheels/*.whl)
        if ((${#wheels[@]})); then
            # small pure helpers (safetensors, requests, ...); the bundle never carries torch or numpy
            "$PY" -m pip install -q --no-index --no-deps --target "$work/site" "${wheels[@]}" \
                || echo "[gpu-check] pip could not unpack the bundled wheels; continuing with what is installed" >&2
        fi
        export PYTHONPATH="$work/src:${PYTHONPATH:+$PYTHONPATH:}$work/site"
        # python -m puts the working directory first on sys.path, where ./veil holds only the
        # package root: PYTHONSAFEPATH (3.11+) leaves it out, so veil.* resolves through $work/src.
        export PYTHONSAFEPATH=1
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
        timeout 290 "$PY" -m veil.loadtest.gpu_check run --bundle "$BUNDLE" "$@"
        ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
