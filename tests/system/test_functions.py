"""Functions on a real hub: deployed and refused through the CLI, invoked through the
CLI, the HTTP trigger and a rule's ``invoke`` action, and every invocation in the logs.
The hub's own data dir is out of the function's reach."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path

import httpx

from system.harness import Hub, cli, cli_ok
from system.procs import StartProc, wait_for

GREET = """\
def handle(event, ctx):
    print("greeting", event["data"])
    if ctx["trigger"] == "rule":
        return {"hello": event["data"], "key": ctx["key"]}
    return {"hello": event["data"], "function": ctx["function"]}
"""

RULE = """\
id: greet-on-door
trigger: {type: app.door.state}
actions: [{kind: invoke, function: greet}]
"""


def test_functions_through_the_cli_the_http_trigger_and_a_rule(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"

    broken = tmp_path / "broken.py"
    broken.write_text("def handle(event, ctx):\n    return (\n")
    refused = cli(config, "fn", "deploy", str(broken), "--name", "greet")
    assert refused.returncode != 0
    assert "broken.py:2:" in refused.stderr
    assert "syntax error" in refused.stderr
    nohandle = tmp_path / "nohandle.py"
    nohandle.write_text("def run(event, ctx):\n    return 1\n")
    refused = cli(config, "fn", "deploy", str(nohandle), "--name", "greet")
    assert "nohandle.py defines no handle(event, ctx) function" in refused.stderr
    assert cli_ok(config, "fn", "ls") == ""

    rule = tmp_path / "rule.yaml"
    rule.write_text(RULE)
    assert "no function 'greet'" in cli(config, "rules", "apply", str(rule)).stderr

    greet = tmp_path / "greet.py"
    greet.write_text(GREET)
    deployed = cli_ok(config, "fn", "deploy", str(greet), "--name", "greet", "--timeout", "3s")
    assert deployed == "function greet version 1 deployed (on hub)\n"
    assert "greet  v1  on hub  timeout 3s  memory 128M  concurrency 4" in cli_ok(config, "fn", "ls")

    invoked = cli_ok(config, "fn", "invoke", "greet", "--data", '"cli"')
    assert json.loads(invoked) == {"hello": "cli", "function": "greet"}

    token = _token(config)
    ca = ssl.create_default_context(cafile=str(hub.data_dir / "pki" / "ca.pem"))
    answer = httpx.post(
        f"{hub.url}/v1/fn/greet",
        content=b'{"via": "http"}',
        headers={"authorization": f"Bearer {token}"},
        verify=ca,
    )
    assert answer.status_code == 200
    assert answer.json() == {"hello": {"via": "http"}, "function": "greet"}
    assert httpx.post(f"{hub.url}/v1/fn/greet", verify=ca).status_code == 401
    with hub.client() as api:
        acme_token = api.create_tenant("acme")["admin_token"]
        with api.with_token(acme_token) as acme:
            assert acme.functions() == [], "another tenant sees none of them"
    elsewhere = httpx.post(
        f"{hub.url}/v1/fn/greet", headers={"authorization": f"Bearer {acme_token}"}, verify=ca
    )
    assert elsewhere.status_code == 404
    assert elsewhere.json() == {"error": "no function 'greet'"}

    cli_ok(config, "rules", "apply", str(rule))
    with hub.client() as api:
        api.send_event("app.door.state", {"state": "open"}, subject="front")
        wait_for(
            lambda: any(i["trigger"] == "rule" for i in api.function_logs("greet")),
            timeout=30,
            what="the rule to invoke the function",
        )
        by_rule = next(i for i in api.function_logs("greet") if i["trigger"] == "rule")
    assert by_rule["ok"]
    assert by_rule["result"]["hello"] == {"state": "open"}
    with hub.client() as api:
        (action,) = api.actions(rule="greet-on-door")
    assert by_rule["result"]["key"] == action["key"], "the action's idempotency key"

    logs = cli_ok(config, "fn", "logs", "greet").splitlines()
    assert sum(" ok" in line for line in logs if " ms " in line) == 3
    assert any("| greeting cli" in line for line in logs)

    # A new version reads the hub's data dir: the sandbox shows it empty.
    greet.write_text(f"def handle(event, ctx):\n    return open({str(config)!r}).read()\n")
    assert "version 2" in cli_ok(config, "fn", "deploy", str(greet), "--name", "greet")
    peek = cli(config, "fn", "invoke", "greet")
    assert peek.returncode == 1
    assert "FileNotFoundError" in peek.stderr
    greet.write_text(
        "import os\ndef handle(event, ctx):\n"
        "    return [os.listdir('/run'), os.listdir(os.path.expanduser('~'))]\n"
    )
    cli_ok(config, "fn", "deploy", str(greet), "--name", "greet")
    run, home = json.loads(cli_ok(config, "fn", "invoke", "greet"))
    assert run == [], "no system sockets"
    assert set(home) <= _python_in_home(), "of the home, only Python's installation"
    assert "  v2  " in cli_ok(config, "fn", "show", "greet")
    assert cli_ok(config, "fn", "rm", "greet") == "function greet removed\n"
    assert "no function 'greet'" in cli(config, "fn", "invoke", "greet").stderr


def _python_in_home() -> set[str]:
    home = Path.home().resolve()
    places = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    return {p.relative_to(home).parts[0] for p in places if p.is_relative_to(home)}


def _token(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("token"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no token in the client config")
