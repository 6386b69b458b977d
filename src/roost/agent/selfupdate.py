"""The agent's own update: a new version beside the old, switched, rolled back by itself.

A release of kind ``agent`` (catalog name ``roost-agent``) comes through the same TUF
verification and rollout gates as an app. Its bundle holds ``roost.toml`` and ``roost/``,
the ``roost`` package source; it runs on the device's Python with the libraries the
installed agent has.

Contract for the reconciler (``roost.agent.apps``); nothing else is needed::

    needs(data_dir, wanted) -> bool
        Fetch, verify and unpack ``wanted`` and stage it? False when it runs already, when
        a trial is under way, or when it was rolled back or refused and the desired state
        has not named another version since (asking with another version forgets that).
    stage(data_dir, release_dir, version) -> None          blocking: run it in a thread
        ``release_dir`` is the verified, unpacked release. Copies its ``roost/`` and
        ``roost.toml`` to ``DATA/agent/versions/<version>``, checks them (manifest, the
        package's ``__version__``, the Python it needs, every module compiles and the
        agent's modules import) and records the version as the pending trial. Raises
        ``BundleError`` (one line) when the release is unusable, and remembers the refusal
        (``report`` says ``failed``). The release dir may be removed afterwards.
    restart_into_trial(stop) -> None
        After ``stage``, when the desired state says apply: calls ``stop``
        (``Agent.stop``); once the agent has stopped its apps and disconnected, ``roost
        agent run`` replaces its process with the boot, which runs the trial. (With
        ``apply`` false, fetch and unpack only, and call neither until it is true.)
    report(data_dir, wanted) -> dict
        The reported entry: ``kind`` "agent", ``version`` (the one running), ``wanted``,
        ``state`` (installed, installing, rolled-back, failed), ``since``, ``error``.

The runtime calls ``confirm(data_dir)`` once the new version is online (connected, and
the hub acknowledged what it sent after its birth); that makes it the current version.

How it runs, under ``DATA/agent/``::

    state.json           current, previous, the trial and the last outcome (atomic writes)
    versions/<version>/  roost.toml and roost/; counts only with its marker file
    .incoming/           a version being staged; debris after a crash, cleared

The agent the device has installed (its own ``roost`` package: "the base") always boots.
``roost agent run`` starts in ``boot``: it reads ``state.json`` and either returns (the
base runs in this process) or replaces the process (``os.execv``: same pid, no extra
process) with ``python -c VERSION_ENTRY``, which runs ``run_version`` of the base: it drops the
base's ``roost`` modules, puts ``versions/<version>`` first on ``sys.path`` and calls that
version's ``roost.agent.cli.main``, whose own ``boot`` returns at once.

A trial is guarded by base code only, so the rollback never depends on the new code:

- ``boot`` counts the attempt in ``state.json`` before it starts the trial; a start that
  finds an attempt that was not confirmed rolls back (whatever ended it: a crash, a kill,
  a power cut). Under a service manager (``Restart=always``) that is the next start.
- The base's ``run_version`` arms a timer (``setitimer``, SIGALRM) for the grace period,
  catches anything the new version raises or an exit code other than 0 (a clean stop)
  and 130 (Ctrl-C), and then, if the trial is still unconfirmed, kills the processes the
  trial started (its apps) and replaces the process with the boot again, which rolls
  back: no service manager is needed for a crash, an exception or a hang.
- Should the new version block the interpreter so that the SIGALRM handler cannot run,
  ``faulthandler`` ends the process ``HARD_STOP_S`` later from a thread of its own (with
  the stacks of the hang); the service manager's restart then rolls back.

The device keeps at most two versions: the current one and the previous one (during a
trial, the current one and the trial). ``decide``, ``staged``, ``refused``, ``confirmed``,
``wants`` and ``entry`` are pure; the rest is the shell around them. It runs at every
start of every agent, so at the top it imports the standard library, ``roost.atomic`` and
``roost.errors`` only.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, NoReturn

from roost import __version__
from roost.agent.proctree import descendants
from roost.atomic import fsync_dir, write_atomic
from roost.errors import BundleError

log = logging.getLogger("roost.agent.selfupdate")

NAME: Final = "roost-agent"  # roost.apps.manifest.AGENT_NAME, without importing it at boot
# The grace period may pass by this much before a hung trial is ended from outside Python.
HARD_STOP_S: Final = 30.0
# How long staging may spend compiling and importing the new version.
CHECK_TIMEOUT_S: Final = 300.0
# A trial that was started this often without being confirmed is rolled back.
MAX_ATTEMPTS: Final = 1
# The reason a trial gave up, passed from the trial's process to the boot that follows it.
FAILURE_ENV: Final = "ROOST_AGENT_TRIAL_FAILURE"
# Exit codes of a trial that was stopped, not broken.
STOPPED_CODES: Final = (0, 130)

MARKER: Final = ".roost-complete"  # as in roost.apps.installs: written last, dropped first
STATE_FILE: Final = "state.json"
_VERSIONS: Final = "versions"
_INCOMING: Final = ".incoming"
DEFINITIVE: Final = ("rolled-back", "failed")

# python -c programs: the base agent's CLI, and a version of DATA/agent/versions.
BOOT_ENTRY: Final = "import sys\nfrom roost.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
VERSION_ENTRY: Final = (
    "import sys\nfrom roost.agent.selfupdate import run_version\nrun_version(sys.argv[1:])\n"
)
_CHECK = """\
import compileall, pathlib, sys
root, version = sys.argv[1], sys.argv[2]
if not compileall.compile_dir(root + "/roost", quiet=1):
    sys.exit("a module of its roost package does not compile")
