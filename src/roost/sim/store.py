"""Where simulated devices keep their identities between runs.

::

    DATA/hub.json              the hub these devices belong to (URL, CA fingerprint, broker)
    DATA/ca.pem                the hub's CA
    DATA/devices/<id>.pem      one device's private key and certificate (mode 0600)
    DATA/devices/<id>/         what the device keeps, like an agent's data dir: its
                               trusted TUF metadata and verified bundles

One file per device because ``ssl.SSLContext.load_cert_chain`` reads files. A device
file is written once, atomically, after the hub issued its certificate, so a crash
during enrollment leaves no half device behind. Identities of another hub (another CA)
are thrown away, never presented to the wrong broker.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from roost.atomic import write_atomic
from roost.errors import ConfigError
from roost.wire import topics


@dataclass(frozen=True)
class HubInfo:
    """What a simulated device needs to know about its hub."""

    hub_url: str
    ca_fingerprint: str
    mqtt_host: str
    mqtt_port: int


class IdentityCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.devices_dir = directory / "devices"
        self.ca_path = directory / "ca.pem"
        self._hub_path = directory / "hub.json"
        self.hub: HubInfo | None = None

    def _load_hub(self) -> HubInfo | None:
        if not self._hub_path.exists() or not self.ca_path.exists():
            return None
        try:
            return HubInfo(**json.loads(self._hub_path.read_text()))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{self._hub_path} is damaged: {err}") from err

    def bind(self, hub_url: str, ca_fingerprint: str, ca_pem: str) -> None:
        """Belong to the hub of this CA; identities issued by another CA are removed."""
        known = self._load_hub()
        if known is None or known.ca_fingerprint != ca_fingerprint:
            shutil.rmtree(self.devices_dir, ignore_errors=True)
            known = HubInfo(hub_url, ca_fingerprint, "", 0)
        self.devices_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.ca_path, ca_pem)
        self._save_hub(HubInfo(hub_url, ca_fingerprint, known.mqtt_host, known.mqtt_port))

    def set_broker(self, host: str, port: int) -> None:
        """Where the hub's broker is (it tells with every enrollment)."""
        if self.hub is None:
            raise ConfigError("the identity cache is not bound to a hub")
        if (self.hub.mqtt_host, self.hub.mqtt_port) != (host, port):
            self._save_hub(HubInfo(self.hub.hub_url, self.hub.ca_fingerprint, host, port))

    def _save_hub(self, hub: HubInfo) -> None:
        write_atomic(self._hub_path, json.dumps(asdict(hub), indent=2))
        self.hub = hub

    def device_ids(self) -> list[str]:
        """Enrolled devices, in a stable order (the first N of them run)."""
        if not self.devices_dir.exists():
            return []
        return sorted(p.stem for p in self.devices_dir.glob("*.pem") if topics.is_device_id(p.stem))

    def pem_path(self, device_id: str) -> Path:
        return self.devices_dir / f"{device_id}.pem"

    def device_dir(self, device_id: str) -> Path:
        """The device's own data dir (made by whoever writes into it)."""
        return self.devices_dir / device_id

    def save(self, device_id: str, key_pem: bytes, cert_pem: str) -> None:
        """Write one identity: a rename makes it whole or absent, but without fsync.

        Thousands of fsyncs would stall enrollment, and a simulated identity lost in a
        power cut is simply enrolled again (an unreadable file is forgotten).
        """
        path = self.pem_path(device_id)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key_pem + cert_pem.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def forget(self, device_id: str) -> None:
        self.pem_path(device_id).unlink(missing_ok=True)
        shutil.rmtree(self.device_dir(device_id), ignore_errors=True)
