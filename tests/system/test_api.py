"""The hub's HTTP surface: OpenAPI, authentication, and errors as one clear line."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from system.harness import Hub
from system.procs import StartProc


def test_openapi_and_errors(start_proc: StartProc, tmp_path: Path, mosquitto_bin: str) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    ca = ssl.create_default_context(cafile=str(tmp_path / "hub" / "pki" / "ca.pem"))
    with httpx.Client(base_url=hub.url, verify=ca) as http:
        spec = http.get("/openapi.json").json()
        for path in (
            "/v1/devices",
            "/v1/devices/{device_id}",
            "/v1/devices/{device_id}/labels",
            "/v1/devices/{device_id}/twin",
            "/v1/devices/{device_id}/commands",
            "/v1/devices/{device_id}/revoke",
            "/v1/tokens",
            "/v1/tenants",
            "/v1/enroll",
        ):
            assert path in spec["paths"], path

        missing = http.get("/v1/devices")
        assert missing.status_code == 401
        assert "API token" in missing.json()["error"]
        wrong = http.get("/v1/devices", headers={"authorization": "Bearer rat_nope"})
        assert wrong.status_code == 401

        with hub.client() as api:
            token = api.config.token
        auth = {"authorization": f"Bearer {token}"}
        bad = http.post("/v1/tokens", json={"uses": 0}, headers=auth)
        assert bad.status_code == 422
        assert bad.json()["error"].startswith("uses:")
        unknown = http.get("/v1/devices/dnosuchdevice", headers=auth)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "no device 'dnosuchdevice'"}
        enroll = http.post("/v1/enroll", json={"token_id": "x", "secret": "y", "csr": "z"})
        assert enroll.status_code == 401
        assert enroll.json() == {"error": "unknown join token"}
