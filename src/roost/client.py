"""The Python SDK: the hub's HTTP API as methods. The CLI is built on it.

::

    from roost.client import RoostClient
    with RoostClient.from_config() as hub:
        for device in hub.devices():
            print(device["id"], device["status"])

A receiver of Roost's webhooks checks them with ``verify_webhook`` (from here or from the
dependency-free ``roost.webhooks``).
"""

from __future__ import annotations

import os
import ssl
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

import httpx

from roost.errors import (
    AuthError,
    CommandTimeoutError,
    ConfigError,
    ForbiddenError,
    HubError,
    HubUnreachableError,
    NotFoundError,
)
from roost.settings import default_data_dir
from roost.webhooks import verify_webhook  # noqa: F401  (re-exported for receivers)


@dataclass(frozen=True)
class ClientConfig:
    hub_url: str
    ca_file: Path
    token: str = field(repr=False)

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """``path``, else ``$ROOST_CONFIG``, else the default hub data dir's client.toml."""
        if path is None:
            env = os.environ.get("ROOST_CONFIG")
            path = Path(env) if env else default_data_dir("hub") / "client.toml"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(
                f"no client config at {path}; start a hub (`roost hub`) or pass --config"
            ) from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"client config {path}: {err}") from err
        try:
            ca = Path(data["ca_file"])
            if not ca.is_absolute():
                ca = path.parent / ca
            return cls(hub_url=data["hub_url"], ca_file=ca, token=data["token"])
        except KeyError as err:
            raise ConfigError(f"client config {path} lacks {err.args[0]!r}") from err


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("error") or response.text)
    except ValueError:
        message = response.text or f"HTTP {response.status_code}"
    status = response.status_code
    if status == 401:
        raise AuthError(message)
    if status == 403:
        raise ForbiddenError(message)
    if status == 404:
        raise NotFoundError(message)
    if status == 504:
        raise CommandTimeoutError(message)
    raise HubError(message, status)


