"""An operator takes the catalog's root key offline: exported with the CLI, then removed.

The key written is the one the catalog's root metadata trusts; it is private to its file;
it is never written over an existing file; once removed it cannot be read again; and a
tenant only ever gets its own catalog's key.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from system.harness import Hub, cli
from system.procs import StartProc


def public_hex(pem: bytes) -> str:
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def trusted_root_keys(hub: Hub, tenant: str) -> set[str]:
    root = json.loads((hub.data_dir / "catalog" / tenant / "metadata" / "1.root.json").read_text())
    signed = root["signed"]
    return {signed["keys"][k]["keyval"]["public"] for k in signed["roles"]["root"]["keyids"]}


def test_the_root_key_is_exported_then_taken_off_the_hub(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    out = tmp_path / "usb" / "root.pem"
    out.parent.mkdir()

    done = cli(config, "app", "root-key", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert public_hex(out.read_bytes()) in trusted_root_keys(hub, "default")

    again = cli(config, "app", "root-key", "--out", str(out), "--remove")
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert (hub.data_dir / "catalog" / "default" / "keys").exists()

    second = tmp_path / "usb" / "root-2.pem"
    done = cli(config, "app", "root-key", "--out", str(second), "--remove")
    assert done.returncode == 0, done.stderr
    assert second.read_bytes() == out.read_bytes()
    gone = cli(config, "app", "root-key", "--out", str(tmp_path / "usb" / "root-3.pem"))
    assert gone.returncode != 0
    assert "offline already" in gone.stderr

    with hub.client() as api:
        acme = api.create_tenant("acme")["admin_token"]
        with api.with_token(acme) as theirs:
            key = theirs.catalog_root_key()
    assert public_hex(key) in trusted_root_keys(hub, "acme")
    assert public_hex(key) != public_hex(out.read_bytes())
