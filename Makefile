# Face-mask detection: one entry point for set-up, the pipeline, the tests and the tools.
# `make run`: set up, run the pipeline on the offline data, then serve the champion model.
# `make test`: set up, bring the pipeline up to date, run the tests (CI runs this).
SHELL := /bin/bash
.DEFAULT_GOAL := help
SCREENSHOT_TESTS := tests/test_service.py::test_camera_page_in_headless_chromium \
  tests/test_cameras.py::test_the_served_bento_pulls_its_cameras_and_shows_them_on_the_grid_page \
  tests/test_pipeline.py::test_mlflow_ui_opens_on_the_training_runs

UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen
# Offline mirror of the datasets and detector weights (docs/pipeline.md). Defaults to ../shared when it
# exists; set FACEMASK_MIRROR= (empty) to download from the public sources instead.
FACEMASK_MIRROR ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared),)
export FACEMASK_MIRROR
OVERRIDES ?=

.PHONY: help setup curl params check-params pipeline run retrain test test-fast lint format mlflow-ui mlflow-server postgres proxy mqtt-broker rtsp-server container clean bento-models serve bento bench-latency scenes bench bench-classifiers bench-quantization bench-runtimes bench-cameras soak browser stream compliance bench-stream loadtest api-key audit bench-seeds bench-peers bench-camera-like bench-front bench-profiles docs docs-build screenshots

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: ## install uv if missing, then the locked environment (.venv), compiled to bytecode
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@# --compile-bytecode: every stage, server and test subprocess imports torch, timm, mlflow and
	@# bentoml afresh; without .pyc files (PYTHONDONTWRITEBYTECODE=1 in many containers) each import
	@# recompiles them: 42 s instead of 14 to import the promote stage here, once, 80 s to compile
	$(UV) sync --frozen --python 3.11 --compile-bytecode

params: ## compose conf/ (+ OVERRIDES="key=value ...") into params.yaml
	$(RUN) python -m facemask.config $(OVERRIDES)

check-params: ## fail if params.yaml is out of date with conf/
	$(RUN) python -m facemask.config --check

pipeline: ## dvc repro: ingest, crop, augment, train, evaluate, promote, scenes, detectors
	@if [ -n "$$FACEMASK_MIRROR" ]; then echo "data and weights from the offline mirror $$FACEMASK_MIRROR"; \
	 else echo "FACEMASK_MIRROR is empty: downloading the public sources"; fi
	$(RUN) dvc repro
	$(RUN) python -m facemask.classification_metrics reports/metrics.json

run: setup pipeline serve ## set up, run the pipeline on the offline data, then serve the champion

retrain: ## FROM=<service URL or its feedback folder>: pull its reviewed alerts, re-run the pipeline (docs/operations.md)
	@if [ -z "$(FROM)" ]; then echo "make retrain FROM=<the service's URL (key in FACEMASK_API_KEY), or its feedback" \
	  "folder (stream.feedback.dir, or feedback/ beside its event file)>" >&2; exit 2; fi
	FACEMASK_FEEDBACK_FROM="$(if $(findstring ://,$(FROM)),$(FROM),$(abspath $(FROM)))" \
	  $(RUN) dvc repro --force --single-item feedback
	$(MAKE) pipeline

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: ## Debian's chromium for the web-page test (apt-get; root or sudo)
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

curl: ## curl for the getting-started test, which runs the page's curl commands (apt-get; root or sudo)
	@command -v curl >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl; }

postgres: ## Debian's PostgreSQL server for the team tracking server and its test (apt-get; root or sudo)
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

proxy: ## Debian's nginx for the two-replica proxy test (apt-get; root or sudo)
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; }

rtsp-server: ## Debian's GStreamer RTSP server (for the system python3) for the camera tests (apt-get; root or sudo)
	@/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
	  2>/dev/null && gst-inspect-1.0 h264parse >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-gi \
	  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad; }

prometheus: ## Debian's Prometheus and promtool for the alerting-rule and scrape tests (apt-get; root or sudo)
	@command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

mqtt-broker: ## Debian's mosquitto for the MQTT tests (apt-get; root or sudo)
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto; }

