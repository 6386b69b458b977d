"""The agent's own update: which version a start runs and when it rolls back (pure), staging
a release beside the running agent, and the trial's guard in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost import __version__ as BASE
from roost.agent import selfupdate
from roost.agent.selfupdate import (
    BootState,
    Launch,
    Outcome,
    Trial,
    confirmed,
    decide,
    entry,
    refused,
    staged,
    wants,
)
from roost.apps.manifest import AGENT_NAME
from roost.errors import BundleError
from system.agent_releases import write_agent_release

NOW = 1_800_000_000.0
BOTH = frozenset({"0.2.0", "0.3.0"})


def test_the_name_is_the_manifests() -> None:
    assert selfupdate.NAME == AGENT_NAME


# -- which version a start runs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "installed", "failure", "launch", "after"),
    [
        # Nothing ever updated: the installed agent runs.
        (BootState(), frozenset(), None, Launch(None), BootState()),
        # A confirmed version runs; one that vanished gives way to the installed agent.
        (BootState("0.2.0"), BOTH, None, Launch("0.2.0"), BootState("0.2.0")),
        (BootState("0.2.0", "0.1.0"), frozenset(), None, Launch(None), BootState(None, "0.1.0")),
        # A staged trial starts once, counted before it starts.
        (
            BootState("0.2.0", trial=Trial("0.3.0", NOW - 5)),
            BOTH,
            None,
            Launch("0.3.0", trial=True),
            BootState("0.2.0", trial=Trial("0.3.0", NOW - 5, attempts=1)),
        ),
        # A start that finds it started and not confirmed goes back, saying why.
        (
            BootState("0.2.0", trial=Trial("0.3.0", NOW - 5, attempts=1)),
            BOTH,
            "0.3.0 did not come online within 120s",
            Launch("0.2.0"),
            BootState(
                "0.2.0",
                outcome=Outcome(
                    "0.3.0",
                    "rolled-back",
                    NOW,
                    "0.3.0 did not come online within 120s; rolled back to 0.2.0",
                ),
            ),
        ),
        (
            BootState(trial=Trial("0.3.0", NOW - 5, attempts=1)),
            BOTH,
            None,
            Launch(None),
            BootState(
                outcome=Outcome(
                    "0.3.0",
                    "rolled-back",
                    NOW,
                    f"0.3.0 did not come online before the agent restarted; rolled back to {BASE}",
                ),
            ),
        ),
        (
            BootState("0.2.0", trial=Trial("0.3.0", NOW - 5)),
            frozenset({"0.2.0"}),
            None,
            Launch("0.2.0"),
            BootState(
                "0.2.0",
                outcome=Outcome(
                    "0.3.0", "rolled-back", NOW, "0.3.0 is not installed; rolled back to 0.2.0"
                ),
            ),
        ),
    ],
)
def test_decide(
    state: BootState,
    installed: frozenset[str],
    failure: str | None,
    launch: Launch,
    after: BootState,
) -> None:
    assert decide(state, installed, BASE, failure, NOW) == (launch, after)


versions = st.sampled_from(["0.2.0", "0.3.0", "0.4.0"])
states = st.builds(
    BootState,
    current=st.none() | versions,
    previous=st.none() | versions,
    trial=st.none() | st.builds(Trial, versions, st.just(NOW), st.integers(0, 3)),
    outcome=st.none()
    | st.builds(
        Outcome,
        versions,
        st.sampled_from(["installed", "rolled-back", "failed"]),
        st.just(NOW),
        st.none() | st.text(max_size=20),
    ),
)


@given(states, st.frozensets(versions), st.none() | st.text(max_size=20))
def test_a_trial_runs_at_most_once_and_a_start_runs_something_installed(
    state: BootState, installed: frozenset[str], failure: str | None
) -> None:
    launch, after = decide(state, installed, BASE, failure, NOW)
    assert launch.version is None or launch.version in installed
    if launch.trial:
        assert after.trial is not None
        assert after.trial.attempts == 1
        assert launch.version == after.trial.version
    else:
        assert after.trial is None
        assert launch.version == after.current
    # Deciding again after a trial start rolls it back: no start loops on a bad version.
    if launch.trial:
        again, final = decide(after, installed, BASE, None, NOW)
        assert not again.trial
        assert final.outcome is not None
        assert final.outcome.state == "rolled-back"


@given(states)
def test_the_state_file_round_trips(state: BootState) -> None:
    assert BootState.from_json(json.loads(json.dumps(state.to_json()))) == state


@pytest.mark.parametrize("raw", [[], "x", {"trial": {"version": "1.0.0"}}, {"outcome": 3}])
def test_a_malformed_state_file_runs_the_installed_agent(raw: object) -> None:
    assert BootState.from_json(raw) == BootState()


def test_staging_confirming_and_refusing() -> None:
    running = BootState("0.2.0", "0.1.0")
    on_trial = staged(running, "0.3.0", NOW)
    assert on_trial == BootState("0.2.0", None, Trial("0.3.0", NOW))  # 0.1.0 made room
    assert confirmed(on_trial, "0.3.0", NOW + 9) == BootState(
        "0.3.0", "0.2.0", outcome=Outcome("0.3.0", "installed", NOW + 9)
    )
    assert confirmed(on_trial, "0.4.0", NOW) is None
    assert confirmed(running, "0.2.0", NOW) is None
    assert refused(running, "0.3.0", "bad", NOW).outcome == Outcome("0.3.0", "failed", NOW, "bad")


BACK = Outcome("0.3.0", "rolled-back", NOW, "0.3.0 did not come online; rolled back to 0.2.0")


@pytest.mark.parametrize(
    ("state", "wanted", "fetch", "after"),
    [
        (BootState("0.2.0"), "0.2.0", False, BootState("0.2.0")),  # runs already
        (BootState("0.2.0"), "0.3.0", True, BootState("0.2.0")),
        (
            BootState(trial=Trial("0.3.0", NOW)),
            "0.4.0",
            False,
            BootState(trial=Trial("0.3.0", NOW)),
        ),
        # Not again until the desired state names another version ...
        (BootState("0.2.0", outcome=BACK), "0.3.0", False, BootState("0.2.0", outcome=BACK)),
        # ... which forgets it, even when that other one is the one running.
        (BootState("0.2.0", outcome=BACK), "0.2.0", False, BootState("0.2.0")),
        (BootState("0.2.0", outcome=BACK), "0.4.0", True, BootState("0.2.0")),
        (
            BootState(outcome=Outcome("0.3.0", "installed", NOW)),
            "0.3.0",
            True,
            BootState(outcome=Outcome("0.3.0", "installed", NOW)),
        ),
    ],
)
def test_wants(state: BootState, wanted: str, fetch: bool, after: BootState) -> None:
    assert wants(state, "0.2.0", wanted) == (fetch, after)


@pytest.mark.parametrize(
    ("state", "wanted", "expected"),
    [
        (BootState(), None, {"state": "installed", "since": 5.0}),
        (BootState(), "0.2.0", {"state": "installed", "since": 5.0}),
        (BootState(), "0.3.0", {"state": "installing", "since": 5.0}),
        (
            BootState(outcome=Outcome("0.2.0", "installed", NOW)),
            "0.2.0",
            {"state": "installed", "since": NOW},
        ),
        (BootState(trial=Trial("0.3.0", NOW)), "0.3.0", {"state": "installing", "since": NOW}),
        (
            BootState(outcome=BACK),
            "0.3.0",
            {"state": "rolled-back", "since": NOW, "error": BACK.error},
        ),
        (
            BootState(outcome=Outcome("0.3.0", "failed", NOW, "bad")),
            "0.3.0",
            {"state": "failed", "since": NOW, "error": "bad"},
        ),
        (BootState(outcome=BACK), "0.4.0", {"state": "installing", "since": 5.0}),
    ],
)
def test_entry(state: BootState, wanted: str | None, expected: dict[str, object]) -> None:
    base = {"kind": "agent", "version": "0.2.0", "wanted": wanted}
    assert entry(state, "0.2.0", wanted, 5.0) == base | expected


# -- staging a release ----------------------------------------------------------------------


def agent_dir(data: Path) -> Path:
    return data / "agent"


def test_a_release_is_staged_beside_the_running_agent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    release = write_agent_release(tmp_path, "0.2.0")
    assert selfupdate.needs(data, "0.2.0")
    selfupdate.stage(data, release, "0.2.0")

    version_dir = agent_dir(data) / "versions" / "0.2.0"
    assert (version_dir / selfupdate.MARKER).is_file()
    assert (version_dir / "roost" / "agent" / "runtime.py").is_file()
    assert list(version_dir.glob("roost/agent/__pycache__/*.pyc")), "compiled while staged"
    assert not (agent_dir(data) / ".incoming").exists()
    assert selfupdate.installed(data) == {"0.2.0"}
    state = selfupdate.load(data)
    assert state.trial is not None
    assert (state.current, state.trial.version, state.trial.attempts) == (None, "0.2.0", 0)
    assert selfupdate.report(data, "0.2.0")["state"] == "installing"
    assert not selfupdate.needs(data, "0.2.0")  # under way


def test_confirming_makes_the_trial_current_and_keeps_two_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    for version in ("0.2.0", "0.3.0"):
        (agent_dir(data) / "versions" / version).mkdir(parents=True)
        (agent_dir(data) / "versions" / version / selfupdate.MARKER).write_text(version)
    selfupdate._save(data, BootState("0.2.0", trial=Trial("0.3.0", NOW, attempts=1)))

    assert not selfupdate.confirm(data)  # this process runs the installed agent
    monkeypatch.setattr(selfupdate, "running_from", lambda _data: "0.3.0")
    assert selfupdate.confirm(data)
    state = selfupdate.load(data)
    assert (state.current, state.previous, state.trial) == ("0.3.0", "0.2.0", None)
    assert selfupdate.installed(data) == {"0.2.0", "0.3.0"}
    assert not selfupdate.confirm(data)  # once


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda src: (src / "roost.toml").write_text(
                'name = "web"\nversion = "0.2.0"\ncommand = "x"\n'
            ),
            "web 0.2.0 is not an agent release",
        ),
        (
            lambda src: (src / "roost.toml").write_text(
                'name = "roost-agent"\nkind = "agent"\nversion = "0.2.1"\n'
            ),
            "the release of roost-agent 0.2.0 says it is 0.2.1",
        ),
        (
            lambda src: (src / "roost.toml").write_text(
                'name = "roost-agent"\nkind = "agent"\nversion = "0.2.0"\n'
                '[agent]\npython = "3.99"\n'
            ),
            "roost-agent 0.2.0 needs Python 3.99; this device has 3.",
        ),
        (
            lambda src: (src / "roost" / "__init__.py").unlink(),
            "roost-agent 0.2.0: the release has no roost/__init__.py",
        ),
        (
            lambda src: (src / "roost" / "__init__.py").write_text('__version__ = "0.1.9"\n'),
            "roost-agent 0.2.0 cannot run here: its roost package says it is 0.1.9",
        ),
        (
            lambda src: (src / "roost" / "wire" / "topics.py").write_text("def (:\n"),
            "roost-agent 0.2.0 cannot run here: a module of its roost package does not compile",
        ),
        (
            lambda src: (src / "roost" / "agent" / "runtime.py").write_text("import nowhere\n"),
            "roost-agent 0.2.0 cannot run here: ModuleNotFoundError: No module named 'nowhere'",
        ),
        (
            lambda src: (src / "roost" / "agent" / "selfupdate.py").write_text("boot = 1\n"),
            "roost-agent 0.2.0 cannot run here: roost.agent.selfupdate has no boot()",
        ),
    ],
)
def test_an_unusable_release_is_refused_and_remembered(
    tmp_path: Path, change: Callable[[Path], object], expected: str
) -> None:
    data = tmp_path / "data"
    release = write_agent_release(tmp_path, "0.2.0")
    change(release)
    with pytest.raises(BundleError) as err:
        selfupdate.stage(data, release, "0.2.0")
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)
    assert selfupdate.installed(data) == frozenset()
    assert not (agent_dir(data) / ".incoming").exists()
    reported = selfupdate.report(data, "0.2.0")
    assert (reported["state"], reported["error"]) == ("failed", str(err.value))
    assert not selfupdate.needs(data, "0.2.0")
    assert selfupdate.needs(data, "0.2.1")  # another version: the refusal is forgotten
    assert selfupdate.report(data, "0.2.0")["state"] == "installing"


def test_the_running_version_is_not_staged(tmp_path: Path) -> None:
    release = write_agent_release(tmp_path, BASE)
    with pytest.raises(BundleError, match="is the version running"):
        selfupdate.stage(tmp_path / "data", release, BASE)


def test_restart_into_trial_stops_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfupdate, "_restart", False)
    stopped = []
    assert not selfupdate.restart_requested()
    selfupdate.restart_into_trial(lambda: stopped.append(True))
    assert stopped == [True]
    assert selfupdate.restart_requested()


# -- the boot and the trial's guard, in real processes --------------------------------------

# A stand-in for a new version: a roost package whose CLI does one thing.
FAKE_CLI = """\
import sys, time
import roost

