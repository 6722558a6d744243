"""Deployment, as far as this machine can take it without a container registry: the container
recipe the Bento carries (what `make container` builds) and the image's start command run as the
container runs it; two replicas behind one nginx port (deploy/nginx, as deploy/compose.yaml wires
it) keeping every camera on one replica; the Kubernetes manifest's probes, limits and secret."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from facemask.subprocesses import free_port, stop, wait_ready

from .conftest import API_KEY, BIN, REPO, entrance_frames, run, start_bento

pytestmark = pytest.mark.slow
KEY = {"Authorization": f"Bearer {API_KEY}"}


def bento_dir(bento: str, env: dict) -> Path:
    # wide columns: BentoML's console wraps a long path at 80 (the test folders under xdist are long)
    out = run([str(BIN / "bentoml"), "get", bento, "-o", "path"], {**env, "COLUMNS": "4096"})
    path = Path(out.strip().splitlines()[-1])
    assert path.is_dir(), out
    return path


def test_the_container_recipe_and_its_start_command_serve(bento, bento_env, tmp_path):
    """The Dockerfile `bentoml containerize` builds from: the configured Debian/Python base, the
    system libraries cv2 links, the pinned requirements, a non-root user, port 3000, the entrypoint.
    That entrypoint, run the way the image runs it (in the Bento folder, PORT set, no command),
    serves the Bento: ready, alive, answering."""
    path = bento_dir(bento, bento_env)
    dockerfile = (path / "env/docker/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "libgl1" in dockerfile and "libglib2.0-0" in dockerfile
    assert "env/python/install.sh" in dockerfile and "requirements.txt" in (path / "env/python/install.sh").read_text()
    assert re.search(r"^USER bentoml$", dockerfile, re.M) and re.search(r"^EXPOSE 3000$", dockerfile, re.M)
    entrypoint = path / "env/docker/entrypoint.sh"
    assert re.search(r'^ENTRYPOINT \[ ".*/env/docker/entrypoint.sh" \]$', dockerfile, re.M)
    requirements = (path / "env/python/requirements.txt").read_text()
    assert re.search(r"^torch==", requirements, re.M) and re.search(r"^bentoml==1\.4\.39$", requirements, re.M)

    port = free_port()
    env = {**bento_env, "BENTO_PATH": str(path), "PORT": str(port)}
    log = tmp_path / "entrypoint.log"
    with log.open("w") as fh:  # the image's ENTRYPOINT with no CMD; --host keeps it on loopback here
        proc = subprocess.Popen(["bash", str(entrypoint), "--host", "127.0.0.1"], cwd=path, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, lambda: requests.get(f"{url}/readyz", timeout=5).ok, 180, lambda: log.read_text()[-3000:])
        assert requests.get(f"{url}/livez", timeout=5).ok
        info = requests.post(f"{url}/info", json={}, headers=KEY, timeout=30)
        assert info.ok and info.json()["model_version"].startswith("facemask-classifier/v"), info.text
    finally:
        stop(proc)
    assert "$PORT is set! Overriding $BENTOML_PORT" in log.read_text()


def test_kubernetes_manifest_probes_limits_secret_and_camera_affinity():
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "deploy/k8s/facemask.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler"}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    key = next(e for e in container["env"] if e["name"] == "FACEMASK_API_KEYS")
    assert "secretKeyRef" in key["valueFrom"]
    assert docs["Ingress"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    assert compose["services"]["proxy"]["environment"]["FACEMASK_REPLICA_A"] == "facemask-a:3000"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if not found:
        pytest.fail("Debian's nginx is missing: `make proxy` (part of `make test`) installs it")
    return found


def start_proxy(root: Path, replicas: list[str], port: int) -> subprocess.Popen:
    """nginx with deploy/nginx/facemask.conf.template filled in as the nginx image fills it."""
    template = string.Template((REPO / "deploy/nginx/facemask.conf.template").read_text())
    site = template.safe_substitute(
        FACEMASK_REPLICA_A=replicas[0], FACEMASK_REPLICA_B=replicas[1], FACEMASK_PROXY_LISTEN=f"127.0.0.1:{port}"
    )
    assert "${" not in site
    (root / "logs").mkdir(parents=True)
    (root / "site.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/logs/error.log;\n"
        f"events {{}}\nhttp {{\n  log_format routed '$uri $upstream_addr $status';\n"
        f"  access_log {root}/logs/access.log routed;\n  client_body_temp_path {root}/body;\n"
        f"  proxy_temp_path {root}/proxy;\n  include {root}/site.conf;\n}}\n"
    )
    check = subprocess.run([nginx_binary(), "-t", "-p", str(root), "-c", str(root / "nginx.conf")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx_binary(), "-p", str(root), "-c", str(root / "nginx.conf")], start_new_session=True)
    wait_ready(proc, lambda: requests.get(f"http://127.0.0.1:{port}/livez", timeout=5).ok, 30,
               lambda: (root / "logs/error.log").read_text()[-2000:])  # fmt: skip
    return proc


def routed(access_log: Path) -> dict[str, list[str]]:
    """{camera: the replica address of each of its connections}, from the proxy's access log."""
    out: dict[str, list[str]] = {}
    for line in access_log.read_text().splitlines():
        uri, upstream, status = line.split()
        if uri.startswith("/live/ws/"):
            assert status == "101", line  # switched to a WebSocket
            out.setdefault(uri.removeprefix("/live/ws/"), []).append(upstream)
    return out


def test_two_replicas_behind_one_port_keep_each_camera_on_one_replica(bento, bento_env, shared, tmp_path):
    """Two Bento processes, nginx in front with the repository's proxy config: each of 16 cameras
    streams twice (two connections); every frame of a camera reaches the same one replica, both
    replicas serve cameras, and a stateless request is answered through the same port."""
    from websockets.sync.client import connect

    from facemask.imageio import encode_jpeg

    replicas = []
    try:
        for name in ("a", "b"):
            env = {**bento_env, "FACEMASK_EVENTS": str(tmp_path / f"events-{name}.jsonl")}
            replicas.append(start_bento(bento, env, tmp_path / f"replica-{name}.log"))
        port = free_port()
        proxy = start_proxy(tmp_path / "nginx", [u.removeprefix("http://") for _, u in replicas], port)
        try:
            frames = [encode_jpeg(f) for _, f in zip(range(3), entrance_frames(shared), strict=False)]
            cameras = [f"gate-{i}" for i in range(16)]  # six all landed on one replica in 1 run of ~30
            for _ in range(2):  # a camera reconnects: it must land where it was
                for camera in cameras:
                    with connect(f"ws://127.0.0.1:{port}/live/ws/{camera}", additional_headers=KEY) as ws:
                        for frame in frames:
                            ws.send(frame)
                            assert "error" not in json.loads(ws.recv(timeout=60))
            stop(proxy)  # nginx writes a connection's log line when it closes
            where = routed(tmp_path / "nginx/logs/access.log")
            assert sorted(where) == sorted(cameras)
            for camera, upstreams in where.items():
                assert len(upstreams) == 2 and len(set(upstreams)) == 1, (camera, upstreams)
            used = {u[0] for u in where.values()}
            assert used == {u.removeprefix("http://") for _, u in replicas}, where  # both replicas serve cameras
            proxy = start_proxy(tmp_path / "nginx2", [u.removeprefix("http://") for _, u in replicas], port)
            gate = requests.post(f"http://127.0.0.1:{port}/info", json={}, headers=KEY, timeout=30)
            assert gate.ok
        finally:
            stop(proxy)
    finally:
        for proc, _ in replicas:
            stop(proc)
