"""Events on an MQTT broker (paho-mqtt), for building and home automation.

Topics under `topic_prefix` (default `facemask`):
- `<prefix>/<camera>/events`: each alert as JSON (QoS 1; the snapshot left out, `snapshot: true` says
  the event file holds one);
- `<prefix>/<camera>/compliance`: each stats window's figures (QoS 1, retained: a new subscriber
  gets the latest at once);
- `<prefix>/availability`: `online` (retained) once connected; `offline` when the service stops,
  or from the broker (the last will) when the service dies without a word.

Delivery is `delivery.Delivery`'s: a background thread publishes in order and waits for the broker's
acknowledgement; while the broker is away events wait in a bounded queue, then in a pending file,
and go out when it is back. The frame loop never waits for the broker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from facemask.config import Mqtt
from facemask.stream.delivery import Delivery

log = logging.getLogger("facemask.events")


def compliance_message(stats: dict) -> dict:
    """A stats event as the compliance topic carries it: faces per class and the compliant share."""
    faces = {k.removeprefix("faces_"): v for k, v in stats.items() if k.startswith("faces_")}
    total = sum(faces.values())
    compliant = stats.get("compliant")
    return {
        "id": stats.get("id"),
        "camera": stats["camera"],
        "start": stats["start"],
        "time": stats["time"],
        "frames": stats["frames"],
        "faces": faces,
        "compliant": compliant,
        "compliance": round(faces.get(compliant, 0) / total, 4) if total else None,
        "alerts": stats["alerts"],
    }


class MqttSink(Delivery):
    name = "mqtt"

    def __init__(self, cfg: Mqtt, pending: Path):
        super().__init__(pending, cfg.max_queue, cfg.retry_s)
        self.cfg, self.prefix = cfg, cfg.topic_prefix.rstrip("/")
        url = urlsplit(cfg.url)
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.address = f"{url.hostname}:{port}"
        client_id = f"facemask-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if cfg.username:
            self.client.username_pw_set(cfg.username, os.environ.get(cfg.password_env))
        if url.scheme == "mqtts":
            self.client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(cfg.retry_s)))
        self.client.connect_async(url.hostname, port, cfg.keepalive_s)
        self.client.loop_start()  # paho's network thread connects and reconnects by itself
        self.start()

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.address, reason_code)
            return
        log.info("MQTT broker %s connected", self.address)
        client.publish(self.availability, "online", qos=1, retain=True)

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if not self._stop.is_set():
            log.warning("MQTT broker %s lost (%s): events wait until it is back", self.address, reason_code)

    def message(self, event: dict) -> tuple[str, dict, bool] | None:
        """(topic, payload, retained) of an event; None for events MQTT does not carry."""
        if event.get("type") == "alert":
            payload = {k: v for k, v in event.items() if k != "snapshot_jpeg_b64"}
            payload["snapshot"] = "snapshot_jpeg_b64" in event
            return f"{self.prefix}/{event['camera']}/events", payload, False
        if event.get("type") == "stats":
            return f"{self.prefix}/{event['camera']}/compliance", compliance_message(event), True
        return None

    def _deliver(self, event: dict) -> bool:
        """Published and acknowledged by the broker (QoS 1) within `timeout_s`."""
        message = self.message(event)
        if message is None:
            return True
        if not self.client.is_connected():
            return False
        topic, payload, retain = message
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=retain)
        try:
            info.wait_for_publish(self.cfg.timeout_s)
        except (RuntimeError, ValueError):  # not queued: the connection went while publishing
            return False
        return info.is_published()

    def close(self, wait_s: float = 10.0) -> None:
        """Stop delivering (the rest kept in the pending file), say `offline`, disconnect."""
        super().close(wait_s)
        if self.client.is_connected():
            info = self.client.publish(self.availability, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # gone meanwhile: the last will says it
                info.wait_for_publish(self.cfg.timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
