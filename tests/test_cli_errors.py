"""The command line never prints a traceback unless asked: bad input is one line and exit code 2, a bug
is one line ("internal error") and exit code 1, and ``olam-edit --debug CMD`` shows the traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from olam_edit import cli
from olam_edit.cli import stats as stats_module
from olam_edit.errors import StatsFileError, explain


def _replace_stats_command(monkeypatch: pytest.MonkeyPatch, body: Callable[[object], int]) -> None:
    """Make ``olam-edit stats`` run ``body`` (keeping the command's name and arguments)."""
    real = stats_module.cmd_stats

    @functools.wraps(real)  # copies cli_name, cli_help and configure
    def fake(args: object) -> int:
        return body(args)

    monkeypatch.setattr(stats_module, "cmd_stats", fake)


def _divide(args: object) -> int:
    raise ZeroDivisionError("division by zero")


def _stats_args() -> list[str]:
    return ["stats", "--layer", "main.6", "--samples", "4"]


def test_an_unexpected_exception_is_one_line_and_exit_code_1(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    _replace_stats_command(monkeypatch, _divide)
    assert cli.main(_stats_args()) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("olam-edit stats: internal error: ZeroDivisionError: ")
    assert "division by zero" in lines[0] and "re-run with --debug for the traceback" in lines[0]
    assert "Traceback" not in err and "File " not in err and out == ""


def test_debug_before_the_command_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    _replace_stats_command(monkeypatch, _divide)
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", *_stats_args()])


def test_a_multi_line_message_of_a_bug_keeps_its_first_line_only(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    def body(args: object) -> int:
        raise RuntimeError("first line\n  File '/secret/place.py', line 3\nthird")

    _replace_stats_command(monkeypatch, body)
    assert cli.main(_stats_args()) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: first line" in err and "secret" not in err


@pytest.mark.parametrize("error", [StatsFileError(explain("the cache is bad", got="-5 keys", expected="> 0")),
                                   FileNotFoundError(2, "No such file or directory", "nowhere.pt")],
                         ids=["project-error", "os-error"])
def test_bad_input_is_still_one_line_and_exit_code_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture, error: Exception) -> None:
    def body(args: object) -> int:
        raise error

    _replace_stats_command(monkeypatch, body)
    assert cli.main(_stats_args()) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("olam-edit stats: error: ")
    assert "internal error" not in lines[0] and "Traceback" not in lines[0]
    with pytest.raises(type(error)):  # --debug shows where it came from
        cli.main(["--debug", *_stats_args()])


def test_a_real_command_on_a_missing_file_exits_2_without_traceback(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["apply", str(tmp_path / "no-such-edit"), "--seeds", "0", "--grid", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("olam-edit apply: error: ") and "Traceback" not in err


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def body(args: object) -> int:
        raise KeyboardInterrupt

    _replace_stats_command(monkeypatch, body)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_stats_args())


def test_debug_is_listed_in_the_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--debug" in capsys.readouterr().out
