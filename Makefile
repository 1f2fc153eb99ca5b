# ComfyUI-PortraitTalk — two entry points (see README):
#   make demo IMAGE=portrait.png AUDIO=speech.wav OUT=talking.mp4
#   make test
# and visual dubbing: make dub VIDEO=clip.mp4 AUDIO=speech.wav OUT=dubbed.mp4 [MODE=preview|diffusion]
SHELL := /bin/bash
PY := .venv/bin/python
SHARED ?= $(or $(PTALK_SHARED_DATA),../shared/data)
IMAGE ?= $(wildcard $(SHARED)/photos/astronaut.png)
AUDIO ?= $(wildcard $(SHARED)/audio/jfk.flac)
OUT ?= out/talking_photo.mp4
WORKFLOW ?= workflows/talking_photo.json
PYTEST_ARGS ?=

VIDEO ?= $(wildcard $(SHARED)/video/lbax4n.mpg)
MODE ?= preview
MODELS ?= $(PTALK_MODELS_DIR)

.PHONY: setup demo dub test bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	@if [ -z "$(IMAGE)" ] || [ -z "$(AUDIO)" ]; then \
	  echo "make demo needs a portrait and a speech file: make demo IMAGE=face.png AUDIO=speech.wav OUT=out.mp4" >&2; \
	  echo "(defaults are $(SHARED)/photos/astronaut.png and $(SHARED)/audio/jfk.flac, not found here)" >&2; exit 2; fi
	$(PY) scripts/run_workflow.py $(WORKFLOW) --image "$(IMAGE)" --audio "$(AUDIO)" --out "$(OUT)"

# visual dubbing. MODE=preview (default): workflows/dubbing_long.json, the streamed CPU preview (any container,
# long/HD clips in bounded memory). MODE=diffusion: workflows/dubbing_diffusion.json on your weights: MODELS = a
# ComfyUI models folder; CKPT / IDENTITYNET / ANIMATENET override the workflow's file names; ARGS go to
# scripts/run_workflow.py (e.g. ARGS='--set PTalkFaceEmbed.backend=dlib').
dub: setup
	@if [ "$(MODE)" != "preview" ] && [ "$(MODE)" != "diffusion" ]; then \
	  echo "make dub: MODE must be preview or diffusion, not $(MODE)" >&2; exit 2; fi
	@if [ -z "$(VIDEO)" ] || [ -z "$(AUDIO)" ]; then \
	  echo "make dub needs a video and a speech file: make dub VIDEO=clip.mp4 AUDIO=speech.wav OUT=dubbed.mp4" >&2; exit 2; fi
	@if [ "$(MODE)" = "diffusion" ] && [ -z "$(MODELS)" ]; then \
	  echo "make dub MODE=diffusion needs weights: MODELS=/path/to/ComfyUI/models holding checkpoints/ (SD1.5)," >&2; \
	  echo "ipadapter/ or portraittalk/ (IdentityNet / IP-Adapter FaceID), portraittalk/ (AnimateNet) and" >&2; \
	  echo "insightface/models/antelopev2; CKPT=, IDENTITYNET=, ANIMATENET= name other files. Or use MODE=preview." >&2; exit 2; fi
	$(PY) scripts/run_workflow.py workflows/$(if $(filter diffusion,$(MODE)),dubbing_diffusion,dubbing_long).json \
	  --video "$(VIDEO)" --audio "$(AUDIO)" --out "$(if $(filter out/talking_photo.mp4,$(OUT)),out/dubbed.mp4,$(OUT))" \
	  $(if $(filter diffusion,$(MODE)),--models-dir "$(MODELS)") \
	  $(if $(CKPT),--set "CheckpointLoaderSimple.ckpt_name=$(CKPT)") \
	  $(if $(IDENTITYNET),--set "PTalkIdentityNetLoader.weights=$(IDENTITYNET)") \
	  $(if $(ANIMATENET),--set "PTalkAnimateNetLoader.weights=$(ANIMATENET)") $(ARGS)

# The suite on each ComfyUI (scripts/test_matrix.sh): the vendored 0.3.75 in .venv and, when ../shared/comfyui is
# there, ComfyUI 0.33 in .venv-comfy033; only PTALK_COMFYUI_DIR's or the host's ComfyUI when either is set.
# pytest exit 5 (no test collected) fails like any other failure, with a message; make itself exits 2 on any
# failing recipe, so callers see 0 or 2, never pytest's own status.
test: setup
	@bash scripts/test_matrix.sh $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_cpu.py

clean:
	rm -rf .venv .venv-comfy033 out .pytest_cache
