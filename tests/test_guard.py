"""The service's front door without a server: API keys from the environment or a file, the
WebSocket Origin rule and the per-deployment overrides of the packaged limits."""

from __future__ import annotations

import json

import pytest

from facemask.config import ConfigError, load_params
from facemask.serving.guard import Guard, load_api_keys, origin_allowed, request_key
from facemask.serving.packaging import load_serving_config

from .conftest import REPO

KEY = "k3y-abcdefghijklmnop"


@pytest.fixture
def limits():
    return load_params(REPO / "params.yaml").serving


def test_keys_from_the_environment_and_a_file(limits, tmp_path):
    assert load_api_keys(limits, {}) == []  # none configured: the service is open
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# door cameras\n{KEY}2  # lobby\n\n")
    env = {"FACEMASK_API_KEYS": f" {KEY}1 ,", "FACEMASK_API_KEYS_FILE": str(keys_file)}
    assert load_api_keys(limits, env) == [f"{KEY}1", f"{KEY}2"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_api_keys(limits, {"FACEMASK_API_KEYS_FILE": str(tmp_path / "absent")})
    keys_file.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_api_keys(limits, {"FACEMASK_API_KEYS_FILE": str(keys_file)})
    with pytest.raises(ConfigError, match="at least 16"):
        load_api_keys(limits, {"FACEMASK_API_KEYS": "short"})


def test_key_check_and_where_a_key_is_read(limits):
    guard = Guard()
    guard.configure(limits, [])
    assert guard.key_ok(None) and not guard.keys_required
    guard.configure(limits, [KEY])
    assert guard.key_ok(KEY) and not guard.key_ok(KEY + "x") and not guard.key_ok("") and not guard.key_ok(None)
    assert str(KEY) not in repr(guard.__dict__)  # only digests are kept

    def scope(*headers):
        return {"headers": [(k.encode(), v.encode()) for k, v in headers]}

    assert request_key(scope(("X-API-Key", KEY))) == KEY
    assert request_key(scope(("Authorization", f"Bearer {KEY}"))) == KEY
    assert request_key(scope(("Sec-WebSocket-Protocol", f"facemask, apikey.{KEY}"))) == KEY
    assert request_key(scope(("Authorization", f"Basic {KEY}"))) is None


def test_websocket_origin_rule():
    def scope(origin=None, host="door.example:3000"):
        headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
        return {"headers": headers}

    assert origin_allowed(scope(), [])  # not a browser
    assert origin_allowed(scope("https://door.example:3000"), [])  # the service's own page
    assert not origin_allowed(scope("https://evil.example"), [])
    assert origin_allowed(scope("https://kiosk.example"), ["https://kiosk.example/"])


def test_packaged_limits_with_deployment_overrides(limits, tmp_path):
    (tmp_path / "serving.json").write_text(limits.model_dump_json())
    env = {"FACEMASK_MAX_UPLOAD_BYTES": "2000000", "FACEMASK_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    cfg = load_serving_config(tmp_path, env)
    assert cfg.max_upload_bytes == 2_000_000 and cfg.allowed_origins == ["https://a.example", "https://b.example"]
    assert cfg.max_cameras == limits.max_cameras
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        load_serving_config(tmp_path, {"FACEMASK_MAX_FRAME_BYTES": "lots"})
    with pytest.raises(ConfigError, match="max_frame_bytes"):  # over what uvicorn lets through
        load_serving_config(tmp_path, {"FACEMASK_MAX_FRAME_BYTES": str(64 * 2**20)})
    deny = load_serving_config(
        tmp_path, {"FACEMASK_GATE_DENY": '{"no_mask": "mask_required", "incorrect": "mask_incorrect"}'}
    )
    assert deny.gate_deny == {"no_mask": "mask_required", "incorrect": "mask_incorrect"}
    with pytest.raises(ConfigError, match="FACEMASK_GATE_DENY: not JSON"):
        load_serving_config(tmp_path, {"FACEMASK_GATE_DENY": "no_mask=mask_required"})
    assert json.loads((tmp_path / "serving.json").read_text())["pipelines"] == limits.pipelines


def test_ready_only_when_configured_and_with_a_free_place(limits):
    """What /readyz answers: not before the service configured the guard (models loaded and warmed
    up), and not while every pipeline and waiting place is taken."""
    guard = Guard()
    assert not guard.ready
    guard.configure(limits, [KEY])
    assert guard.ready and guard.capacity == limits.pipelines + limits.max_waiting
    guard.in_flight = guard.capacity - 1
    assert guard.ready
    guard.in_flight = guard.capacity
    assert not guard.ready
    guard.in_flight -= 1
    assert guard.ready
