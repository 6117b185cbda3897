"""README "Extending olam-edit / A new model family": the section's code block, run as it is, registers a
tiny family that loads through ``load_generator`` (a local file and a Hub snapshot) and rewrites with
the unchanged Rewriter; plus the extension points it relies on: the registry's built-in table and
errors, the core's Generator protocol, the handle hooks and the StyleGAN2 handle's own pinning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from readme_code import README, python_block_after
from torch import nn

import olam_edit as oe
from olam_edit.adapters import TorchGenerator, load_generator, registry
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.files import find_stylegan2_file, looks_like_stylegan2, save_stylegan2
from olam_edit.adapters.stylegan2.generator import StyleGAN2Adapter
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.errors import GeneratorLoadError, RequestError
from olam_edit.memory.handles import Conv2dHandle, LayerHandle
from olam_edit.memory.solve import Problem, rewrite_layer
from olam_edit.rules.generator import MEMBERS, Generator, check_generator
from olam_edit.rules.spatial.rewriter import Rewriter

MARKER = "<!-- model-family-example -->"


def _example_code() -> str:
    return python_block_after(MARKER, section='### A new model family')


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """No family registered before the test, and none left behind by it."""
    monkeypatch.setattr(registry, "_REGISTERED", {})


@pytest.fixture
def example(clean_registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The README block executed in a fresh namespace inside ``tmp_path`` (statistics cached there too)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OLAM_EDIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(23)
    namespace: dict = {"__name__": "readme_model_family"}
    exec(compile(_example_code(), str(README), "exec"), namespace)
    return namespace


def test_the_section_is_where_the_issue_says() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.index("## Extending olam-edit") < text.index("### A new model family") < text.index("## How it works")


def test_readme_family_loads_through_the_registry(example: dict, tmp_path: Path) -> None:
    gen = example["gen"]
    assert registry.registered()[0] == "tiny" and registry.sniff(tmp_path / "decoder.tiny") == "tiny"
    assert isinstance(gen, TorchGenerator) and isinstance(gen, Generator)
    assert (gen.name, gen.license, gen.component) == ("decoder.tiny", "mit", None)
    assert gen.layers() == ["up", "mid", "out"]
    assert isinstance(gen.handle("mid"), Conv2dHandle)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "decoder.tiny")
    assert all(torch.equal(saved[k], v) for k, v in gen.model.state_dict().items())
    assert gen.images([0, 1]).shape == (2, 3, 8, 8)


def test_readme_family_rewrite_moves_the_paste_region_towards_its_target(example: dict) -> None:
    gen, edit, request = example["gen"], example["edit"], example["request"]
    assert edit.manifest["base_model"]["id"] == "decoder.tiny" and edit.manifest["license"] == "mit"
    rule = Rewriter(gen, "mid", stats_samples=200, progress=False).rule_tensors(request)  # statistics cached
    h = gen.handle("mid")
    fit = rule.fit_mask[:, None].bool().expand_as(rule.v_star)  # [1, out, h, w]

    def miss() -> float:
        with torch.no_grad():
            v = h.values_of(rule.x_paste.to(h.parameter.dtype)).double()  # the layer's own output now
        return float((v - rule.v_star)[fit].norm())

    before = miss()
    with oe.edited(gen.model, edit):
        after = miss()
    assert after < 0.5 * before
    assert miss() == before  # reverted


def test_an_unrecognised_file_names_the_registered_families(example: dict, tmp_path: Path) -> None:
    odd = tmp_path / "weights.unknown"
    odd.write_bytes(b"not a checkpoint")
    with pytest.raises(GeneratorLoadError, match="no model family recognises") as info:
        load_generator(odd)
    assert all(name in str(info.value) for name in ("tiny", "face_dcgan", "stylegan2"))
    with pytest.raises(GeneratorLoadError, match="no such file or folder"):
        load_generator(tmp_path / "missing" / "x.tiny")
    with pytest.raises(GeneratorLoadError, match="does not take these options"):
        load_generator(tmp_path / "decoder.tiny", truncation=0.5)
    odd.write_bytes((tmp_path / "decoder.tiny").read_bytes())
    assert load_generator(odd, family="tiny").name == "weights.unknown"  # family= skips the sniffing
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.tiny", "b.tiny"):
        (folder / name).write_bytes(odd.read_bytes())
    with pytest.raises(GeneratorLoadError, match="several checkpoints"):
        load_generator(folder)  # a folder is loaded from its one recognised file, never a guess
    (folder / "b.tiny").unlink()
    assert load_generator(folder).name == "a.tiny"
    registry.unregister("tiny")
    assert registry.registered() == list(registry.BUILTINS)
    with pytest.raises(GeneratorLoadError):
        load_generator(tmp_path / "decoder.tiny")


def test_a_hub_snapshot_is_downloaded_then_sniffed(example: dict, hf_env, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hf_env.endpoint, token=hf_env.token)
    api.create_repo("test-user/tiny-decoder")
    api.upload_file(path_or_fileobj=str(tmp_path / "decoder.tiny"), path_in_repo="decoder.tiny",
                    repo_id="test-user/tiny-decoder")
    gen = load_generator("test-user/tiny-decoder")
    assert gen.name == "test-user/tiny-decoder" and gen.layers() == ["up", "mid", "out"]
    assert torch.equal(gen.images([3]), example["gen"].images([3]))


def test_the_builtin_table_is_imported_only_when_asked() -> None:
    code = ("import sys, olam_edit.adapters as a\n"
            "assert not [m for m in sys.modules if m.startswith(('olam_edit.adapters.stylegan2', "
            "'olam_edit.adapters.face_dcgan'))], sorted(sys.modules)\n"
            "g = a.load_generator('default')\n"
            "assert 'olam_edit.adapters.face_dcgan.family' in sys.modules\n"
            "assert not [m for m in sys.modules if m.startswith('olam_edit.adapters.stylegan2')]\n"
            "print(g.name, g.license)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["olam-edit/face-dcgan64", "other"]  # DigiFace-1M terms, not plain MIT


def test_the_embedded_weights_sniff_as_the_face_dcgan() -> None:
    import importlib.resources

    weights = importlib.resources.files("olam_edit.adapters.face_dcgan") / "weights" / "face_dcgan64.safetensors"
    with importlib.resources.as_file(weights) as path:
        assert registry.sniff(path) == "face_dcgan"
        gen = load_generator(path, name="copy")
    assert gen.name == "copy" and gen.layers() == load_generator("default").layers()
    assert torch.equal(gen.images([7]), load_generator("default").images([7]))


def _tiny_stylegan2() -> StyleGAN2Generator:
    torch.manual_seed(0)
    config = StyleGAN2Config(size=16, style_dim=16, n_mlp=2, channels={4: 16, 8: 16, 16: 16})
    return StyleGAN2Generator(config).eval().requires_grad_(False)


def test_a_shared_folder_is_not_walked(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    save_stylegan2(_tiny_stylegan2(), shared)
    for other in ("run1/a.pt", "run2/b.pt", "run2/deep/c.pkl"):  # other people's checkpoints below
        (shared / other).parent.mkdir(parents=True, exist_ok=True)
        (shared / other).write_bytes(b"never read")
    assert find_stylegan2_file(shared) == shared / "model.safetensors"
    gen = load_generator(shared)
    assert isinstance(gen, StyleGAN2Adapter) and gen.images([0]).shape == (1, 3, 16, 16)
    for name in ("model.safetensors", "config.json"):
        (shared / name).unlink()
    assert not looks_like_stylegan2(shared)
    with pytest.raises(GeneratorLoadError, match="no model family recognises"):
        load_generator(shared)
    with pytest.raises(FileNotFoundError, match="sub-folders are not searched"):
        find_stylegan2_file(shared)


def test_a_transformers_folder_is_not_taken_for_stylegan2(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert not looks_like_stylegan2(tmp_path) and not looks_like_stylegan2(tmp_path / "model.safetensors")


def test_the_core_states_what_it_needs_from_a_generator() -> None:
    declared = {n for n in vars(Generator) if not n.startswith("_")}
    assert declared == set(MEMBERS)
    with pytest.raises(RequestError, match="not a generator") as info:
        Rewriter(nn.Linear(2, 2), "weight")  # type: ignore[arg-type]
    assert "'latents'" in str(info.value) and "'stats'" in str(info.value)
    gen = TorchGenerator(nn.Sequential(nn.Conv2d(2, 3, 1)), (2, 4, 4), name="t", component="vae")
    assert check_generator(gen) is gen and gen.component == "vae"


class _Recording(Conv2dHandle):
    """A conv handle that says it is not linear in the weight and records the solver's freeze calls."""

    linear_in_weight = False

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name, module)
        self.calls: list[torch.Tensor | None] = []

    def freeze(self, w_eff: torch.Tensor | None) -> None:
        self.calls.append(None if w_eff is None else w_eff.clone())


