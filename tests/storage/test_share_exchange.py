"""The hub's side of a streamed share upload, against a real hub and three agents.

A device's ``PUT /v1/store/shares/ID`` is signed over the body's declared BLAKE3 hash,
not the body; the hub streams the body and keeps it only if it is that share's. So a
device still uploads only its own shares, a declared hash changed after signing is
refused, and a body that does not match (tampered on the way, or rotten) is refused and
its share marked corrupt.
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import pytest

from roost.agent import hubapi
from roost.agent.identity import IdentityStore
from roost.errors import HubError
from roost.pki import signing
from system.harness import Agent, Hub
from system.procs import StartProc

QUOTA = str(8 << 20)


def _device(agent: Agent) -> tuple[ssl.SSLContext, hubapi.Signer]:
    """The TLS context and signer the agent itself would use."""
    store = IdentityStore(agent.data_dir)
    signer = hubapi.device_signer(agent.device_id, store.key_pem())
    return hubapi.verified_context(store.ca_path.read_text()), signer


def _inbox(hub: Hub) -> tuple[str, Path]:
    """A get's inbox, as ``GET /v1/store/...`` makes one while it waits for shares."""
    token = secrets.token_hex(8)
    inbox = hub.data_dir / "store" / "in" / token
    inbox.mkdir(parents=True)
    return token, inbox


def test_a_streamed_share_is_kept_only_from_its_device_and_only_if_it_matches(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    del mosquitto_bin  # the hub starts its own broker
    hub = Hub.start(start_proc, tmp_path / "hub")
    agents = [
        hub.join(tmp_path / f"a{i}", env={"ROOST_STORAGE_QUOTA_BYTES": QUOTA}) for i in range(3)
    ]
    hub.wait_online([a.device_id for a in agents])
    hub.wait_offering([a.device_id for a in agents])
    with hub.client() as api:
        source = tmp_path / "object.bin"
        source.write_bytes(secrets.token_bytes(300_000))
        api.put_object("b", "o", source)
        info = api.stat_object("b", "o")
    (share,) = (s for s in info["shares"] if s["index"] == 0)
    owner = next(a for a in agents if a.device_id == share["device_id"])
    other = next(a for a in agents if a is not owner)
    (share_id,) = (p.name for p in (owner.data_dir / "shares").iterdir() if "." not in p.name)
    data = (owner.data_dir / "shares" / share_id).read_bytes()
    digest = (owner.data_dir / "shares" / f"{share_id}.blake3").read_text().strip()
    context, signer = _device(owner)

    def upload(body: bytes, sign: hubapi.Signer = signer, declared: str = digest) -> object:
        token, _ = _inbox(hub)
        path = f"/v1/store/shares/{share_id}?get={token}"
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
        return hubapi.upload(hub.url, path, context, sign, len(body), declared, chunks, 10)

    # Its own device, the right bytes: kept in the get's inbox, byte for byte.
    token, inbox = _inbox(hub)
    path = f"/v1/store/shares/{share_id}?get={token}"
    assert hubapi.upload(hub.url, path, context, signer, len(data), digest, [data], 10) == {
        "share": share_id,
        "bytes": len(data),
    }
    assert (inbox / share_id).read_bytes() == data
    assert sorted(p.name for p in inbox.iterdir()) == [share_id], "no part file left"

    # Another device, with a valid signature of its own: not its share.
    _, other_signer = _device(other)
    with pytest.raises(HubError, match=f"no share {share_id} for device") as refused:
        upload(data, other_signer)
    assert refused.value.status == 404

    # The declared hash changed after it was signed: the signature no longer verifies.
    def signed_over_another(method: str, target: str, body: bytes) -> dict[str, str]:
        del body
        return signer(method, target, signing.signed_digest("0" * 64))

    with pytest.raises(HubError, match="signature does not verify") as forged:
        upload(data, signed_over_another)
    assert forged.value.status == 401

    # No declared hash: refused as malformed, and the share is not marked for it.
    with pytest.raises(HubError, match="needs content-length and x-roost-content-blake3"):
        upload(data, declared="")
    with hub.client() as api:
        states = {s["index"]: s["state"] for s in api.stat_object("b", "o")["shares"]}
    assert states[0] == "stored"

    # The body tampered with on the way (the size and the signed hash are right): refused,
    # nothing kept, and the share marked corrupt for repair.
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 1
    token, inbox = _inbox(hub)
    path = f"/v1/store/shares/{share_id}?get={token}"
    with pytest.raises(HubError, match="does not match its hash; marked corrupt"):
        hubapi.upload(hub.url, path, context, signer, len(data), digest, [bytes(tampered)], 10)
    assert list(inbox.iterdir()) == []
    with hub.client() as api:
        states = {s["index"]: s["state"] for s in api.stat_object("b", "o")["shares"]}
    assert states[0] == "corrupt"
