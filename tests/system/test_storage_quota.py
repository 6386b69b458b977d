"""Tenants' storage quotas and usage end to end: three real agents offering space, puts
under and over a quota, usage after puts and a delete, and who may see and set what.

Small objects (copied 1-of-3 on three devices), so the test stays quick.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.errors import ForbiddenError, NotFoundError
from system.harness import Hub, cli
from system.procs import StartProc

OFFERED = 8 << 20
SIZE = 50_000
QUOTA = "120K"  # two objects of SIZE fit, three do not
QUOTA_BYTES = 120 * 1024


def _store(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(config, "store", *args)


def _usage(config: Path) -> dict[str, Any]:
    done = _store(config, "usage", "--json")
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _file(tmp_path: Path, name: str, size: int = SIZE) -> Path:
    path = tmp_path / name
    path.write_bytes(name.encode() * (size // len(name)) + b"x" * (size % len(name)))
    return path


def test_usage_follows_puts_and_deletes_and_a_put_past_the_quota_is_refused(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    env = {"ROOST_STORAGE_QUOTA_BYTES": str(OFFERED)}
    agents = [hub.join(tmp_path / f"a{i}", env=env) for i in range(3)]
    ids = sorted(a.device_id for a in agents)
    hub.wait_online(ids)
    hub.wait_offering(ids)

    empty = _usage(config)
    assert (empty["objects"], empty["bytes"], empty["raw_bytes"]) == (0, 0, 0)
    assert (empty["quota_bytes"], empty["quota_from"]) == (None, "hub")
    assert [d["device_id"] for d in empty["devices"]] == ids
    assert all(d["offered_bytes"] == OFFERED and d["shares"] == 0 for d in empty["devices"])

    quota = _store(config, "quota", "set", QUOTA)
    assert quota.returncode == 0, quota.stderr
    assert "quota 120.0 KiB (tenant)" in quota.stdout

    # Two objects fit; usage counts them, and their shares on each device.
    for name in ("a.bin", "b.bin"):
        put = _store(config, "put", str(_file(tmp_path, name)), "--bucket", "photos")
        assert put.returncode == 0, put.stderr
    used = _usage(config)
    with hub.client() as api:
        shares = [
            s for name in ("a.bin", "b.bin") for s in api.stat_object("photos", name)["shares"]
        ]
    assert (used["objects"], used["bytes"], used["pending_objects"]) == (2, 2 * SIZE, 0)
    assert (used["quota_bytes"], used["room_bytes"]) == (QUOTA_BYTES, QUOTA_BYTES - 2 * SIZE)
    assert used["raw_bytes"] == sum(s["size"] for s in shares) > 2 * SIZE
    for device in used["devices"]:
        mine = [s for s in shares if s["device_id"] == device["device_id"]]
        assert (device["shares"], device["bytes"]) == (len(mine), sum(s["size"] for s in mine))
    table = _store(config, "usage")
    assert table.returncode == 0, table.stderr
    assert "default: 2 object(s), 97.7 KiB of quota 120.0 KiB (tenant)" in table.stdout

    # A third is refused before any share is sent: one line, nothing new anywhere.
    files_before = {a.device_id: len(a.share_files()) for a in agents}
    over = _store(config, "put", str(_file(tmp_path, "c.bin")), "--bucket", "photos")
    assert over.returncode != 0
    assert over.stderr.strip().splitlines() == [
        "error: photos/c.bin (48.8 KiB) does not fit the tenant's storage quota: "
        "97.7 KiB of 120.0 KiB used"
    ]
    # Much bigger than the room, declared up front: refused at once, and the answer
    # still reaches the client while it is sending.
    big = _store(config, "put", str(_file(tmp_path, "big.bin", 6 << 20)), "--bucket", "photos")
    assert big.returncode != 0
    assert "photos/big.bin (6.0 MiB) does not fit the tenant's storage quota" in big.stderr
    _chunked_put_past_the_quota_is_cut_short(hub)
    listed = _store(config, "ls", "--bucket", "photos", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [o["name"] for o in json.loads(listed.stdout)] == ["a.bin", "b.bin"]
    assert _usage(config)["pending_objects"] == 0, "no half-put object holds room"
    assert {a.device_id: len(a.share_files()) for a in agents} == files_before

    # A delete gives the room back, and usage shows it.
    removed = _store(config, "rm", "a.bin", "--bucket", "photos")
    assert removed.returncode == 0, removed.stderr
    after_rm = _usage(config)
    assert (after_rm["objects"], after_rm["bytes"]) == (1, SIZE)
    assert sum(d["shares"] for d in after_rm["devices"]) == 3
    retry = _store(config, "put", str(tmp_path / "c.bin"), "--bucket", "photos")
    assert retry.returncode == 0, retry.stderr
    assert _usage(config)["bytes"] == 2 * SIZE

    _other_tenants_see_and_set_nothing(hub)

    back = _store(config, "quota", "set", "default")
    assert back.returncode == 0, back.stderr
    assert (_usage(config)["quota_bytes"], _usage(config)["quota_from"]) == (None, "hub")


def _chunked_put_past_the_quota_is_cut_short(hub: Hub) -> None:
    """A put that declares no size is refused once what arrived passes the room."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"z" * 10_000

    with hub.client() as api:
        answer = api._http.put("/v1/store/photos/chunked.bin", content=chunks())
    assert answer.status_code == 413
    # How much arrived before the refusal depends on how the chunks were read.
    assert re.fullmatch(
        r"photos/chunked\.bin \(more than [0-9.]+ KiB\) does not fit the tenant's storage "
        r"quota: 97\.7 KiB of 120\.0 KiB used",
        answer.json()["error"],
    )


def _other_tenants_see_and_set_nothing(hub: Hub) -> None:
    with hub.client() as api:
        acme_token = api.create_tenant("acme")["admin_token"]
        with hub.client(acme_token) as acme:
            theirs = acme.store_usage()
            assert (theirs["tenant"], theirs["objects"], theirs["bytes"]) == ("acme", 0, 0)
            assert (theirs["raw_bytes"], theirs["devices"]) == (0, [])
            with pytest.raises(ForbiddenError, match="only the hub's owner"):
                acme.store_usage("default")
            # A tenant's admin may not lift its own quota, nor set another's.
            with pytest.raises(ForbiddenError, match="only the hub's owner"):
                acme.set_store_quota(None)
            with pytest.raises(ForbiddenError, match="only the hub's owner"):
                acme.set_store_quota(1 << 30, tenant="default")
            with pytest.raises(ForbiddenError, match="only the hub's owner"):
                acme.unset_store_quota()
        # The owner sets and sees another tenant's quota.
        assert api.set_store_quota(1 << 20, tenant="acme")["quota_bytes"] == 1 << 20
        assert api.store_usage("acme")["quota_from"] == "tenant"
        with pytest.raises(NotFoundError, match="no tenant nobody"):
            api.store_usage("nobody")
        assert api.store_usage()["quota_bytes"] == QUOTA_BYTES, "the owner's own is unchanged"