class _OwnLayer(nn.Conv2d):
    """A layer that is its own editable layer (EditableModule)."""

    def olam_handle(self, name: str) -> LayerHandle:
        return _Recording(name, self)


def test_handle_hooks_are_declared_with_defaults() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _OwnLayer(4, 4, 1, bias=False))
    model = model.double().requires_grad_(False)
    plain, own = oe.get_handle(model, "0"), oe.get_handle(model, "1")
    assert type(own) is _Recording and oe.list_layers(model) == ["0", "1"]
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    lam, D = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.linalg.qr(torch.randn(3, 1, dtype=torch.float64))[0].T
    assert plain.linear_in_weight and plain.output_scale(x) is None
    assert torch.equal(plain.unscaled_delta_response(x, lam, D), plain.delta_response(x, lam, D))
    with pytest.raises(ValueError), plain.frozen(plain.effective_weight()):
        raise ValueError  # the context releases on error too (a no-op for a linear layer)
    k = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    D1 = torch.linalg.qr(torch.randn(4, 1, dtype=torch.float64))[0].T  # [1, 4]
    _, report = rewrite_layer(Problem(own, k, own.values_of(k) + 0.1), D1, torch.eye(4, dtype=torch.float64))
    assert torch.equal(own.calls[0], own.effective_weight().double()) and own.calls[-1] is None
    assert report.iterations >= 2  # not linear in the weight: refined to a fixed point


def test_the_stylegan2_adapter_hands_out_pinned_handles() -> None:
    gen = StyleGAN2Adapter(_tiny_stylegan2(), name="tiny-sg2")
    layer = "layers.layer4.conv"
    assert gen.handle(layer).pin and not oe.get_handle(gen.model, layer).pin
    x, v = gen.keys_and_values(layer, gen.latents([0]))
    plain = oe.get_handle(gen.model, layer)
    for seed in range(1, 9):  # a statistics pass: unpinned key maps push each other out
        hook = plain.register_key_hook(lambda _k: None)
        with torch.no_grad():
            gen.model(gen.latents([seed]))
        hook.remove()
    assert torch.allclose(gen.handle(layer).values_of(x), v, atol=1e-5)  # x's style is still known
    captured: list[torch.Tensor] = []
    hook = plain.register_key_hook(captured.append)
    with torch.no_grad():
        for seed in range(20, 29):
            gen.model(gen.latents([seed]))
    hook.remove()
    with pytest.raises(RequestError, match="style is unknown"):
        plain.values_of(captured[0])  # an unpinned key map is forgotten after a few forwards
