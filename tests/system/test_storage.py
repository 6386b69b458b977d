"""The store end to end: six real agents offering space, a put, gets while devices go away.

Small objects and the hub's default timeouts: agents stopped cleanly say they are
offline, so the hub does not wait for them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.errors import HubError, NotFoundError
from system.harness import Agent, Hub, cli
from system.procs import StartProc, wait_for

QUOTA = str(8 << 20)
MARK = b"Roost storage test line"
# ~220 KB: above the copy threshold (64 KiB), so it is erasure-coded (3-of-6 on 6 devices).
OBJECT = b"".join(MARK + f" {i:06d}\n".encode() for i in range(7000))


def _store(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(config, "store", *args)


def _get(hub: Hub, name: str = "test.txt") -> bytes:
    import io

    out = io.BytesIO()
    with hub.client() as api:
        api.get_object("photos", name, out)
    return out.getvalue()


def test_objects_survive_devices_going_away_and_stay_with_their_tenant(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    quota = {"ROOST_STORAGE_QUOTA_BYTES": QUOTA}
    agents = [hub.join(tmp_path / f"a{i}", env=quota) for i in range(6)]
    ids = [a.device_id for a in agents]
    # A device that offers no space (the default) never gets a share.
    keeps_nothing = hub.join(tmp_path / "no-quota")
    hub.wait_online([*ids, keeps_nothing.device_id])
    hub.wait_offering(ids)
    with hub.client() as api:

        def says_it_offers_none() -> bool:
            metrics = {d["id"]: d["metrics"] for d in api.devices()}
            return metrics[keeps_nothing.device_id].get("storage_quota") == 0

        wait_for(says_it_offers_none, timeout=30, what="the seventh device to offer no space")

    source = tmp_path / "test.txt"
    source.write_bytes(OBJECT)
    put = _store(config, "put", str(source), "--bucket", "photos", "--json")
    assert put.returncode == 0, put.stderr
    stat = _store(config, "stat", "test.txt", "--bucket", "photos", "--json")
    assert stat.returncode == 0, stat.stderr
    with hub.client() as api:
        info = api.stat_object("photos", "test.txt")
        assert [o["name"] for o in api.objects()] == ["test.txt"]
    assert (info["k"], info["n"], info["size"], info["health"]) == (3, 6, len(OBJECT), "healthy")
    holders = {s["device_id"]: s["index"] for s in info["shares"]}
    assert sorted(holders) == sorted(ids), "one share per device"
    assert all(s["state"] == "stored" for s in info["shares"])

    # Each device holds one share file, and no plaintext of the object.
    for agent in agents:
        (share,) = agent.share_files()
        assert MARK not in share.read_bytes()
    assert keeps_nothing.share_files() == []

    got = _store(config, "get", "test.txt", "--bucket", "photos", "-o", str(tmp_path / "back"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "back").read_bytes() == OBJECT

    # A device asks for a share that is not its own: refused, whatever the share's state.
    (theirs,) = agents[0].share_files()
    with pytest.raises(HubError, match=f"no share {theirs.name} for device") as refused:
        _fetch_as(agents[1], hub, f"/v1/store/shares/{theirs.name}")
    assert refused.value.status == 404

    _small_object_with_a_corrupt_share(hub, agents, tmp_path)
    _object_of_several_segments(hub, agents, tmp_path)
    _interrupted_put_is_replaced_by_a_retry(hub, tmp_path)

    # n - k = 3 devices away: still readable.
    for agent in agents[:3]:
        agent.proc.stop()
    assert _get(hub) == OBJECT

    # One more: 2 of the 3 shares needed; the error names the shares that did not come.
    agents[3].proc.stop()
    with pytest.raises(HubError, match="cannot be read: 2 of the 3 shares") as failed:
        _get(hub)
    for agent in agents[:4]:
        assert f"share {holders[agent.device_id]}: device {agent.device_id} is offline" in str(
            failed.value
        )
    refused_get = _store(config, "get", "test.txt", "--bucket", "photos", "-o", str(tmp_path / "x"))
    assert refused_get.returncode != 0
    assert "cannot be read: 2 of the 3 shares" in refused_get.stderr
    assert "Traceback" not in refused_get.stderr
    assert not (tmp_path / "x").exists(), "a failed get leaves no file behind"

    # One back: readable again.
    hub.run_agent(agents[0], env=quota)
    hub.wait_online([agents[0].device_id])
    assert _get(hub) == OBJECT

    # Another tenant sees nothing, and can neither read nor delete it.
    with hub.client() as api:
        acme_token = api.create_tenant("acme")["admin_token"]
    with hub.client(acme_token) as acme:
        assert acme.objects() == []
        with pytest.raises(NotFoundError):
            acme.stat_object("photos", "test.txt")
        with pytest.raises(NotFoundError):
            acme.delete_object("photos", "test.txt")
        with pytest.raises(NotFoundError):
            acme.repair_object("photos", "test.txt")
        with pytest.raises(NotFoundError):
            acme.drain_device(agents[4].device_id)
        with pytest.raises(NotFoundError), (tmp_path / "acme").open("wb") as out:
            acme.get_object("photos", "test.txt", out)
    assert _get(hub) == OBJECT

    # The owner deletes it: gone from the list, and online devices drop their shares.
    removed = _store(config, "rm", "test.txt", "--bucket", "photos")
    assert removed.returncode == 0, removed.stderr
    with hub.client() as api:
        assert api.objects() == []
        with pytest.raises(NotFoundError):
            api.stat_object("photos", "test.txt")
    online = (agents[0], agents[4], agents[5])

    def dropped() -> bool:
        return not any(agent.share_files() for agent in online)

    wait_for(dropped, timeout=10, what="online devices to drop their shares")


def _fetch_as(agent: Agent, hub: Hub, path: str) -> bytes:
    from roost.agent import hubapi
    from roost.agent.identity import IdentityStore

    store = IdentityStore(agent.data_dir)
    signer = hubapi.device_signer(agent.device_id, store.key_pem())
    context = hubapi.verified_context(store.ca_path.read_text())
    return hubapi.fetch(hub.url, path, context, signer, timeout=10)


def _small_object_with_a_corrupt_share(hub: Hub, agents: list[Agent], tmp_path: Path) -> None:
    """Below 64 KiB an object is copied (1-of-4 on six devices); a copy rotten on its
    device's disk is reported, and the get uses another."""
    import io

    small = tmp_path / "small.txt"
    small.write_bytes(OBJECT[:10_000])
    with hub.client() as api:
        api.put_object("photos", "small.txt", small)
        info = api.stat_object("photos", "small.txt")
        assert (info["k"], info["n"]) == (1, 4)
        first = next(s for s in info["shares"] if s["index"] == 0)
        holder = next(a for a in agents if a.device_id == first["device_id"])
        (share,) = (p for p in holder.share_files() if p.stat().st_size < 20_000)
        rotten = bytearray(share.read_bytes())
        rotten[100] ^= 1
        share.write_bytes(bytes(rotten))

        out = io.BytesIO()
        api.get_object("photos", "small.txt", out)
        assert out.getvalue() == OBJECT[:10_000]
        states = {s["index"]: s["state"] for s in api.stat_object("photos", "small.txt")["shares"]}
        assert states == {0: "corrupt", 1: "stored", 2: "stored", 3: "stored"}

        # `stat --check`: every holder re-hashes its copy; one more rotten, one gone.
        holders = {s["index"]: s["device_id"] for s in info["shares"]}
        by_id = {a.device_id: a for a in agents}
        (second,) = (p for p in by_id[holders[1]].share_files() if p.stat().st_size < 20_000)
        flipped = bytearray(second.read_bytes())
        flipped[0] ^= 0xFF
        second.write_bytes(bytes(flipped))
        (third,) = (p for p in by_id[holders[2]].share_files() if p.stat().st_size < 20_000)
        third.unlink()
        config = hub.data_dir / "client.toml"
        checked = _store(config, "stat", "small.txt", "--bucket", "photos", "--check", "--json")
        assert checked.returncode == 0, checked.stderr
        found = json.loads(checked.stdout)
        states = {s["index"]: s["state"] for s in found["shares"]}
        assert states == {0: "corrupt", 1: "corrupt", 2: "missing", 3: "stored"}
        assert found["health"] == "degraded"
        api.delete_object("photos", "small.txt")


