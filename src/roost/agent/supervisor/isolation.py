"""How an app is confined on this device: what the device allows, and how to launch it.

The decision is pure: ``plan_launch(spec, capabilities)`` says which command line to run
(bubblewrap flags or none), which cgroup to make with which limits, which rlimits to set,
and the short label reported for the app (``"bwrap+cgroup-v1"``, ``"bwrap+rlimits"``,
``"cgroup-v2"``, ``"rlimits"``). ``parse_mountinfo``, ``parse_proc_cgroup`` and
``cgroup_candidates`` are pure too. Only ``detect_isolation`` touches the system: it tries
bubblewrap once and tries to make a cgroup, and it is called once when the supervisor
starts.

Under bubblewrap the root is read-only, ``/tmp`` private, ``/dev`` and ``/proc`` fresh,
the agent's data dir hidden but for the app's own dirs and events socket, the data dir the
only writable bind, the network unshared unless the app asks for it, the PID namespace
private. Each app gets the cgroup ``<agent's cgroup>/roost/<app>`` (memory
limit, CPU quota); without a usable cgroup, ``RLIMIT_DATA`` bounds memory and the CPU is not
limited. ``RLIMIT_NOFILE`` is always set. The child enters its cgroup before it execs
(see ``process.py``), so no app code ever runs outside it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from roost.agent.supervisor.spec import RunSpec
from roost.device import SOCKET_ENV

CGROUP_ROOT_NAME = "roost"
# CFS bandwidth period; the quota is cpu cores times this.
CPU_PERIOD_US = 100_000
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROBE_TIMEOUT_S = 10.0
# Under bubblewrap a private tmpfs; in a plain process the system's, as any program's.
_TMP = "/tmp"  # noqa: S108


@dataclass(frozen=True)
class CgroupSupport:
    """Where app cgroups go. v2: one directory; v1: one per controller (memory, cpu)."""

    version: Literal[1, 2]
    bases: Mapping[str, Path]  # controller ("" for v2) -> the ``roost`` directory


@dataclass(frozen=True)
class Capabilities:
    """What this device allows, found once by ``detect_isolation``."""

    bwrap: str | None = None  # path of a bubblewrap that works
    cgroup: CgroupSupport | None = None


@dataclass(frozen=True)
class CgroupPlan:
    """Directories to make and enter (one per hierarchy), and limit files to write."""

    dirs: tuple[Path, ...]
    limits: tuple[tuple[Path, str], ...]
    version: Literal[1, 2]


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one app, decided without touching the system."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    isolation: str
    sandboxed: bool  # under bubblewrap: its own PID namespace
    cgroup: CgroupPlan | None = None
    rlimits: tuple[tuple[int, int], ...] = field(default=())


def bwrap_args(bwrap: str, spec: RunSpec) -> tuple[str, ...]:
    """The bubblewrap command line that confines ``spec``'s command."""
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", _TMP]
    for hidden in spec.hidden:  # the agent's data dir: its key, its store, others' sockets
        args += ["--tmpfs", str(hidden)]
    # Bound again after the tmpfs, so an app or data dir under /tmp (or hidden) stays visible.
    args += ["--ro-bind", str(spec.app_dir), str(spec.app_dir)]
    if spec.data_dir is not None:
        args += ["--bind", str(spec.data_dir), str(spec.data_dir)]
    if spec.events_socket is not None:
        # Its directory, not the socket: a socket the agent makes again stays reachable.
        # Read-only still lets the app connect; it cannot put another socket there.
        sockets = str(spec.events_socket.parent)
        args += ["--ro-bind", sockets, sockets]
    if not spec.network:
        args.append("--unshare-net")
    args += ["--unshare-pid", "--die-with-parent", "--new-session"]
    args += ["--chdir", str(spec.app_dir), "--", *spec.command]
    return tuple(args)


def cgroup_plan(
    app: str, memory_bytes: int | None, cpu: float | None, support: CgroupSupport
) -> CgroupPlan:
    """The cgroup of one app and the limits written into it."""
    quota = None if cpu is None else max(1000, round(cpu * CPU_PERIOD_US))
    limits: list[tuple[Path, str]] = []
    if support.version == 2:
        app_dir = support.bases[""] / app
        dirs: tuple[Path, ...] = (app_dir,)
        limits.append(
            (app_dir / "memory.max", "max" if memory_bytes is None else str(memory_bytes))
        )
        limits.append((app_dir / "cpu.max", f"{'max' if quota is None else quota} {CPU_PERIOD_US}"))
    else:
        mem, cpu_dir = support.bases["memory"] / app, support.bases["cpu"] / app
        dirs = (mem, cpu_dir)
        limits.append((mem / "memory.limit_in_bytes", str(memory_bytes or -1)))
        limits.append((cpu_dir / "cpu.cfs_period_us", str(CPU_PERIOD_US)))
        limits.append((cpu_dir / "cpu.cfs_quota_us", str(quota or -1)))
    return CgroupPlan(dirs=dirs, limits=tuple(limits), version=support.version)


