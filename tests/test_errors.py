"""The error taxonomy: one class per kind of failure, structured got / expected / fix, one CLI line each."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import olam_edit as oe
from olam_edit import errors as E
from olam_edit.adapters import stylegan2 as S
from olam_edit.adapters.face_dcgan.model import read_weights
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.cli import error_line, main
from olam_edit.errors import (
    EditFileError,
    Explanation,
    GeneratorLoadError,
    OlamEditError,
    RequestError,
    StatsFileError,
    UnsafePickleError,
    WeightFileError,
    explain,
)
from olam_edit.rules.spatial.request import Selection

ERROR_CLASSES = [c for _, c in inspect.getmembers(E, inspect.isclass) if issubclass(c, OlamEditError)]
KINDS = [EditFileError, WeightFileError, StatsFileError, RequestError, GeneratorLoadError]


# ------------------------------------------------------------------------------------------ classes


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_class_carries_the_fields(cls: type[OlamEditError]) -> None:
    built = cls(explain("it broke", got=[1, 2], expected="one number", fix="Pass one number."))
    assert isinstance(built, OlamEditError)
    assert (built.what, built.got, built.expected, built.fix) == ("it broke", [1, 2], "one number", "Pass one number.")
    assert str(built) == "it broke (got [1, 2]; expected one number). Pass one number."
    by_keyword = cls("it broke", got=[1, 2], expected="one number", fix="Pass one number.")
    assert str(by_keyword) == str(built) and by_keyword.got == [1, 2] and by_keyword.fix == "Pass one number."
    plain = cls("it broke")
    assert (plain.what, plain.got, plain.expected, plain.fix) == ("it broke", None, None, None)
    assert str(plain) == "it broke"
    again = pickle.loads(pickle.dumps(built))  # errors cross process boundaries (DataLoader workers, servers)
    assert type(again) is cls and str(again) == str(built) and again.got == [1, 2] and again.fix == built.fix


def test_explain_is_a_string_that_keeps_its_parts() -> None:
    text = explain("bad mask", got=(3, 4), expected="[H, W]")
    assert isinstance(text, str) and isinstance(text, Explanation)
    assert text == "bad mask (got (3, 4); expected [H, W])"
    assert (text.what, text.got, text.expected, text.fix) == ("bad mask", (3, 4), "[H, W]", None)
    assert str(FileNotFoundError(explain("no such file", fix="Check the path."))) == "no such file. Check the path."
    override = RequestError(text, fix="Draw a 2-D mask.")  # a keyword adds to the explanation's fields
    assert str(override) == "bad mask (got (3, 4); expected [H, W]). Draw a 2-D mask." and override.got == (3, 4)


def test_one_class_per_kind_of_failure() -> None:
    for a in KINDS:
        assert issubclass(a, ValueError)
        assert [b for b in KINDS if b is not a and issubclass(a, b)] == [], a  # no kind is another kind
    assert issubclass(UnsafePickleError, WeightFileError)
    assert issubclass(E.SchemaVersionError, EditFileError) and issubclass(E.ChecksumMismatchError, EditFileError)
    assert issubclass(E.HubNotFoundError, FileNotFoundError) and issubclass(E.LayerNotFoundError, KeyError)


# ------------------------------------------------------------------------------------------ real call sites


def stats_file(path: Path) -> Path:
    return oe.SecondMoment(3).add(torch.ones(4, 3, dtype=torch.float64)).save(path, {"fingerprint": "f"})


def not_stats_file(path: Path) -> Path:
    """A valid safetensors file with no statistics manifest (as a model file is)."""
    save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
    return path


def truncated_checkpoint(path: Path) -> Path:
    torch.manual_seed(1)
    model = StyleGAN2Generator(StyleGAN2Config(size=8, style_dim=16, n_mlp=2, channels={4: 8, 8: 8}))
    torch.save(S.rosinality_checkpoint(model), path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def test_a_file_that_is_not_statistics_raises_stats_file_error(tmp_path: Path) -> None:
    with pytest.raises(StatsFileError) as caught:
        oe.SecondMoment.load(not_stats_file(tmp_path / "model.safetensors"))
    e = caught.value
    assert not isinstance(e, EditFileError)
    assert e.got == "no statistics manifest" and "SecondMoment.save" in e.expected and e.fix
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(StatsFileError) as caught:
        oe.SecondMoment.load(tmp_path / "junk.safetensors")
    assert caught.value.got and caught.value.expected == e.expected


def test_statistics_loaded_as_an_edit_raise_edit_file_error(tmp_path: Path) -> None:
    (tmp_path / "edit").mkdir()
    stats_file(tmp_path / "edit" / "edit.safetensors")
    with pytest.raises(EditFileError) as caught:
        oe.Edit.load(tmp_path / "edit")
    assert not isinstance(caught.value, StatsFileError)
    assert "olam_edit_stats" in caught.value.got and caught.value.expected


def test_checkpoints_raise_weight_file_error(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError) as caught:
        S.load_stylegan2(truncated_checkpoint(tmp_path / "g.pt"))
    assert not isinstance(caught.value, EditFileError)
    assert caught.value.got and caught.value.fix == "Download the file again."
    with pytest.raises(WeightFileError) as caught:
        read_weights(not_stats_file(tmp_path / "face.safetensors"))
    assert "missing=" in caught.value.got and caught.value.expected and caught.value.fix


def test_a_bad_seed_raises_request_error_with_what_was_got() -> None:
    with pytest.raises(RequestError) as caught:
        Selection(-3, np.ones((4, 4)))
    assert caught.value.got == "-3" and caught.value.fix


# ------------------------------------------------------------------------------------------ the CLI


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def test_cli_prints_one_line_for_a_stats_file_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = not_stats_file(tmp_path / "stats.safetensors")
    code, out, err = run_cli(capsys, "push", str(path), "someone/stats", "--token", "unused")
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("olam-edit push: error: ")
    assert "not an olam-edit statistics file" in err[0] and "got no statistics manifest" in err[0]
    assert err[0].endswith("Point at a statistics file, not an edit or model file.")


def test_cli_prints_one_line_for_a_weight_file_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = truncated_checkpoint(tmp_path / "g.pt")
    code, out, err = run_cli(capsys, "convert", str(path), str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("olam-edit convert: error: ")
    assert "truncated or not a PyTorch checkpoint" in err[0] and err[0].endswith("Download the file again.")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_keeps_a_message_with_line_breaks_on_one_line() -> None:
    e = WeightFileError(explain("bad file", got="first line\n  second line", fix="Fix it."))
    assert error_line("convert", e) == "olam-edit convert: error: bad file (got first line second line). Fix it."
    assert error_line("pull", FileNotFoundError(2, "No such file", "x")) == (
        "olam-edit pull: error: [Errno 2] No such file: 'x'")