class RoostClient:
    def __init__(self, config: ClientConfig, timeout: float = 30.0) -> None:
        self.config = config
        if not config.ca_file.exists():
            raise ConfigError(f"the hub's CA file {config.ca_file} does not exist")
        self._http = httpx.Client(
            base_url=config.hub_url,
            verify=ssl.create_default_context(cafile=str(config.ca_file)),
            headers={"authorization": f"Bearer {config.token}"},
            timeout=timeout,
        )

    @classmethod
    def from_config(cls, path: Path | None = None) -> RoostClient:
        return cls(ClientConfig.load(path))

    def with_token(self, token: str) -> RoostClient:
        """The same hub, another caller (for example a tenant's admin token)."""
        return RoostClient(ClientConfig(self.config.hub_url, self.config.ca_file, token))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            if timeout is not None:
                kwargs["timeout"] = timeout
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise HubUnreachableError(self.config.hub_url, str(err) or type(err).__name__) from err
        _raise_for(response)
        return response.json()

    # -- fleet ---------------------------------------------------------------------------

    def create_join_token(
        self, labels: dict[str, str] | None = None, uses: int | None = 1, ttl_s: int | None = None
    ) -> dict[str, Any]:
        body = {"labels": labels or {}, "uses": uses, "ttl_s": ttl_s}
        result: dict[str, Any] = self._call("POST", "/v1/tokens", json=body)
        return result

    def devices(self, selector: str = "") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", "/v1/devices", params={"selector": selector} if selector else None
        )
        return result

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/devices/{device_id}")
        return result

    def label(self, device_id: str, labels: dict[str, str | None]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH", f"/v1/devices/{device_id}/labels", json={"labels": labels}
        )
        return result

    def revoke(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/devices/{device_id}/revoke")
        return result

    def twin(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/devices/{device_id}/twin")
        return result

    def set_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH", f"/v1/devices/{device_id}/twin/desired", json={"patch": patch}
        )
        return result

    def command(
        self,
        device_id: str,
        name: str,
        args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run a command; raises ``CommandTimeoutError`` when the device does not answer."""
        body = {"name": name, "args": args or {}, "timeout": timeout}
        wait = (timeout or 60.0) + 10.0
        result: dict[str, Any] = self._call(
            "POST", f"/v1/devices/{device_id}/commands", json=body, timeout=wait
        )
        return result

    # -- tenants, events, hub ------------------------------------------------------------

    def create_tenant(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/v1/tenants", json={"name": name})
        return result

    def tenants(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/tenants")
        return result

    def events(
        self,
        type: str = "",
        device: str = "",
        after: int = 0,
        limit: int = 100,
        newest: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored events after ``after`` (a ``seq``), oldest first; ``newest``: the newest
        ``limit`` of them."""
        params: dict[str, Any] = {"after": after, "limit": limit}
        if type:
            params["type"] = type
        if device:
            params["device"] = device
        if newest:
            params["newest"] = "true"
        result: list[dict[str, Any]] = self._call("GET", "/v1/events", params=params)
        return result

    def send_event(
        self, type: str, data: Any = None, subject: str = "", **attributes: Any
    ) -> dict[str, Any]:
        """Send one CloudEvent (``id``, ``source``, ``time`` may be given as attributes)."""
        event = {"type": type, "data": data, **attributes}
        if subject:
            event["subject"] = subject
        return self.send_events([event])

    def send_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Send up to 500 CloudEvents at once; an event already stored is kept once."""
        result: dict[str, Any] = self._call("POST", "/v1/events", json=events)
        return result

    def add_schedule(
        self, name: str, cron: str, type: str, subject: str = "", data: Any = None
    ) -> dict[str, Any]:
        """A cron expression (UTC) that sends an event of ``type`` each time it comes round."""
        body = {"name": name, "cron": cron, "type": type, "subject": subject, "data": data}
        result: dict[str, Any] = self._call("POST", "/v1/schedules", json=body)
        return result

    def schedules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/schedules")
        return result

    def remove_schedule(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/schedules/{name}")
        return result

    # -- rules ---------------------------------------------------------------------------

    def apply_rules(self, text: str, filename: str = "rules.yaml") -> list[dict[str, Any]]:
        """Apply a rules file (its YAML text): every rule, or none when one is refused
        (``HubError`` with status 422 names each problem at its place in ``filename``)."""
        headers = {"content-type": "application/yaml"}
        result: list[dict[str, Any]] = self._call(
            "POST",
            "/v1/rules",
            content=text.encode(),
            headers=headers,
            params={"filename": filename},
        )
        return result

    def rules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/rules")
        return result

    def rule(self, rule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/rules/{rule_id}")
        return result

    def remove_rule(self, rule_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/rules/{rule_id}")
        return result

    def enable_rule(self, rule_id: str, enabled: bool = True) -> dict[str, Any]:
        action = "enable" if enabled else "disable"
        result: dict[str, Any] = self._call("POST", f"/v1/rules/{rule_id}/{action}")
        return result

    def test_rules(
        self, text: str, events: list[dict[str, Any]] | dict[str, Any], filename: str = "rules.yaml"
    ) -> dict[str, Any]:
        """The dry run: what the rules of ``text`` would make of ``events``; ``text`` in the
        answer is the report for a person."""
        body = {"rules": text, "events": events, "filename": filename}
        result: dict[str, Any] = self._call("POST", "/v1/rules/test", json=body)
        return result

    def actions(self, status: str = "", rule: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """The newest actions the rules put in the outbox (``status``: pending, delivered,
        dead)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if rule:
            params["rule"] = rule
        result: list[dict[str, Any]] = self._call("GET", "/v1/actions", params=params)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/hub/stats")
        return result

    # -- store ---------------------------------------------------------------------------

    def put_object(
        self,
        bucket: str,
        name: str,
        file: Path,
        progress: Callable[[int], None] | None = None,
        code: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Store ``file`` as ``bucket/name`` across the devices; streamed, never read whole."""

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk

        params = {"k": code[0], "n": code[1]} if code else None
        # Its size up front: a put past the tenant's quota is refused before it is sent.
        headers = {"content-length": str(file.stat().st_size)}
        result: dict[str, Any] = self._call(
            "PUT",
            f"/v1/store/{bucket}/{name}",
            timeout=600,
            content=chunks(),
            params=params,
            headers=headers,
        )
        return result

    def get_object(
        self, bucket: str, name: str, out: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> int:
        """Write ``bucket/name`` to ``out`` as it streams in; answers its size."""
        try:
            with self._http.stream("GET", f"/v1/store/{bucket}/{name}", timeout=600) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                size = 0
                for chunk in response.iter_bytes():  # as they arrive: no rejoining
                    out.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                return size
        except httpx.TransportError as err:
            raise HubUnreachableError(self.config.hub_url, str(err) or type(err).__name__) from err

    def objects(self, bucket: str = "") -> list[dict[str, Any]]:
        params = {"bucket": bucket} if bucket else None
        result: list[dict[str, Any]] = self._call("GET", "/v1/store", params=params)
        return result

    def stat_object(self, bucket: str, name: str, check: bool = False) -> dict[str, Any]:
        """Where each share lives and the object's health; ``check``: devices re-hash first."""
        params = {"check": "true"} if check else None
        result: dict[str, Any] = self._call("GET", f"/v1/store/{bucket}/{name}/stat", params=params)
        return result

    def repair_object(self, bucket: str, name: str) -> dict[str, Any]:
        """Rebuild the shares not stored on an online device and place them anew."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/store/{bucket}/{name}/repair", timeout=600
        )
        return result

    def drain_device(self, device_id: str) -> dict[str, Any]:
        """Move every share the device holds to other devices (``failed``: per object)."""
        result: dict[str, Any] = self._call("POST", f"/v1/store/drain/{device_id}", timeout=600)
        return result

    def delete_object(self, bucket: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/store/{bucket}/{name}")
        return result

    def store_usage(self, tenant: str = "") -> dict[str, Any]:
        """The tenant's objects and bytes, per device too, and its quota (another tenant's:
        the owner only)."""
        params = {"tenant": tenant} if tenant else None
        result: dict[str, Any] = self._call("GET", "/v1/store/usage", params=params)
        return result

    def set_store_quota(self, quota_bytes: int | None, tenant: str = "") -> dict[str, Any]:
        """Set a tenant's storage quota (None: no limit); the owner only. Answers its usage."""
        body = {"tenant": tenant, "quota_bytes": quota_bytes}
        result: dict[str, Any] = self._call("PUT", "/v1/store/quota", json=body)
        return result

    def unset_store_quota(self, tenant: str = "") -> dict[str, Any]:
        """Give a tenant the hub's default storage quota again; the owner only."""
        params = {"tenant": tenant} if tenant else None
        result: dict[str, Any] = self._call("DELETE", "/v1/store/quota", params=params)
        return result

    # -- apps ----------------------------------------------------------------------------

    def publish_app(self, bundle: Path, progress: Callable[[int], None] | None = None) -> Any:
        """Upload a bundle (``roost app build`` makes one); streamed, never read whole."""

        def chunks() -> Iterator[bytes]:
            with bundle.open("rb") as file:
                while chunk := file.read(1 << 20):
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk

        headers = {"content-type": "application/gzip"}
        return self._call("POST", "/v1/apps", timeout=600, content=chunks(), headers=headers)

    def catalog_root_key(self) -> bytes:
        """The tenant's catalog root key (PEM), to keep offline."""
        try:
            response = self._http.get("/v1/catalog/root-key")
        except httpx.TransportError as err:
            raise HubUnreachableError(self.config.hub_url, str(err) or type(err).__name__) from err
        _raise_for(response)
        return response.content

    def remove_catalog_root_key(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", "/v1/catalog/root-key")
        return result

    def apps(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/apps")
        return result

    def app(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/apps/{name}")
        return result

    # -- deployments and rollouts --------------------------------------------------------

    def deploy(self, app: str, version: str, selector: str, **settings: Any) -> dict[str, Any]:
        """Roll ``app@version`` out to ``selector``'s devices; settings as in RolloutSpec
        (``waves``, ``soak_s``, ``deadline_s``, ``failure_threshold``,
        ``canary_failure_threshold``, ``windows``). Returns the new rollout."""
        body = {"app": app, "version": version, "selector": selector, **settings}
        result: dict[str, Any] = self._call("POST", "/v1/deployments", json=body)
        return result

    def deployments(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/deployments")
        return result

    def undeploy(self, deployment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/deployments/{deployment_id}")
        return result

    def rollouts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/rollouts")
        return result

    def rollout(self, rollout_id: str, devices: bool = False) -> dict[str, Any]:
        params = {"devices": "true"} if devices else None
        result: dict[str, Any] = self._call("GET", f"/v1/rollouts/{rollout_id}", params=params)
        return result

    def pause_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._rollout_action(rollout_id, "pause")

    def resume_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._rollout_action(rollout_id, "resume")

    def abort_rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._rollout_action(rollout_id, "abort")

    def _rollout_action(self, rollout_id: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/rollouts/{rollout_id}/{action}")
        return result

    # -- dead letters and secrets ----------------------------------------------------------

    def deadletters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Rules' actions given up on, the newest first, with their last error."""
        result: list[dict[str, Any]] = self._call("GET", "/v1/deadletters", params={"limit": limit})
        return result

    def replay_deadletter(self, action_id: int) -> dict[str, Any]:
        """Deliver a dead letter again (its tries counted from zero); ``{"replayed": 1}``."""
        result: dict[str, Any] = self._call("POST", f"/v1/deadletters/{action_id}/replay")
        return result

    def replay_deadletters(self) -> dict[str, Any]:
        """Deliver every dead letter of the tenant again; ``{"replayed": N}``."""
        result: dict[str, Any] = self._call("POST", "/v1/deadletters/replay")
        return result

    def drop_deadletter(self, action_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/deadletters/{action_id}")
        return result

    def set_secret(self, name: str, value: str) -> dict[str, Any]:
        """Set a secret the tenant's rules name (``secret:`` of a webhook); never shown again."""
        result: dict[str, Any] = self._call("PUT", f"/v1/secrets/{name}", json={"value": value})
        return result

    def secrets(self) -> list[dict[str, Any]]:
        """The tenant's secrets: names and times, never values."""
        result: list[dict[str, Any]] = self._call("GET", "/v1/secrets")
        return result

    def remove_secret(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/secrets/{name}")
        return result

    # -- functions -------------------------------------------------------------------------

    def deploy_function(
        self, name: str, files: dict[str, str], entry: str = "main", **limits: Any
    ) -> dict[str, Any]:
        """Deploy a function (or a new version): ``files`` maps relative paths to source;
        ``limits``: ``timeout_s``, ``memory_bytes``, ``concurrency``, ``network``."""
        body = {"name": name, "files": files, "entry": entry, **limits}
        result: dict[str, Any] = self._call("POST", "/v1/functions", json=body)
        return result

    def functions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/functions")
        return result

    def function(self, name: str) -> dict[str, Any]:
        """One function with its versions, newest first."""
        result: dict[str, Any] = self._call("GET", f"/v1/functions/{name}")
        return result

    def remove_function(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/functions/{name}")
        return result

    def invoke_function(self, name: str, data: Any = None) -> dict[str, Any]:
        """Run a function once; the recorded invocation (``ok``, ``result`` or ``error``)."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/functions/{name}/invoke", json={"data": data}
        )
        return result

    def function_logs(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The function's recent invocations, newest first."""
        result: list[dict[str, Any]] = self._call(
            "GET", f"/v1/functions/{name}/logs", params={"limit": limit}
        )
        return result
