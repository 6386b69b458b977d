"""The hub-managed Mosquitto: its configuration, its ACL and CRL, and its supervision.

The hub writes ``broker/`` in its data dir and runs ``mosquitto -c`` on it. The listener
takes only TLS clients with a certificate from the hub's CA; the certificate's common name
becomes username and client id, so a device can neither pose as another nor kick it off.
The ACL lets a device write its own ``up`` topics and read its own ``down`` topics only.

Mosquitto 2.0 does not reload a CRL on SIGHUP, so revocation restarts the managed broker
(persistence keeps queued messages; devices reconnect with backoff and jitter). The ACL
also denies the revoked identity, which covers external brokers that reload ACLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import resource
import signal
from collections.abc import Iterable
from pathlib import Path

from roost.atomic import write_atomic
from roost.errors import BrokerError
from roost.wire import topics

log = logging.getLogger("roost.hub.broker")

# Open files allowed to the broker: one per device connection, and some to spare.
BROKER_NOFILE = 65536
PR_SET_PDEATHSIG = 1


def acl_text(revoked: Iterable[str]) -> str:
    lines = [
        "# Written by the Roost hub; edits are overwritten.",
        f"user {topics.HUB_IDENTITY}",
        f"topic readwrite {topics.PREFIX}/#",
        # Rules' publish actions, to topics outside roost/ (for whoever may read there).
        "topic write #",
        "",
    ]
    for device_id in sorted(revoked):
        lines += [f"user {device_id}", "topic deny #", ""]
    lines += [
        f"pattern write {topics.PREFIX}/%u/up/+",
        f"pattern read {topics.PREFIX}/%u/down/+",
        "",
    ]
    return "\n".join(lines)


def config_text(directory: Path, port: int, host: str, max_packet: int) -> str:
    return "\n".join(
        [
            "# Written by the Roost hub at every start; edits are overwritten.",
            "per_listener_settings false",
            # Started as root, Mosquitto would switch to a "mosquitto" user that cannot
            # read the hub's files; run as whoever runs the hub.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "allow_anonymous false",
            f"acl_file {directory / 'acl'}",
            "persistence true",
            f"persistence_location {directory}/",
            # Mosquitto 2.0 only writes its store on exit unless told; save every second so
            # a crash loses at most that (device outboxes resend what was not acknowledged).
            "autosave_interval 1",
            "autosave_on_changes false",
            "max_queued_messages 100000",
            # No cap: for MQTT 5 clients it is also the receive maximum the broker
            # announces, and the hub publishes an ack and a desired state per device in
            # bursts (with 100, its client ran out of packet ids once ~100 devices
            # connected at once).
            "max_inflight_messages 0",
            f"max_packet_size {max_packet}",
            # Small messages go out at once: with Nagle's algorithm a device's event
            # waited ~20 ms in the broker for the hub's delayed ACK.
            "set_tcp_nodelay true",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"listener {port} {host}",
            f"cafile {directory / 'ca.pem'}",
            f"certfile {directory / 'server.pem'}",
            f"keyfile {directory / 'server.key'}",
            f"crlfile {directory / 'crl.pem'}",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "",
        ]
    )


def _prepare_child() -> None:  # runs in the child before exec
    # The broker dies with the hub that started it, even when the hub is killed hard.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = BROKER_NOFILE if hard == resource.RLIM_INFINITY else min(BROKER_NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class ManagedBroker:
    """Runs Mosquitto and restarts it when it dies, with backoff."""

    def __init__(
        self,
        directory: Path,
        port: int,
        host: str,
        binary: str = "mosquitto",
        max_packet: int = 256 * 1024,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.directory = directory
        self.port = port
        self.host = host
        self.binary = binary
        self.max_packet = max_packet
        self.backoff_max_s = backoff_max_s
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = asyncio.Event()

    def write_files(self, ca_pem: str, server_pem: str, server_key: bytes, crl_pem: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / "ca.pem", ca_pem)
        write_atomic(self.directory / "server.pem", server_pem)
        write_atomic(self.directory / "server.key", server_key, mode=0o600)
        write_atomic(self.directory / "crl.pem", crl_pem)
        if not (self.directory / "acl").exists():
            write_atomic(self.directory / "acl", acl_text(()))
        conf = config_text(self.directory, self.port, self.host, self.max_packet)
        write_atomic(self.directory / "mosquitto.conf", conf)

    def write_revocations(self, crl_pem: str, revoked_ids: Iterable[str]) -> None:
        write_atomic(self.directory / "crl.pem", crl_pem)
        write_atomic(self.directory / "acl", acl_text(revoked_ids))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def start(self) -> None:
        """Start and supervise; returns once the first process is running."""
        self._task = asyncio.create_task(self._supervise(), name="broker-supervisor")
        started = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            started.cancel()
            self._task.result()

    async def _spawn(self) -> asyncio.subprocess.Process:
        log_file = (self.directory / "mosquitto.log").open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(self.directory / "mosquitto.conf"),
                stdout=log_file,
                stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=_prepare_child,
                start_new_session=True,
            )
        except OSError as err:
            raise BrokerError(f"cannot start the MQTT broker ({self.binary}): {err}") from err
        finally:
            log_file.close()

    async def _supervise(self) -> None:
        delay = 0.2
        while not self._stopping:
            self._proc = await self._spawn()
            self._started.set()
            started = asyncio.get_running_loop().time()
            code = await self._proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            # A broker that ran for a while gets restarted at once; a crash loop backs off.
            if asyncio.get_running_loop().time() - started > 10:
                delay = 0.2
            log.warning("broker exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    def reload(self) -> None:
        """Re-read ACL and certificate files (SIGHUP)."""
        if self.pid:
            os.kill(self.pid, signal.SIGHUP)

    async def restart(self) -> None:
        """Stop the running broker gracefully (it saves its store); the supervisor restarts it."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._started.clear()
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
        await self._started.wait()

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