def main(argv):
    print(f"fake agent {roost.__version__} from {roost.__file__} args {argv}", flush=True)
    {behaviour}
"""
BEHAVIOURS = {
    "raise": 'raise RuntimeError("broken on purpose")',
    "hang": "time.sleep(600)",
    "exit": "return 3",
    "stop": "return 0",
}


def fake_version(data: Path, version: str, behaviour: str) -> None:
    package = agent_dir(data) / "versions" / version / "roost"
    (package / "agent").mkdir(parents=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (package / "agent" / "__init__.py").write_text("")
    cli = FAKE_CLI.replace("{behaviour}", BEHAVIOURS[behaviour])
    (package / "agent" / "cli.py").write_text(cli)
    (package.parent / selfupdate.MARKER).write_text(version)


def start_agent(data: Path, grace_s: float = 5) -> subprocess.CompletedProcess[str]:
    """``roost agent run`` as a service manager starts it (the device is not enrolled, so
    the installed agent, once it runs, stops at once with an error)."""
    return subprocess.run(
        [sys.executable, "-c", selfupdate.BOOT_ENTRY, "run", "--data", str(data)],
        env={**os.environ, "ROOST_SELF_UPDATE_GRACE_S": str(grace_s)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_confirmed_version_runs_in_place_of_the_installed_agent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fake_version(data, "0.2.0", "stop")
    selfupdate._save(data, BootState("0.2.0"))
    done = start_agent(data)
    assert done.returncode == 0, done.stderr
    package = agent_dir(data) / "versions" / "0.2.0" / "roost" / "__init__.py"
    assert f"fake agent 0.2.0 from {package}" in done.stdout
    assert "args ['run', '--data'" in done.stdout


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("raise", "0.3.0 failed to start: RuntimeError: broken on purpose"),
        ("exit", "0.3.0 exited with code 3 before it came online"),
        ("hang", "0.3.0 did not come online within 5s"),
    ],
)
def test_a_trial_that_fails_is_rolled_back_by_the_same_process(
    tmp_path: Path, behaviour: str, why: str
) -> None:
    data = tmp_path / "data"
    fake_version(data, "0.2.0", "stop")
    fake_version(data, "0.3.0", behaviour)
    selfupdate._save(data, BootState("0.2.0", trial=Trial("0.3.0", NOW)))

    done = start_agent(data)
    assert "fake agent 0.3.0" in done.stdout
    assert f"{why}; booting the agent again" in done.stderr
    # The boot that followed went back to 0.2.0 and ran it, in the same process.
    assert done.stdout.rstrip().endswith("args ['run', '--data', " + repr(str(data)) + "]")
    assert "fake agent 0.2.0" in done.stdout.splitlines()[-1]
    assert done.returncode == 0
    state = selfupdate.load(data)
    assert state.trial is None
    assert state.current == "0.2.0"
    assert state.outcome is not None
    assert (state.outcome.version, state.outcome.state) == ("0.3.0", "rolled-back")
    assert state.outcome.error == f"{why}; rolled back to 0.2.0"
    assert selfupdate.installed(data) == {"0.2.0"}  # the bad version is gone


def test_a_trial_stopped_before_it_came_online_is_rolled_back_at_the_next_start(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    fake_version(data, "0.3.0", "stop")
    selfupdate._save(data, BootState(trial=Trial("0.3.0", NOW)))

    first = start_agent(data)
    assert first.returncode == 0, first.stderr
    assert "fake agent 0.3.0" in first.stdout
    assert selfupdate.load(data).trial == Trial("0.3.0", NOW, attempts=1)

    # As a service manager (or a person) starts it again: the installed agent runs.
    second = start_agent(data)
    assert "fake agent" not in second.stdout
    assert "this device is not enrolled" in second.stderr
    outcome = selfupdate.load(data).outcome
    assert outcome is not None
    assert outcome.error == (
        f"0.3.0 did not come online before the agent restarted; rolled back to {BASE}"
    )
