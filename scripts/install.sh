#!/usr/bin/env bash
# Idempotent install of ttd_d2 and its dependencies into the active Python.
#
#   PYTHON=python3 bash scripts/install.sh
#
# 1. torch + torchvision (TORCH_SPEC), unless a working pair is already importable;
# 2. detectron2: skipped if importable; else the official repository (when reachable);
#    else the PyPI sdist pb1-detectron2==0.6 (same Python code as the v0.6 tag),
#    installed pure-Python after scripts/patch_detectron2_v06.py applies its fixes;
# 3. `pip install -e .` (open_clip_torch, fvcore, matplotlib, pycocotools, nltk, opencv-python-headless).
# Re-running it installs nothing that already works.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
D2_GIT=${D2_GIT:-"git+https://github.com/facebookresearch/detectron2.git"}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check "$@"; }

if "$PYTHON" -c "import torch, torchvision; torchvision.ops.nms" >/dev/null 2>&1; then
  echo "[install] torch $("$PYTHON" -c 'import torch; print(torch.__version__)') present"
else
  echo "[install] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi

if "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
  echo "[install] detectron2 present"
elif [ "${D2_FROM_GIT:-auto}" != 0 ] && timeout 10 git ls-remote https://github.com/facebookresearch/detectron2.git HEAD >/dev/null 2>&1; then
  echo "[install] detectron2 from its official repository"
  pip_install --no-build-isolation "$D2_GIT"
else
  echo "[install] GitHub unreachable: detectron2 0.6 from the PyPI sdist, pure Python"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sdist=$("$PYTHON" "$HERE/fetch_sdist.py" pb1-detectron2 0.6 "$tmp")
  tar xzf "$sdist" -C "$tmp"
  "$PYTHON" "$HERE/patch_detectron2_v06.py" "$tmp/pb1-detectron2-0.6"
  pip_install --no-build-isolation "$tmp/pb1-detectron2-0.6"
fi

pip_install -e "$ROOT"
"$PYTHON" -c "import detectron2, open_clip, ttd_d2; print('[install] ok: detectron2', detectron2.__version__, 'open_clip', open_clip.__version__)"
