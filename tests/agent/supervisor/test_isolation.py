"""The pure launch decision and the parsing of what the kernel offers, table-driven."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from roost.agent.supervisor.isolation import (
    Capabilities,
    CgroupMount,
    CgroupSupport,
    cgroup_candidates,
    parse_mountinfo,
    parse_proc_cgroup,
    plan_launch,
)
from roost.agent.supervisor.spec import RunSpec
from roost.errors import AppError

V1 = CgroupSupport(1, {"memory": Path("/cg/memory/roost"), "cpu": Path("/cg/cpu/roost")})
V2 = CgroupSupport(2, {"": Path("/cg/agent/roost")})


def _spec(**kw: object) -> RunSpec:
    args: dict[str, object] = {
        "name": "web",
        "version": "1.2",
        "command": ("/app/run", "--x"),
        "app_dir": Path("/apps/web/1.2"),
        "log_dir": Path("/logs"),
        "data_dir": Path("/data/web"),
    }
    args.update(kw)
    return RunSpec(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("caps", "label"),
    [
        (Capabilities(bwrap="/usr/bin/bwrap", cgroup=V1), "bwrap+cgroup-v1"),
        (Capabilities(bwrap="/usr/bin/bwrap", cgroup=V2), "bwrap+cgroup-v2"),
        (Capabilities(bwrap="/usr/bin/bwrap"), "bwrap+rlimits"),
        (Capabilities(cgroup=V1), "cgroup-v1"),
        (Capabilities(), "rlimits"),
    ],
)
def test_isolation_label(caps: Capabilities, label: str) -> None:
    launch = plan_launch(_spec(), caps)
    assert launch.isolation == label
    assert launch.sandboxed == (caps.bwrap is not None)
    assert (launch.cgroup is not None) == (caps.cgroup is not None)


def test_bwrap_flags() -> None:
    argv = plan_launch(_spec(), Capabilities(bwrap="/usr/bin/bwrap")).argv
    joined = " ".join(argv)
    for flags in [
        "--ro-bind / /",
        "--dev /dev",
        "--proc /proc",
        "--tmpfs /tmp",
        "--ro-bind /apps/web/1.2 /apps/web/1.2",
        "--bind /data/web /data/web",
        "--unshare-net",
        "--unshare-pid",
        "--die-with-parent",
        "--new-session",
        "--chdir /apps/web/1.2",
    ]:
        assert flags in joined
    assert argv[0] == "/usr/bin/bwrap"
    assert argv[-3:] == ("--", "/app/run", "--x")
    # The tmpfs comes before the binds, which would otherwise be hidden under /tmp.
    assert argv.index("--tmpfs") < argv.index("--bind")


@pytest.mark.parametrize(("network", "unshared"), [(False, True), (True, False)])
def test_network_unshared_unless_asked(network: bool, unshared: bool) -> None:
    argv = plan_launch(_spec(network=network), Capabilities(bwrap="bwrap")).argv
    assert ("--unshare-net" in argv) == unshared


def test_no_data_dir_no_writable_bind() -> None:
    argv = plan_launch(_spec(data_dir=None), Capabilities(bwrap="bwrap")).argv
    assert "--bind" not in argv


def test_plain_process_runs_the_command_itself() -> None:
    launch = plan_launch(_spec(memory_bytes=64 << 20), Capabilities(), nofile=256)
    assert launch.argv == ("/app/run", "--x")
    assert launch.cwd == Path("/apps/web/1.2")
    assert dict(launch.rlimits) == {
        resource.RLIMIT_NOFILE: 256,
        resource.RLIMIT_DATA: 64 << 20,
    }


@pytest.mark.parametrize(
    ("support", "memory", "cpu", "limits"),
    [
        (
            V1,
            64 << 20,
            0.5,
            {
                "/cg/memory/roost/web/memory.limit_in_bytes": str(64 << 20),
                "/cg/cpu/roost/web/cpu.cfs_period_us": "100000",
                "/cg/cpu/roost/web/cpu.cfs_quota_us": "50000",
            },
        ),
        (
            V1,
            None,
            None,
            {
                "/cg/memory/roost/web/memory.limit_in_bytes": "-1",
                "/cg/cpu/roost/web/cpu.cfs_period_us": "100000",
                "/cg/cpu/roost/web/cpu.cfs_quota_us": "-1",
            },
        ),
        (
            V2,
            64 << 20,
            2.0,
            {
                "/cg/agent/roost/web/memory.max": str(64 << 20),
                "/cg/agent/roost/web/cpu.max": "200000 100000",
            },
        ),
        (
            V2,
            None,
            None,
            {"/cg/agent/roost/web/memory.max": "max", "/cg/agent/roost/web/cpu.max": "max 100000"},
        ),
    ],
)
def test_cgroup_limits(
    support: CgroupSupport, memory: int | None, cpu: float | None, limits: dict[str, str]
) -> None:
    launch = plan_launch(_spec(memory_bytes=memory, cpu=cpu), Capabilities(cgroup=support))
    assert launch.cgroup is not None
    assert {str(path): value for path, value in launch.cgroup.limits} == limits
    # With a cgroup, memory is not also bounded by an rlimit.
    assert resource.RLIMIT_DATA not in dict(launch.rlimits)


def test_env_base_then_spec() -> None:
    env = plan_launch(_spec(env={"A": "1", "HOME": "/elsewhere"}), Capabilities(), path="/p").env
    assert env["PATH"] == "/p"
    assert env["A"] == "1"
    assert env["HOME"] == "/elsewhere"
    assert env["ROOST_DATA_DIR"] == "/data/web"
    assert env["ROOST_APP_VERSION"] == "1.2"


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP = """\
4:memory:/agents/a1
1:cpu,cpuacct:/
0::/
"""


def test_parse_and_candidates() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts == [
        CgroupMount(1, Path("/sys/fs/cgroup/cpu"), "/", frozenset({"cpu"})),
        CgroupMount(1, Path("/sys/fs/cgroup/memory"), "/", frozenset({"memory"})),
        CgroupMount(2, Path("/sys/fs/cgroup/unified"), "/", frozenset()),
    ]
    own = parse_proc_cgroup(PROC_CGROUP)
    assert own == {"memory": "/agents/a1", "cpu": "/", "cpuacct": "/", "": "/"}
    assert cgroup_candidates(mounts, own) == [
        CgroupSupport(2, {"": Path("/sys/fs/cgroup/unified/roost")}),
        CgroupSupport(
            1,
            {
                "memory": Path("/sys/fs/cgroup/memory/agents/a1/roost"),
                "cpu": Path("/sys/fs/cgroup/cpu/roost"),
            },
        ),
    ]


def test_v1_needs_both_controllers() -> None:
    mounts = parse_mountinfo(MOUNTINFO.replace("rw,cpu\n", "rw,cpuset\n"))
    assert cgroup_candidates(mounts, {"memory": "/", "cpu": "/"}) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "Bad Name"},
        {"version": ""},
        {"command": ()},
        {"app_dir": Path("relative")},
        {"data_dir": Path("relative")},
        {"memory_bytes": 1000},
        {"cpu": 0.0},
        {"env": {"A=B": "x"}},
    ],
)
def test_spec_validation(bad: dict[str, object]) -> None:
    with pytest.raises(AppError):
        _spec(**bad)


def test_spec_is_frozen_against_its_callers_dict() -> None:
    env = {"A": "1"}
    spec = _spec(env=env)
    env["A"] = "2"
    assert spec.env["A"] == "1"
    assert spec == _spec(env={"A": "1"})
    assert spec != _spec(env={"A": "1"}, version="2")