docs: ## serve the documentation site on http://127.0.0.1:8000 (MkDocs Material, live reload)
	$(RUN) mkdocs serve --dev-addr 127.0.0.1:$${DOCS_PORT:-8000}

docs-build: ## build the documentation site into site/ (--strict: a broken link, a missing page or a warning fails)
	NO_MKDOCS_2_WARNING=1 $(RUN) mkdocs build --strict --quiet

screenshots: browser ## the documentation's screenshots, taken by the browser tests from the real pages -> docs/img/
	FACEMASK_SCREENSHOTS=$(CURDIR)/docs/img $(RUN) pytest -q $(SCREENSHOT_TESTS)

test: setup browser curl postgres proxy mqtt-broker rtsp-server prometheus pipeline docs-build ## set up, bring the pipeline up to date (the service tests serve its champion), build the docs, run all tests
	@# two test processes (a file each at a time: module fixtures build once; the longest files first,
	@# tests/conftest.py); most tests wait on a subprocess or a server. The slowest are listed at the end.
	$(RUN) pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20

test-fast: ## the tests without the slow end-to-end ones (no pipeline run needed)
	$(RUN) pytest -q -m "not slow"

lint: ## ruff check + format check
	$(RUN) ruff check src tests service
	$(RUN) ruff format --check src tests service

format: ## ruff fix + format
	$(RUN) ruff check --fix src tests service
	$(RUN) ruff format src tests service

bento-models: ## import the MLflow champion and the face detector into the BentoML model store
	$(RUN) python -m facemask.serving.packaging

serve: bento-models ## serve the champion locally on http://127.0.0.1:3000 (detect, annotate, gate)
	$(RUN) bentoml serve service.service:FaceMask --host 127.0.0.1 --port $${PORT:-3000}

bento: bento-models ## build a Bento (pinned requirements, classifier and detector included)
	$(UV) export --frozen --no-dev --no-hashes --no-emit-project -o service/requirements.txt -q
	$(UV) build --wheel -o dist -q
	$(RUN) bentoml build -f service/bentofile.yaml .

container: bento ## the Bento's OCI image facemask:latest (bentoml containerize; needs a running Docker engine)
	@docker info >/dev/null 2>&1 || { echo "no container engine answers (docker info failed): start Docker, or see docs/deploy.md"; exit 2; }
	@# Debian's docker.io has no buildx: its classic builder builds this Dockerfile as well
	$(if $(shell docker buildx version >/dev/null 2>&1 || echo no),DOCKER_BUILDKIT=0 )$(RUN) bentoml containerize facemask:latest -t facemask:latest

scenes: ## evaluate a model on annotated scenes: OVERRIDES="scenes.dir=/path detector=..." CLASSIFIER=path|models:/...
	$(RUN) python -m facemask.scenes $(OVERRIDES) $(if $(CLASSIFIER),--classifier $(CLASSIFIER),)

bench: ## benchmark tables: crop, classifier by batch, pipeline 640x480/1280x720, training, peak memory; then runtime x precision -> reports/bench
	$(RUN) python -m facemask.bench.suite
	$(RUN) --group runtimes python -m facemask.bench.runtimes

bench-runtimes: ## PyTorch / ONNX Runtime / OpenVINO x fp32 / int8 on the dev scenes: ms, fps, mAP -> reports/bench/runtimes.json
	$(RUN) --group runtimes python -m facemask.bench.runtimes

stream: ## stream a video/webcam to the served model: SOURCE=0|rtsp://...|file.mp4 CAMERA=name [OUT=annotated.mp4]
	$(RUN) python -m facemask.stream.client $${SOURCE:-0} --url ws://127.0.0.1:$${PORT:-3000}/live/ws/$${CAMERA:-camera1} $(if $(OUT),--out $(OUT),--show)

compliance: ## compliance CSV per camera and hour + plot from the event file (EVENTS=events/events.jsonl)
	$(RUN) python -m facemask.stream.compliance $${EVENTS:-events/events.jsonl}

bench-classifiers: ## train + score classifier recipes end to end, one MLflow experiment, one table (after dvc repro augment)
	$(RUN) python -m facemask.bench.classifiers

