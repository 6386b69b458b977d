"""Per-app logs: capture, rotation by size, tail across rotated files."""

from __future__ import annotations

from pathlib import Path

from roost.agent.supervisor.logs import RotatingLog, log_path, tail


def test_rotation_keeps_n_files_and_tail_spans_them(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path, "app", max_bytes=100, keep=2)
    for i in range(40):
        log.write(f"line {i:03}\n".encode())  # 9 bytes a line: 11 lines a file
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["app.log", "app.log.1", "app.log.2"]
    for generation in range(3):
        assert log_path(tmp_path, "app", generation).stat().st_size <= 100
    assert tail(tmp_path, "app", 3) == ["line 037", "line 038", "line 039"]
    # Across files, oldest first, and never more than is kept.
    lines = tail(tmp_path, "app", 1000)
    assert lines == [f"line {i:03}" for i in range(40 - len(lines), 40)]
    assert 22 <= len(lines) <= 33


def test_reopen_appends(tmp_path: Path) -> None:
    for word in ("one", "two"):
        log = RotatingLog(tmp_path, "app")
        log.write(f"{word}\n".encode())
        log.close()
    assert tail(tmp_path, "app", 10) == ["one", "two"]


def test_tail_of_nothing(tmp_path: Path) -> None:
    assert tail(tmp_path, "none", 10) == []
    assert tail(tmp_path, "none", 0) == []
