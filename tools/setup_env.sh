#!/usr/bin/env bash
# Take a fresh machine to a working sasa-det environment in .venv at the repository root.
#
# Idempotent: a second run on a ready machine only checks and exits. The slow step is mmcv 2.1.0,
# which has no wheel for torch 2.14 on PyPI: it is compiled from its sdist (with ops, about 20-30
# minutes on 2 cores) once, and the wheel is cached in $SASA_DET_CACHE (default
# ~/.cache/sasa-det) for every later run and every other clone on this machine. mmcv's CUDA ops
# are built too when torch sees a GPU, or on any machine with nvcc when asked (no GPU needed):
#
#   SASA_DET_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 bash tools/setup_env.sh   # CUDA ops for H100/H200
#
# The cache folder then ends in -cuda<version>-sm<arch> (tools/cuda_build_env.py --help has the
# rules); otherwise mmcv's ops are CPU-only and the script says what that rules out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
CACHE="${SASA_DET_CACHE:-$HOME/.cache/sasa-det}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
STEP="starting"
START=$(date +%s)

say() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
on_error() { say "FAILED during step: $STEP (see the output above)"; }
trap on_error ERR
step() { STEP="$1"; say "$1"; }

pip_q() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

step "virtual environment in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

step "build tools (pip, setuptools>=77,<80 for mmcv's pkg_resources, wheel, ninja)"
if ! "$PY" -c "import ninja, wheel, setuptools as s, sys; v=tuple(map(int, s.__version__.split('.')[:2])); sys.exit(not (77,0) <= v < (80,0))" 2>/dev/null; then
    pip_q --upgrade pip 'setuptools>=77,<80' wheel ninja
fi

step "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION (from this machine's disk when present)"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('$TORCH_VERSION') and torchvision.__version__.startswith('$TORCHVISION_VERSION')))" 2>/dev/null; then
    pip_q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

step "mmcv $MMCV_VERSION with ops: CPU only, or CPU and CUDA?"
# tools/cuda_build_env.py decides (SASA_DET_CUDA=1 always, 0 never, unset when torch sees a GPU)
# and prints FORCE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST, CPATH/LIBRARY_PATH (torch's nvidia
# wheels' headers where the toolkit lacks them) and the wheel's tag; it stops on what is missing.
cuda_exports=$("$PY" "$ROOT/tools/cuda_build_env.py")
cuda_plan=$("$PY" "$ROOT/tools/cuda_build_env.py" --explain)
eval "$cuda_exports"
MMCV_CUDA_TAG="$SASA_DET_CUDA_TAG"
if [ "$FORCE_CUDA" = 1 ]; then
    say "building mmcv's $cuda_plan"
else
    say "mmcv gets CPU ops only ($cuda_plan;" \
        "SASA_DET_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 builds them without a GPU). Everything runs" \
        "on CPU, but on CUDA tensors mmcv's ops stop with 'implementation for device cuda:0 not" \
        "found': NMS at test time and RetinaNet's sigmoid focal loss in training. sasa_det's" \
        "own attention ops (C++ on CPU, Triton on CUDA) do not use mmcv."
fi
MMCV_WHEELS="$CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-cp311${MMCV_CUDA_TAG:+-$MMCV_CUDA_TAG}"
if "$PY" -c "import mmcv, mmcv.ops, sys; from mmcv.ops import get_compiling_cuda_version as v; sys.exit(mmcv.__version__ != '$MMCV_VERSION' or ('$MMCV_CUDA_TAG' != '' and v() == 'not available'))" 2>/dev/null; then
    say "mmcv $MMCV_VERSION already installed"
else
    wheel=$(ls "$MMCV_WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        step "mmcv $MMCV_VERSION: compiling from source, ONCE (about 20-30 minutes on 2 cores); cached in $MMCV_WHEELS"
        build=$(mktemp -d)
        "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
            --no-build-isolation -d "$build" "mmcv==$MMCV_VERSION"
        tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
        src="$build/mmcv-$MMCV_VERSION"
        # torch >= 2.10 headers need C++20; mmcv's setup.py pins -std=c++17 (or c++14).
        sed -i -e 's/-std=c++17/-std=c++20/g' -e 's/-std=c++14/-std=c++20/g' "$src/setup.py"
        mkdir -p "$MMCV_WHEELS"
        log="$build/build.log"
        say "compiler log: $log (progress below is ninja's [done/total] count)"
        # ninja prints "[i/n] ..." per object file (indented by pip -v): show the count every
        # 20 seconds when it moved.
        (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" \
            MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel -v --no-deps --no-build-isolation -w "$build/dist" . >"$log" 2>&1) &
        pid=$!
        last=""
        while kill -0 "$pid" 2>/dev/null; do
            sleep 20
            cur=$(grep -oE '^[[:space:]]*\[[0-9]+/[0-9]+\]' "$log" 2>/dev/null | tail -n 1 | tr -d '[:space:]' || true)
            if [ -n "$cur" ] && [ "$cur" != "$last" ]; then say "mmcv compile $cur"; last="$cur"; fi
        done
        if ! wait "$pid"; then
            tail -n 60 "$log"
            false
        fi
        cp "$build"/dist/mmcv-"$MMCV_VERSION"-*.whl "$MMCV_WHEELS"/
        wheel=$(ls "$MMCV_WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
        rm -rf "$build"
    else
        say "reusing cached wheel $wheel"
    fi
    pip_q "$wheel"
fi

step "mmengine, mmdet, pycocotools, timm, test tools, and sasa_det itself (editable)"
# Reinstall when setup.py changed since the last install (its requirements may have), or when the
# editable install points at another clone. Checked without importing sasa_det: a bug in the
# package is for the tests to report, not a reason to reinstall on every run.
STAMP="$VENV/.sasa-det-setup.sha256"
setup_hash=$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$setup_hash" ] || ! "$PY" - "$ROOT" <<'PY' 2>/dev/null
import importlib.util, os, sys
import mmdet, mmengine, pycocotools, pytest, timm  # noqa: F401
spec = importlib.util.find_spec('sasa_det')
sys.exit(not (spec and os.path.samefile(spec.submodule_search_locations[0],
                                        os.path.join(sys.argv[1], 'sasa_det'))))
PY
then
    pip_q --no-build-isolation -e "$ROOT[dev]"
    echo "$setup_hash" >"$STAMP"
fi

step "check: versions and that mmcv's compiled ops load"
"$PY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, timm, torch, torchvision
from mmcv.ops import get_compiling_cuda_version
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, mmcv {mmcv.__version__} "
      f"(ops for CUDA: {get_compiling_cuda_version()}), mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, timm {timm.__version__}")
PY
step "sasa_det's fused C++ CPU attention kernel (compiled once, then cached by torch)"
# Built here so that the first training run does not stop for it; where it cannot be built,
# sasa_det warns and uses its pure-PyTorch path, so that is reported and set-up goes on.
"$PY" - <<'PY'
import time
start = time.perf_counter()
from sasa_det.ops import cpu_kernel
if cpu_kernel.is_available():
    print(f"kernel ready ({time.perf_counter() - start:.0f} s)")
else:
    print("kernel unavailable: sasa_det will use the slower pure-PyTorch path (see the warning)")
PY
say "environment ready: $VENV (set-up took $(( $(date +%s) - START )) s in total)"