def _interrupted_put_is_replaced_by_a_retry(hub: Hub, tmp_path: Path) -> None:
    """A put cut off half-way leaves a pending object nobody sees; a retry replaces it."""
    import httpx

    def pending() -> int:
        return _pending(hub, "cut.txt")

    def cut_off() -> Iterator[bytes]:
        yield OBJECT[:100_000]
        raise ConnectionAbortedError("the client went away")

    with hub.client() as api:
        with pytest.raises((ConnectionAbortedError, httpx.HTTPError)):
            api._http.put("/v1/store/photos/cut.txt", content=cut_off())
        wait_for(lambda: pending() == 1, timeout=10, what="the cut-off put to be pending")
        assert "cut.txt" not in [o["name"] for o in api.objects()]
        with pytest.raises(NotFoundError):
            api.stat_object("photos", "cut.txt")
        source = tmp_path / "cut.txt"
        source.write_bytes(OBJECT)
        api.put_object("photos", "cut.txt", source)
        assert pending() == 0
        assert api.stat_object("photos", "cut.txt")["health"] == "healthy"
        api.delete_object("photos", "cut.txt")


def _pending(hub: Hub, name: str) -> int:
    """Pending objects of that name, straight from the hub's database."""
    import sqlalchemy as sa

    url = hub.env.get("ROOST_DATABASE_URL") or f"sqlite:///{hub.data_dir / 'roost.db'}"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as db:
            query = "select count(*) from store_objects where name = :name and state = 'pending'"
            return int(db.execute(sa.text(query), {"name": name}).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


def test_a_hub_killed_mid_put_shows_no_half_object_and_the_put_can_be_retried(
    start_proc: StartProc, tmp_path: Path, database_url: str, mosquitto_bin: str
) -> None:
    import os
    import signal

    import httpx

    hub = Hub.start(start_proc, tmp_path / "hub", database_url)
    env = {"ROOST_STORAGE_QUOTA_BYTES": QUOTA, "ROOST_RECONNECT_MAX_S": "1"}
    agents = [hub.join(tmp_path / f"a{i}", env=env) for i in range(3)]
    hub.wait_online([a.device_id for a in agents])
    hub.wait_offering([a.device_id for a in agents])

    def crash_half_way() -> Iterator[bytes]:
        yield OBJECT[:100_000]
        wait_for(lambda: _pending(hub, "big.txt") == 1, timeout=10, what="the put to begin")
        assert hub.proc is not None
        os.killpg(hub.proc.popen.pid, signal.SIGKILL)  # the hub and its broker, at once
        hub.proc.popen.wait()
        yield OBJECT[100_000:]

    with hub.client() as api, pytest.raises(httpx.HTTPError):
        api._http.put("/v1/store/photos/big.txt", content=crash_half_way())

    hub.run()
    hub.wait_online([a.device_id for a in agents])
    source = tmp_path / "big.txt"
    source.write_bytes(OBJECT)
    with hub.client() as api:
        assert api.objects() == []
        with pytest.raises(NotFoundError):
            api.stat_object("photos", "big.txt")
        assert _pending(hub, "big.txt") == 1
        api.put_object("photos", "big.txt", source)
        assert _pending(hub, "big.txt") == 0
        assert list((hub.data_dir / "store" / "out").iterdir()) == [], "no spool left"
        assert api.stat_object("photos", "big.txt")["health"] == "healthy"
        assert _get(hub, "big.txt") == OBJECT


def _object_of_several_segments(hub: Hub, agents: list[Agent], tmp_path: Path) -> None:
    """2.5 MiB at 2-of-5 (asked for): three 1 MiB segments, each device's share file
    holding its piece of each. Two share files lost, a repair rebuilds them elsewhere."""
    import io
    import os

    data = os.urandom((5 << 20) // 2 + 7)
    path = tmp_path / "segments.bin"
    path.write_bytes(data)
    with hub.client() as api:
        config = hub.data_dir / "client.toml"
        put = _store(config, "put", str(path), "--bucket", "photos", "--code", "2-of-5")
        assert put.returncode == 0, put.stderr
        assert "(2621447 bytes, 2-of-5)" in put.stdout
        info = api.stat_object("photos", "segments.bin")
        assert (info["k"], info["n"], len(info["shares"])) == (2, 5, 5)
        out = io.BytesIO()
        api.get_object("photos", "segments.bin", out)
        assert out.getvalue() == data

        # Two devices lose their share files: degraded; a repair makes it whole again.
        by_id = {a.device_id: a for a in agents}
        lost = {s["index"]: s["device_id"] for s in info["shares"] if s["index"] in (0, 3)}
        for device_id in lost.values():
            for share in by_id[device_id].share_files():
                if share.stat().st_size > 1 << 20:
                    share.unlink()
        assert api.stat_object("photos", "segments.bin", check=True)["health"] == "degraded"
        repair = _store(config, "repair", "segments.bin", "--bucket", "photos")
        assert repair.returncode == 0, repair.stderr
        assert "5 of 5 shares stored, healthy" in repair.stdout
        after = api.stat_object("photos", "segments.bin", check=True)
        assert after["health"] == "healthy"
        assert {s["index"]: s["state"] for s in after["shares"]} == dict.fromkeys(
            range(5), "stored"
        )
        # Each rebuilt share is on a device that holds no other share of the object.
        homes = [s["device_id"] for s in after["shares"]]
        assert len(set(homes)) == 5
        out = io.BytesIO()
        api.get_object("photos", "segments.bin", out)
        assert out.getvalue() == data

        # Drain a device: its share of segments.bin moves to the one device without one;
        # test.txt has a share on every device that offers space, so it has nowhere to go.
        leaving = homes[0]
        drained = _store(config, "drain", leaving, "--json")
        assert drained.returncode == 1, drained.stderr
        done = json.loads(drained.stdout)
        assert (done["moved"], done["objects"]) == (1, 2)
        assert list(done["failed"]) == ["photos/test.txt"]
        assert "devices have" in done["failed"]["photos/test.txt"]
        after = api.stat_object("photos", "segments.bin")
        assert leaving not in [s["device_id"] for s in after["shares"]]
        assert after["health"] == "healthy"
        assert [p for p in by_id[leaving].share_files() if p.stat().st_size > 1 << 20] == []
        out = io.BytesIO()
        api.get_object("photos", "segments.bin", out)
        assert out.getvalue() == data
        api.delete_object("photos", "segments.bin")
