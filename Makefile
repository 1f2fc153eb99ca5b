# ComfyUI-PortraitTalk — two entry points (see README):
#   make demo IMAGE=portrait.png AUDIO=speech.wav OUT=talking.mp4
#   make test
# and visual dubbing: make dub VIDEO=clip.mp4 AUDIO=speech.wav OUT=dubbed.mp4 [MODE=preview]
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

.PHONY: setup demo dub test bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	@if [ -z "$(IMAGE)" ] || [ -z "$(AUDIO)" ]; then \
	  echo "make demo needs a portrait and a speech file: make demo IMAGE=face.png AUDIO=speech.wav OUT=out.mp4" >&2; \
	  echo "(defaults are $(SHARED)/photos/astronaut.png and $(SHARED)/audio/jfk.flac, not found here)" >&2; exit 2; fi
	$(PY) scripts/run_workflow.py $(WORKFLOW) --image "$(IMAGE)" --audio "$(AUDIO)" --out "$(OUT)"

# visual dubbing, CPU preview path (workflows/dubbing.json). MODE=diffusion is not available yet.
dub: setup
	@if [ "$(MODE)" != "preview" ]; then echo "make dub: MODE=$(MODE) is not available yet; use MODE=preview" >&2; exit 2; fi
	@if [ -z "$(VIDEO)" ] || [ -z "$(AUDIO)" ]; then \
	  echo "make dub needs a video and a speech file: make dub VIDEO=clip.mp4 AUDIO=speech.wav OUT=dubbed.mp4" >&2; exit 2; fi
	$(PY) scripts/run_workflow.py workflows/dubbing.json --video "$(VIDEO)" --audio "$(AUDIO)" \
	  --out "$(if $(filter out/talking_photo.mp4,$(OUT)),out/dubbed.mp4,$(OUT))"

# pytest exit 5 (no test collected) fails like any other failure, with a message; make itself exits 2 on any
# failing recipe, so callers see 0 or 2, never pytest's own status.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -ne 5 ] || echo "make test: pytest collected no tests" >&2; exit $$rc; }

bench: setup
	$(PY) bench/bench_cpu.py

clean:
	rm -rf .venv out .pytest_cache