def app_env(spec: RunSpec, path: str = _DEFAULT_PATH) -> dict[str, str]:
    """The environment an app sees: a small base, then the spec's own variables."""
    env = {
        "PATH": path,
        "HOME": str(spec.data_dir or _TMP),
        "TMPDIR": _TMP,
        "LANG": "C.UTF-8",
        "ROOST_APP_NAME": spec.name,
        "ROOST_APP_VERSION": spec.version,
        "ROOST_APP_DIR": str(spec.app_dir),
    }
    if spec.data_dir is not None:
        env["ROOST_DATA_DIR"] = str(spec.data_dir)
    env.update(spec.env)
    if spec.events_socket is not None:  # after the app's own: it cannot point elsewhere
        env[SOCKET_ENV] = str(spec.events_socket)
    return env


def plan_launch(
    spec: RunSpec,
    caps: Capabilities,
    *,
    nofile: int = 1024,
    path: str = _DEFAULT_PATH,
    use_cgroup: bool = True,
) -> Launch:
    """Decide how to launch ``spec`` on a device with ``caps``."""
    parts: list[str] = []
    argv = spec.command
    if caps.bwrap is not None:
        argv = bwrap_args(caps.bwrap, spec)
        parts.append("bwrap")
    plan = None
    rlimits = [(resource.RLIMIT_NOFILE, nofile)]
    if caps.cgroup is not None and use_cgroup:
        plan = cgroup_plan(spec.name, spec.memory_bytes, spec.cpu, caps.cgroup)
        parts.append(f"cgroup-v{caps.cgroup.version}")
    else:
        if spec.memory_bytes is not None:
            rlimits.append((resource.RLIMIT_DATA, spec.memory_bytes))
        parts.append("rlimits")
    return Launch(
        argv=argv,
        cwd=spec.app_dir,
        env=app_env(spec, path),
        isolation="+".join(parts),
        sandboxed=caps.bwrap is not None,
        cgroup=plan,
        rlimits=tuple(rlimits),
    )


# -- reading what the kernel offers (pure) ---------------------------------------------


@dataclass(frozen=True)
class CgroupMount:
    version: Literal[1, 2]
    mount_point: Path
    root: str  # the part of the hierarchy the mount shows
    controllers: frozenset[str]  # v1 only; v2 lists them in cgroup.controllers


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup mounts in a ``/proc/self/mountinfo`` text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            mounts.append(CgroupMount(2, point, fields[3], frozenset()))
        elif fstype == "cgroup":
            controllers = frozenset(o for o in options if o in ("memory", "cpu"))
            mounts.append(CgroupMount(1, point, fields[3], controllers))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Our cgroup path per controller (``""`` for v2) from ``/proc/self/cgroup``."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def cgroup_candidates(mounts: list[CgroupMount], own: Mapping[str, str]) -> list[CgroupSupport]:
    """Where app cgroups could go, best first: v2, then v1 with both memory and cpu.

    Each is nested under the agent's own cgroup, so the agent never escapes the limits the
    device's init gave it, and a service manager that stops the agent stops its apps.
    """

    def under(mount: CgroupMount, own_path: str) -> Path:
        relative = os.path.relpath(own_path, mount.root) if own_path.startswith(mount.root) else "."
        return (mount.mount_point / relative).resolve() / CGROUP_ROOT_NAME

    found: list[CgroupSupport] = []
    for mount in mounts:
        if mount.version == 2 and "" in own:
            found.append(CgroupSupport(2, {"": under(mount, own[""])}))
    v1 = {}
    for mount in mounts:
        for controller in mount.controllers:
            if controller in own and controller not in v1:
                v1[controller] = under(mount, own[controller])
    if {"memory", "cpu"} <= v1.keys():
        found.append(CgroupSupport(1, {"memory": v1["memory"], "cpu": v1["cpu"]}))
    return found


# -- probing (the shell) ---------------------------------------------------------------


def detect_isolation() -> Capabilities:
    """Find what this device allows. Blocking: it runs bubblewrap and makes directories."""
    return Capabilities(bwrap=working_bwrap(), cgroup=_usable_cgroup())


def working_bwrap() -> str | None:
    path = shutil.which("bwrap")
    if path is None:
        return None
    # Being installed is not enough: user namespaces may be off, or setuid missing.
    argv = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", _TMP]
    argv += ["--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"]
    # The interpreter itself: a venv under /tmp would be hidden by the sandbox's own /tmp.
    argv += ["--", os.path.realpath(sys.executable), "-I", "-S", "-c", ""]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return path if done.returncode == 0 else None


def _usable_cgroup() -> CgroupSupport | None:
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    for support in cgroup_candidates(mounts, own):
        if _try_cgroup(support):
            return support
    return None


def _try_cgroup(support: CgroupSupport) -> bool:
    """Make the ``roost`` cgroup and a probe cgroup in it, and check limits are writable."""
    probe = f".probe-{os.getpid()}"
    try:
        if support.version == 2:
            base = support.bases[""]
            wanted = {"memory", "cpu"}
            if not wanted <= set((base.parent / "cgroup.controllers").read_text().split()):
                return False
            enabled = set((base.parent / "cgroup.subtree_control").read_text().split())
            if not wanted <= enabled:
                (base.parent / "cgroup.subtree_control").write_text("+memory +cpu")
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+memory +cpu")
        for base in support.bases.values():
            base.mkdir(exist_ok=True)
        plan = cgroup_plan(probe, 64 << 20, 0.5, support)
        try:
            for directory in plan.dirs:
                directory.mkdir(exist_ok=True)
            for limit_file, value in plan.limits:
                limit_file.write_text(value)
        finally:
            for directory in plan.dirs:
                if directory.exists():
                    directory.rmdir()
    except OSError:
        return False
    return True