sys.path.insert(0, root)
import roost
if not pathlib.Path(roost.__file__).resolve().is_relative_to(pathlib.Path(root).resolve()):
    sys.exit("it has no roost package")
if roost.__version__ != version:
    sys.exit(f"its roost package says it is {roost.__version__}")
from roost.agent import cli, runtime, selfupdate
for name in ("boot", "run_version", "confirm"):
    if not callable(getattr(selfupdate, name, None)):
        sys.exit(f"roost.agent.selfupdate has no {name}(): it could never be confirmed")
"""

_STARTED = time.time()
_lock = threading.Lock()  # read-modify-write of state.json (stage runs in a thread)
_restart = False


# -- the pure core --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """A version staged to be tried: started ``attempts`` times, not confirmed yet."""

    version: str
    staged_at: float
    attempts: int = 0


@dataclass(frozen=True)
class Outcome:
    """What became of ``version``: installed (confirmed), rolled-back or failed (refused)."""

    version: str
    state: str
    at: float
    error: str | None = None


@dataclass(frozen=True)
class BootState:
    """``state.json``. ``current`` None: the base agent; ``previous``: kept to go back to."""

    current: str | None = None
    previous: str | None = None
    trial: Trial | None = None
    outcome: Outcome | None = None

    @property
    def kept(self) -> set[str | None]:
        """The versions to keep on disk."""
        return {self.current, self.previous, self.trial.version if self.trial else None}

    def to_json(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "previous": self.previous,
            "trial": vars(self.trial) if self.trial else None,
            "outcome": vars(self.outcome) if self.outcome else None,
        }

    @classmethod
    def from_json(cls, raw: Any) -> BootState:
        """The state ``to_json`` wrote; a malformed file reads as the base running alone."""
        try:
            trial, outcome = raw.get("trial"), raw.get("outcome")
            state = cls(
                current=_text_or_none(raw.get("current")),
                previous=_text_or_none(raw.get("previous")),
                trial=Trial(
                    str(trial["version"]), float(trial["staged_at"]), int(trial["attempts"])
                )
                if trial
                else None,
                outcome=Outcome(
                    str(outcome["version"]),
                    str(outcome["state"]),
                    float(outcome["at"]),
                    _text_or_none(outcome.get("error")),
                )
                if outcome
                else None,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            log.warning("%s is malformed; running the installed agent", STATE_FILE)
            return cls()
        return state


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Launch:
    """What ``boot`` starts: ``version`` None is the base, in the booting process."""

    version: str | None
    trial: bool = False


def decide(
    state: BootState, installed: frozenset[str], base: str, failure: str | None, now: float
) -> tuple[Launch, BootState]:
    """Which version to start, and the state to write first.

    ``installed``: the complete versions on disk; ``base``: the installed agent's version;
    ``failure``: why the trial that ran before this start gave up, when it said so.
    """
    if state.current is not None and state.current not in installed:
        state = replace(state, current=None)  # gone: the base rather than nothing
    trial = state.trial
    if trial is not None and trial.version in installed and trial.attempts < MAX_ATTEMPTS:
        started = replace(trial, attempts=trial.attempts + 1)
        return Launch(trial.version, trial=True), replace(state, trial=started)
    if trial is not None:
        if trial.version not in installed:
            why = f"{trial.version} is not installed"
        else:
            why = failure or f"{trial.version} did not come online before the agent restarted"
        back = state.current or base
        outcome = Outcome(trial.version, "rolled-back", now, f"{why}; rolled back to {back}")
        state = replace(state, trial=None, outcome=outcome)
    return Launch(state.current), state


def staged(state: BootState, version: str, now: float) -> BootState:
    """``version`` is installed beside the current one, to be tried at the next start (the
    previous version makes room for it)."""
    return replace(state, previous=None, trial=Trial(version, now), outcome=None)


def refused(state: BootState, version: str, error: str, now: float) -> BootState:
    """Staging ``version`` failed for good."""
    return replace(state, outcome=Outcome(version, "failed", now, error))


def confirmed(state: BootState, version: str, now: float) -> BootState | None:
    """The trial of ``version`` came online: it is current, the old current previous.
    None when ``version`` is not on trial."""
    if state.trial is None or state.trial.version != version:
        return None
    return BootState(
        current=version,
        previous=state.current,
        trial=None,
        outcome=Outcome(version, "installed", now),
    )


def wants(state: BootState, running: str, wanted: str) -> tuple[bool, BootState]:
    """Whether ``wanted`` should be fetched and staged, and the state once the desired
    state names it (a version rolled back or refused is forgotten once another is named)."""
    outcome = state.outcome
    if outcome is not None and outcome.state in DEFINITIVE and outcome.version != wanted:
        state = replace(state, outcome=None)
        outcome = None
    if wanted == running or state.trial is not None:
        return False, state
    return not (outcome is not None and outcome.state in DEFINITIVE), state


def entry(state: BootState, running: str, wanted: str | None, started: float) -> dict[str, Any]:
    """The reported entry of ``roost-agent`` (``started``: when this process started)."""
    out: dict[str, Any] = {"kind": "agent", "version": running, "wanted": wanted}
    outcome = state.outcome
    if state.trial is not None:
        out |= {"state": "installing", "since": state.trial.staged_at}
    elif outcome is not None and outcome.version == wanted and outcome.state in DEFINITIVE:
        out |= {"state": outcome.state, "since": outcome.at, "error": outcome.error}
    elif wanted is None or wanted == running:
        confirmed_at = outcome.at if outcome is not None and outcome.version == running else None
        out |= {"state": "installed", "since": confirmed_at or started}
    else:
        out |= {"state": "installing", "since": started}
    return out


# -- state on disk --------------------------------------------------------------------------


def _root(data_dir: Path) -> Path:
    return data_dir / "agent"


def load(data_dir: Path) -> BootState:
    """``DATA/agent/state.json``; the base running alone when there is none."""
    try:
        raw = json.loads((_root(data_dir) / STATE_FILE).read_text())
    except FileNotFoundError:
        return BootState()
    except (OSError, ValueError):
        log.warning("cannot read %s; running the installed agent", STATE_FILE)
        return BootState()
    return BootState.from_json(raw)


def _save(data_dir: Path, state: BootState) -> None:
    root = _root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / STATE_FILE, json.dumps(state.to_json(), indent=1, sort_keys=True))


def _change(data_dir: Path, change: Callable[[BootState], BootState]) -> BootState:
    with _lock:
        before = load(data_dir)
        after = change(before)
        if after != before:
            _save(data_dir, after)
    return after


def installed(data_dir: Path) -> frozenset[str]:
    """The complete versions in ``DATA/agent/versions``."""
    versions = _root(data_dir) / _VERSIONS
    if not versions.is_dir():
        return frozenset()
    return frozenset(p.name for p in versions.iterdir() if (p / MARKER).is_file())


def _prune(data_dir: Path, keep: set[str | None]) -> None:
    """Remove versions not in ``keep``, and the debris of a staging cut short."""
    import shutil

    root = _root(data_dir)
    shutil.rmtree(root / _INCOMING, ignore_errors=True)
    versions = root / _VERSIONS
    if not versions.is_dir():
        return
    for path in versions.iterdir():
        if path.name not in keep:
            marker = path / MARKER
            if marker.is_file():  # un-mark first: a crash now leaves debris, not a version
                marker.unlink()
                fsync_dir(path)
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed agent version %s", path.name)


def running_from(data_dir: Path) -> str | None:
    """The version of ``DATA/agent/versions`` this process runs, None for the base."""
    import roost

    package = Path(roost.__file__).resolve().parent
    versions = (_root(data_dir) / _VERSIONS).resolve()
    return package.parent.name if package.parent.parent == versions else None


def is_trial(data_dir: Path) -> bool:
    """Whether this process runs a version on trial (to be confirmed once online)."""
    version = running_from(data_dir)
    trial = load(data_dir).trial if version is not None else None
    return trial is not None and trial.version == version


# -- the reconciler's side ------------------------------------------------------------------


def needs(data_dir: Path, wanted: str) -> bool:
    """Whether to fetch and stage ``wanted`` (module docstring)."""
    answer = False

    def change(state: BootState) -> BootState:
        nonlocal answer
        answer, state = wants(state, __version__, wanted)
        return state

    _change(data_dir, change)
    return answer


def report(data_dir: Path, wanted: str | None) -> dict[str, Any]:
    """The reported entry of ``roost-agent``."""
    return entry(load(data_dir), __version__, wanted, _STARTED)


def stage(data_dir: Path, release_dir: Path, version: str) -> None:
    """Install the verified, unpacked release beside the running agent as the pending trial.

    Blocking (copies, fsyncs, runs the new version's compile and import check).
    """
    try:
        _stage(data_dir, release_dir, version)
    except BundleError as err:
        error = str(err)
        with contextlib.suppress(OSError):  # then the reconciler's own record says it
            _change(data_dir, lambda state: refused(state, version, error, time.time()))
        log.warning("refused %s %s: %s", NAME, version, err)
        raise
    log.info("staged %s %s; it is tried at the next start", NAME, version)


def _stage(data_dir: Path, release_dir: Path, version: str) -> None:
    import shutil

    _check_release(release_dir, version)
    if version == __version__:
        raise BundleError(f"{NAME} {version} is the version running")
    _prune(data_dir, {load(data_dir).current, running_from(data_dir)})
    root = _root(data_dir)
    staging = root / _INCOMING / version
    try:
        staging.mkdir(parents=True)
        shutil.copytree(
            release_dir / "roost",
            staging / "roost",
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copy2(release_dir / "roost.toml", staging / "roost.toml")
        _check_runs(staging, version)
        _sync_tree(staging)
        write_atomic(staging / MARKER, version)
        fsync_dir(staging)
        versions = root / _VERSIONS
        versions.mkdir(exist_ok=True)
        staging.rename(versions / version)
        fsync_dir(versions)
        _change(data_dir, lambda state: staged(state, version, time.time()))
    except OSError as err:
        raise BundleError(f"{NAME} {version}: cannot install: {err}") from err
    finally:
        shutil.rmtree(root / _INCOMING, ignore_errors=True)


def _check_release(release_dir: Path, version: str) -> None:
    """The manifest and the package are those of ``version`` of the agent, for this Python."""
    from roost.apps.manifest import Manifest

    manifest = Manifest.load(release_dir)
    if manifest.kind != "agent" or manifest.agent is None:
        raise BundleError(f"{manifest.name} {manifest.version} is not an agent release")
    if str(manifest.version) != version:
        raise BundleError(f"the release of {NAME} {version} says it is {manifest.version}")
    if sys.version_info[:2] < manifest.agent.python:
        raise BundleError(
            f"{NAME} {version} needs Python {manifest.agent.python_text}; this device has "
            f"{sys.version_info.major}.{sys.version_info.minor}"
        )
    if not (release_dir / "roost" / "__init__.py").is_file():
        raise BundleError(f"{NAME} {version}: the release has no roost/__init__.py")


def _check_runs(staging: Path, version: str) -> None:
    """Compile every module of the new version and import the agent's, in a child process
    (the new code never runs in this one)."""
    import subprocess

    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, str(staging), version],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise BundleError(
            f"{NAME} {version} did not finish importing within {CHECK_TIMEOUT_S:g}s"
        ) from err
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
        last = next((line for line in reversed(lines) if line), f"exit code {done.returncode}")
        raise BundleError(f"{NAME} {version} cannot run here: {last}")


def _sync_tree(top: Path) -> None:
    """fsync every file and directory under ``top``: the marker must not outlive them."""
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(folder))


def restart_into_trial(stop: Callable[[], None]) -> None:
    """Stop the agent (``stop``: ``Agent.stop``) so that it starts again through the boot,
    which runs the staged trial."""
    global _restart  # noqa: PLW0603 - one process, one agent: it restarts or it does not
    _restart = True
    stop()


def restart_requested() -> bool:
    """Whether the agent stopped to restart into a trial (``roost agent run`` asks)."""
    return _restart


def exec_boot(agent_args: list[str], env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with the base agent's ``roost agent <agent_args>``."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-c", BOOT_ENTRY, *agent_args]
    os.execve(sys.executable, argv, os.environ if env is None else env)  # noqa: S606 - ours


# -- the runtime's side ---------------------------------------------------------------------


def confirm(data_dir: Path) -> bool:
    """This process runs a version on trial and it is online: make it current, end the
    watchdogs. False (and nothing changes) when this process is not on trial."""
    version = running_from(data_dir)
    if version is None:
        return False
    done = False

    def change(state: BootState) -> BootState:
        nonlocal done
        after = confirmed(state, version, time.time())
        done = after is not None
        return after or state

    try:
        state = _change(data_dir, change)
    except OSError as err:  # not recorded, not kept: the watchdogs roll it back
        log.error("cannot record that %s %s is online: %s", NAME, version, err)
        return False
    if not done:
        return False
    signal.setitimer(signal.ITIMER_REAL, 0)
    faulthandler.cancel_dump_traceback_later()
    with contextlib.suppress(OSError):
        _prune(data_dir, state.kept)
    log.info("%s %s is online: it is the agent now", NAME, version)
    return True


# -- the boot -------------------------------------------------------------------------------


def boot(data_dir: Path, grace_s: float, agent_args: list[str]) -> None:
    """Start the version ``state.json`` names: return to run the base here, or replace this
    process with the version. ``agent_args``: the ``roost agent`` arguments to run again."""
    if running_from(data_dir) is not None:
        return  # the boot that started this process decided
    failure = os.environ.pop(FAILURE_ENV, None)
    if not (_root(data_dir) / STATE_FILE).exists():
        return
    launch = Launch(None)
    rolled_back: Outcome | None = None

    def change(state: BootState) -> BootState:
        nonlocal launch, rolled_back
        launch, after = decide(state, installed(data_dir), __version__, failure, time.time())
        if after.outcome is not None and after.outcome != state.outcome:
            rolled_back = after.outcome
        return after

    try:
        state = _change(data_dir, change)
    except OSError as err:
        # An attempt that cannot be counted is not made: the current version runs.
        log.error("cannot update %s (%s); no trial this time", STATE_FILE, err)
        rolled_back, state = None, replace(load(data_dir), trial=None)
        launch, state = decide(state, installed(data_dir), __version__, None, time.time())
    if rolled_back is not None:
        log.warning("%s %s: %s", NAME, rolled_back.version, rolled_back.error)
    with contextlib.suppress(OSError):
        _prune(data_dir, state.kept)
    if launch.version is None:
        return
    mode = "trial" if launch.trial else "run"
    log.info("starting %s %s%s", NAME, launch.version, " on trial" if launch.trial else "")
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-c", VERSION_ENTRY, str(data_dir), launch.version, mode]
    os.execv(sys.executable, [*argv, str(grace_s), *agent_args])  # noqa: S606 - ours


def run_version(argv: list[str]) -> NoReturn:
    """``python -c VERSION_ENTRY DATA VERSION trial|run GRACE ARGS...``: run that version's
    ``roost agent ARGS``, guarded by this (the base's) code when it is on trial."""
    data_dir, version, mode, grace, *agent_args = argv
    guard = _Guard(Path(data_dir), version, float(grace), agent_args) if mode == "trial" else None
    if guard is not None:
        guard.arm()
    failure = None
    try:
        main = _import_cli(Path(data_dir) / "agent" / _VERSIONS / version)
        code = main(agent_args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException as err:  # anything at all: the new version is on trial
        import traceback

        traceback.print_exc()
        code = 1
        failure = f"{version} failed to start: {type(err).__name__}: {err}"
    if guard is not None and code not in STOPPED_CODES:
        guard.give_up(failure or f"{version} exited with code {code} before it came online")
    sys.exit(code)


def _import_cli(version_dir: Path) -> Callable[[list[str]], int]:
    """That version's ``roost.agent.cli.main``, in place of the base's ``roost``."""
    import importlib

    for name in [m for m in sys.modules if m == "roost" or m.startswith("roost.")]:
        del sys.modules[name]  # the functions running now keep their modules alive
    sys.path.insert(0, str(version_dir))
    importlib.invalidate_caches()
    cli = importlib.import_module("roost.agent.cli")
    main: Callable[[list[str]], int] = cli.main
    return main


class _Guard:
    """The watchdogs of a trial, set by the base before the new version is imported."""

    def __init__(self, data_dir: Path, version: str, grace_s: float, agent_args: list[str]):
        self.data_dir = data_dir
        self.version = version
        self.grace_s = grace_s
        self.agent_args = agent_args

    def arm(self) -> None:
        signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.grace_s)
        faulthandler.dump_traceback_later(self.grace_s + HARD_STOP_S, exit=True)

    def _expired(self, _signum: int, _frame: object) -> None:
        self.give_up(f"{self.version} did not come online within {self.grace_s:g}s")

    def give_up(self, why: str) -> None:
        """Unless the trial was confirmed meanwhile: stop what it started, boot again."""
        trial = load(self.data_dir).trial  # no lock: this may run in a signal handler
        if trial is None or trial.version != self.version:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        log.warning("%s; booting the agent again", why)
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        exec_boot(self.agent_args, {**os.environ, FAILURE_ENV: why})