bench-seeds: ## the pipeline's spread: dvc repro once per training seed in scratch clones (SEEDS="43 44"), with this checkout's run -> reports/bench/seeds.{csv,json}, one MLflow comparison
	$(RUN) python -m facemask.bench.seeds run --seeds $(or $(SEEDS),43 44) --with-this

bench-peers: ## the AIZOO peer and our pipeline on the same 200 dev scenes in one process: mAP, AP per class, recall by size, frame median/p95, ratios -> reports/bench/peers.{csv,json}
	$(RUN) python -m facemask.bench.peers

bench-cameras: ## 8 then 16 pulled file cameras at 5 fps on one worker: fps per camera, drops, latency, RSS -> reports/bench/cameras.json
	$(RUN) python -m facemask.bench.cameras

bench-camera-like: ## every detection profile on the val scenes as they are and shrunk to 8-64 px faces (camera-like), the dev scenes beside -> reports/bench/camera_like.{csv,json}
	$(RUN) python -m facemask.bench.camera_like

bench-front: ## detectors x full-pass sizes (256-800) x fp32/int8 and the AIZOO peer: dev and val mAP, recall by size, close-up F1, ms median/p95 -> reports/bench/front.{csv,json,png}, MLflow
	$(RUN) python -m facemask.bench.front

bench-profiles: ## a door-profile and a crowd-profile camera at once on one worker (the real clips, 30 fps asked): frames/s of each -> reports/bench/profiles-cameras.json
	$(RUN) python -m facemask.bench.cameras --cameras 2 --fps 30 --seconds $(or $(SECONDS),60) --profiles door crowd --out reports/bench/profiles-cameras.json

soak: rtsp-server ## pulled cameras for DURATION seconds (default 3600; bounded) with an RTSP server restart every 10 min: RSS, reconnects, alerts -> reports/bench/soak.json
	$(RUN) python -m facemask.bench.soak --seconds $(or $(DURATION),3600)

bench-quantization: ## INT8 against fp32 (ONNX Runtime static quantization): classifier and detector ms, accuracy -> reports/bench/quantization.json
	$(RUN) python -m facemask.bench.quantization

bench-stream: ## frames/s of 1 and 4 concurrent streams: every frame, frame differencing, + region search (URL=http://...)
	$(RUN) python -m facemask.bench.stream $(if $(URL),--url $(URL),)

loadtest: bento-models ## locust on loopback: detect at RATE (default 24/s) and 2x, 4 camera streams; one table
	$(RUN) python -m facemask.bench.load $(if $(RATE),--rate $(RATE),) $(if $(URL),--url $(URL),)

api-key: ## print a new random API key (put it in FACEMASK_API_KEYS or the keys file)
	@$(RUN) python -c "import secrets; print(secrets.token_urlsafe(32))"

audit: ## pip-audit of the locked dependencies (the PyPI advisory database; needs the registry)
	$(UV) export --frozen --no-hashes --no-emit-project -q -o /tmp/facemask-requirements.txt
	$(RUN) pip-audit --strict --disable-pip --no-deps --progress-spinner off -r /tmp/facemask-requirements.txt

bench-latency: ## detect latency table (1/3/8 faces, 640x480), in-process; URL=http://... adds HTTP
	$(RUN) python -m facemask.bench.latency $(if $(URL),--url $(URL),)

mlflow-server: postgres ## the team tracking server: MLflow on PostgreSQL, artifacts proxied, in mlflow-server/ (PORT=5000)
	$(RUN) python -m facemask.tracking_server --root mlflow-server --host $${HOST:-127.0.0.1} --port $${PORT:-5000}

mlflow-ui: ## open the MLflow UI on http://127.0.0.1:5000 (MLFLOW_PORT=...; runs, metrics, plots, models); prints the runs page
	@$(RUN) python -m facemask.mlflow_tracking --ui http://127.0.0.1:$${MLFLOW_PORT:-5000}
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
	$(RUN) mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

clean: ## remove pipeline outputs (keeps the MLflow store and the DVC cache)
	rm -rf data/interim data/crops data/raw models reports
