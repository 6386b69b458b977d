"""Bad functions are refused at deploy with a clear message, before anything is kept."""

from __future__ import annotations

import pytest

from roost.errors import ValidationError
from roost.functions.service import MAX_CODE_BYTES, Limits, check_code
from roost.settings import HubSettings

GOOD = "def handle(event, ctx):\n    return event\n"


@pytest.mark.parametrize(
    ("files", "entry", "message"),
    [
        ({"f.py": "def handle(event, ctx):\n    return (\n"}, "f", r"^f\.py:2:12: syntax error: "),
        ({"main.py": "x = 1\n"}, "main", r"^main\.py defines no handle\(event, ctx\) function$"),
        ({"main.py": GOOD, "lib/u.py": "def f(:\n"}, "main", r"^lib/u\.py:1:7: syntax error"),
        ({"main.py": "def handle(event):\n    pass\n"}, "main", "handle must take two arguments"),
        ({"main.py": "async def handle(e, c):\n    pass\n"}, "main", "not async"),
        ({"lib.py": GOOD}, "main", r"^the function has no main\.py \(the module with handle\)$"),
        ({"../x.py": GOOD}, "main", r"is not a relative path of a \.py file"),
        ({}, "main", "at least one .py file"),
        ({"main.py": GOOD + "#" * MAX_CODE_BYTES}, "main", f"at most {MAX_CODE_BYTES} are taken"),
    ],
)
def test_bad_code_is_refused_with_a_message(
    files: dict[str, str], entry: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        check_code(files, entry)


def test_good_code_passes() -> None:
    check_code({"main.py": "from lib import handle\n", "lib.py": GOOD}, "main")
    check_code({"main.py": GOOD}, "main")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(timeout_s=0), "timeout must be above 0 and at most 60s"),
        (Limits(memory_bytes=1 << 20), "memory must be between 48 MiB and 1024 MiB"),
        (Limits(concurrency=0), "concurrency must be between 1 and 16"),
        (Limits(network=True), "this hub gives functions no network"),
    ],
)
def test_limits_past_the_hubs_are_refused(limits: Limits, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        limits.check(HubSettings())
