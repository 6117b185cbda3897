"""Tests of the StyleGAN2 loaders: rosinality .pt, NVlabs .pkl (read without running code), ours.

The fixtures are written by this file in each original layout: rosinality's ``g_ema`` key names and
shapes, and pickles whose objects reduce exactly like NVlabs ``torch_utils.persistence`` records.
"""

from __future__ import annotations

import builtins
import math
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from olam_edit.adapters import stylegan2 as S
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.errors import ShapeMismatchError, UnsafePickleError, WeightFileError

# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------


def tiny(flavor: str = "rosinality", conv_clamp: float | None = None, size: int = 16) -> StyleGAN2Generator:
    """A seeded generator with every tensor randomised (biases, noise strengths, w_avg)."""
    torch.manual_seed(0)
    channels = {4: 16, 8: 12, 16: 8, 32: 8}
    config = StyleGAN2Config(size=size, style_dim=32, n_mlp=2, flavor=flavor, conv_clamp=conv_clamp,
                             channels={r: c for r, c in channels.items() if r <= size})
    model = StyleGAN2Generator(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "affine" in name else 0.0))
        model.mapping.w_avg.normal_()
    return model.eval().requires_grad_(False)


def render(model: StyleGAN2Generator) -> torch.Tensor:
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(z, truncation=0.7, noise_mode="const")


# --------------------------------------------------------------------------------------------
# rosinality layout
# --------------------------------------------------------------------------------------------

# rosinality Generator(size=8, style_dim=16, n_mlp=2).state_dict(), written out by hand.
ROSINALITY_SIZE8 = {
    "style.1.weight": (16, 16), "style.1.bias": (16,), "style.2.weight": (16, 16), "style.2.bias": (16,),
    "input.input": (1, 512, 4, 4),
    "conv1.conv.weight": (1, 512, 512, 3, 3), "conv1.conv.modulation.weight": (512, 16),
    "conv1.conv.modulation.bias": (512,), "conv1.noise.weight": (1,), "conv1.activate.bias": (512,),
    "to_rgb1.bias": (1, 3, 1, 1), "to_rgb1.conv.weight": (1, 3, 512, 1, 1),
    "to_rgb1.conv.modulation.weight": (512, 16), "to_rgb1.conv.modulation.bias": (512,),
    "convs.0.conv.weight": (1, 512, 512, 3, 3), "convs.0.conv.blur.kernel": (4, 4),
    "convs.0.conv.modulation.weight": (512, 16), "convs.0.conv.modulation.bias": (512,),
    "convs.0.noise.weight": (1,), "convs.0.activate.bias": (512,),
    "convs.1.conv.weight": (1, 512, 512, 3, 3), "convs.1.conv.modulation.weight": (512, 16),
    "convs.1.conv.modulation.bias": (512,), "convs.1.noise.weight": (1,), "convs.1.activate.bias": (512,),
    "to_rgbs.0.bias": (1, 3, 1, 1), "to_rgbs.0.upsample.kernel": (4, 4),
    "to_rgbs.0.conv.weight": (1, 3, 512, 1, 1), "to_rgbs.0.conv.modulation.weight": (512, 16),
    "to_rgbs.0.conv.modulation.bias": (512,),
    "noises.noise_0": (1, 1, 4, 4), "noises.noise_1": (1, 1, 8, 8), "noises.noise_2": (1, 1, 8, 8),
}


def test_rosinality_layout_matches_the_original_key_names_and_shapes() -> None:
    model = StyleGAN2Generator(StyleGAN2Config(size=8, style_dim=16, n_mlp=2))
    g_ema = S.rosinality_checkpoint(model)["g_ema"]
    assert {k: tuple(v.shape) for k, v in g_ema.items()} == ROSINALITY_SIZE8


def save_rosinality(model: StyleGAN2Generator, path: Path, drop: str | None = None,
                    reshape: tuple[str, tuple[int, ...]] | None = None) -> Path:
    ckpt = S.rosinality_checkpoint(model)
    if drop:
        del ckpt["g_ema"][drop]
    if reshape:
        ckpt["g_ema"][reshape[0]] = torch.zeros(reshape[1])
    torch.save(ckpt, path)
    return path


def test_rosinality_round_trip(tmp_path: Path) -> None:
    model = tiny()
    loaded = S.load_stylegan2(save_rosinality(model, tmp_path / "g.pt"))
    assert loaded.config == model.config
    assert torch.equal(render(loaded), render(model))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_rosinality_without_latent_avg_estimates_it(tmp_path: Path) -> None:
    model = tiny()
    torch.save({"g_ema": S.rosinality_checkpoint(model)["g_ema"]}, tmp_path / "g.pt")
    with pytest.warns(UserWarning, match="latent_avg"):
        loaded = S.load_rosinality(tmp_path / "g.pt")
    assert torch.allclose(loaded.mapping.w_avg, S.estimate_w_avg(model))
    with pytest.raises(FileNotFoundError):
        S.load_rosinality(tmp_path / "absent.pt")


def test_rosinality_missing_key_and_wrong_shape(tmp_path: Path) -> None:
    model = tiny()
    with pytest.raises(WeightFileError, match=r"missing convs\.1\.noise\.weight"):
        S.load_rosinality(save_rosinality(model, tmp_path / "a.pt", drop="convs.1.noise.weight"))
    bad = ("convs.0.conv.modulation.bias", (5,))
    with pytest.raises(ShapeMismatchError, match=r"layers\.layer3\.conv\.affine\.bias"):
        S.load_rosinality(save_rosinality(model, tmp_path / "b.pt", reshape=bad))
    torch.save({"g": {}}, tmp_path / "c.pt")
    with pytest.raises(WeightFileError, match="g_ema"):
        S.load_rosinality(tmp_path / "c.pt")


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    data = save_rosinality(tiny(), tmp_path / "g.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="truncated"):
        S.load_stylegan2(tmp_path / "cut.pt")
    (tmp_path / "text.pkl").write_bytes(b"hello, this is not a pickle")
    with pytest.raises(WeightFileError):
        S.load_stylegan2(tmp_path / "text.pkl")
    pkl = nvlabs_pickle(tiny(flavor="nvlabs"))
    (tmp_path / "cut.pkl").write_bytes(pkl[: len(pkl) // 3])
    with pytest.raises(WeightFileError, match="truncated"):
        S.load_stylegan2(tmp_path / "cut.pkl")


# --------------------------------------------------------------------------------------------
# NVlabs persistence pickles, built here
# --------------------------------------------------------------------------------------------

SOURCE = "raise RuntimeError('persistence module source must never run')\n"


def _reconstruct_persistent_obj(meta: dict) -> None:  # only its name is pickled
    raise AssertionError("never called")


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict."""


def _fake_modules() -> dict[str, types.ModuleType]:
    """Importable stand-ins so that pickle can write the NVlabs global names."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    return {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__ = "dnnlib.util"


class Record:
    """Reduces like an NVlabs persistent object: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name: str, *, params: dict | None = None, buffers: dict | None = None,
                 modules: dict | None = None, source: str = SOURCE, **attrs: object) -> None:
        self.class_name, self.source = class_name, source
        params = {k: nn.Parameter(v.clone(), requires_grad=False) for k, v in (params or {}).items()}
        hooks = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks",
                 "_load_state_dict_pre_hooks")
        self.state = {"training": False, "_parameters": OrderedDict(params),
                      "_buffers": OrderedDict(buffers or {}), "_non_persistent_buffers_set": set(),
                      **{h: OrderedDict() for h in hooks}, "_modules": OrderedDict(modules or {}),
                      "_init_args": (), "_init_kwargs": EasyDict(), **attrs}

    def __reduce__(self) -> tuple:
        meta = {"type": "class", "version": 6, "module_src": self.source, "class_name": self.class_name,
                "state": self.state}
        return (_reconstruct_persistent_obj, (meta,))


FILTER = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


def nv_fc(lin: nn.Module, activation: str = "linear") -> Record:
    return Record("FullyConnectedLayer", params={"weight": lin.weight, "bias": lin.bias},
                  activation=activation, weight_gain=np.float64(lin.scale), bias_gain=lin.lr_mul)


def nv_layer(layer: nn.Module, up: int) -> Record:
    conv = layer.conv
    return Record("SynthesisLayer", params={"weight": conv.weight, "noise_strength": layer.noise_strength,
                                            "bias": layer.bias},
                  buffers={"resample_filter": FILTER, "noise_const": layer.noise_const[0, 0]},
                  modules={"affine": nv_fc(conv.affine)}, resolution=layer.resolution, up=up,
                  use_noise=True, activation="lrelu", conv_clamp=layer.conv_clamp, padding=1,
                  act_gain=np.float64(math.sqrt(2)))


def nv_block(model: StyleGAN2Generator, res: int) -> Record:
    n = 2 * int(math.log2(res)) - 3
    rgb = model.to_rgbs[f"rgb{res}"]
    modules = {} if res == 4 else {"conv0": nv_layer(model.layers[f"layer{n}"], 2)}
    modules |= {"conv1": nv_layer(model.layers[f"layer{n + 1}"], 1),
                "torgb": Record("ToRGBLayer", params={"weight": rgb.conv.weight, "bias": rgb.bias},
                                modules={"affine": nv_fc(rgb.conv.affine)}, conv_clamp=rgb.conv_clamp,
                                weight_gain=np.float64(rgb.conv.scale))}
    return Record("SynthesisBlock", params={"const": model.const} if res == 4 else {},
                  buffers={"resample_filter": FILTER}, modules=modules, resolution=res,
                  in_channels=0 if res == 4 else model.config.channels[res // 2], architecture="skip",
                  use_fp16=False, is_last=res == model.config.size)


def nv_generator(model: StyleGAN2Generator, c_dim: int = 0) -> Record:
    cfg = model.config
    fcs = {f"fc{i}": nv_fc(getattr(model.mapping, f"fc{i}"), "lrelu") for i in range(cfg.n_mlp)}
    mapping = Record("MappingNetwork", buffers={"w_avg": model.mapping.w_avg}, modules=fcs, z_dim=cfg.z_dim,
                     c_dim=c_dim, w_dim=cfg.style_dim, num_ws=cfg.num_ws, num_layers=cfg.n_mlp,
                     w_avg_beta=0.995)
    blocks = {f"b{r}": nv_block(model, r) for r in cfg.resolutions}
    synthesis = Record("SynthesisNetwork", modules=blocks, w_dim=cfg.style_dim, img_resolution=cfg.size,
                       img_channels=3, block_resolutions=cfg.resolutions, num_ws=cfg.num_ws)
    kwargs = EasyDict(z_dim=cfg.z_dim, c_dim=c_dim, w_dim=cfg.style_dim, img_resolution=cfg.size,
                      mapping_kwargs=EasyDict(num_layers=cfg.n_mlp), synthesis_kwargs=EasyDict())
    return Record("Generator", modules={"synthesis": synthesis, "mapping": mapping}, z_dim=cfg.z_dim,
                  c_dim=c_dim, w_dim=cfg.style_dim, img_resolution=cfg.size, img_channels=3,
                  num_ws=cfg.num_ws, _init_kwargs=kwargs)


def dumps(obj: object) -> bytes:
    """Pickle with the NVlabs module names importable (as during a real training run)."""
    saved = {name: sys.modules.get(name) for name in _fake_modules()}
    sys.modules.update(_fake_modules())
    try:
        return pickle.dumps(obj, protocol=3)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def nvlabs_pickle(model: StyleGAN2Generator, **extra: object) -> bytes:
    g = nv_generator(model)
    disc = Record("Discriminator", params={"w": torch.randn(3)}, modules={"b4": Record("DiscriminatorBlock")})
    snapshot = {"training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset"),
                "G": g, "D": disc, "G_ema": g, "augment_pipe": Record("AugmentPipe", xflip=np.float64(1))}
    return dumps(snapshot | extra)


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_nvlabs_pickle_round_trip(tmp_path: Path, clamp: float | None) -> None:
    model = tiny(flavor="nvlabs", conv_clamp=clamp)
    (tmp_path / "net.pkl").write_bytes(nvlabs_pickle(model))
    loaded = S.load_stylegan2(tmp_path / "net.pkl")
    assert loaded.config == model.config
    assert torch.equal(render(loaded), render(model))


def test_nvlabs_pickle_never_runs_the_embedded_source(tmp_path: Path) -> None:
    src = "import builtins\nbuiltins.OLAM_SOURCE_RAN = True\n"
    (tmp_path / "net.pkl").write_bytes(dumps({"G_ema": Record("Generator", source=src)}))
    with pytest.raises(WeightFileError, match="synthesis"):
        S.load_stylegan2(tmp_path / "net.pkl")
    assert not hasattr(builtins, "OLAM_SOURCE_RAN")


def test_stylegan3_and_conditional_networks_are_refused(tmp_path: Path) -> None:
    synthesis = Record("SynthesisNetwork", modules={
        "input": Record("SynthesisInput", buffers={"freqs": torch.randn(4, 2)}, size=np.array([36, 36])),
        "L0_36_512": Record("SynthesisLayer")})
    sg3 = Record("Generator", modules={"synthesis": synthesis, "mapping": Record("MappingNetwork")},
                 z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3)
    (tmp_path / "sg3.pkl").write_bytes(dumps({"G_ema": sg3}))
    with pytest.raises(WeightFileError, match="StyleGAN3"):
        S.load_stylegan2(tmp_path / "sg3.pkl")
    (tmp_path / "cond.pkl").write_bytes(dumps({"G_ema": nv_generator(tiny(), c_dim=4)}))
    with pytest.raises(WeightFileError, match="conditional"):
        S.load_stylegan2(tmp_path / "cond.pkl")


# --------------------------------------------------------------------------------------------
# malicious pickles: nothing may run
# --------------------------------------------------------------------------------------------


class Payload:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return (self.func, (self.arg,))


def test_pickle_calling_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": Payload(os.system, f"touch {marker}")}))
    with pytest.raises(UnsafePickleError, match=r"system"):
        S.load_stylegan2(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_pickle_calling_exec_deep_inside_a_record_is_refused(tmp_path: Path) -> None:
    g = nv_generator(tiny(flavor="nvlabs"))
    g.state["_modules"]["mapping"].state["sneaky"] = Payload(exec, "import builtins; builtins.OLAM_PWNED = 1")
    (tmp_path / "evil.pkl").write_bytes(dumps({"G_ema": g}))
    with pytest.raises(UnsafePickleError, match=r"builtins\.exec"):
        S.load_stylegan2(tmp_path / "evil.pkl")
    assert not hasattr(builtins, "OLAM_PWNED")


def test_persistent_object_of_unknown_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil.pkl").write_bytes(dumps({"G_ema": Record("EvilLoader")}))
    with pytest.raises(UnsafePickleError, match="EvilLoader"):
        S.load_stylegan2(tmp_path / "evil.pkl")


def test_torch_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"g_ema": Payload(os.system, f"touch {marker}"), "latent_avg": torch.zeros(3)}, tmp_path / "e.pt")
    with pytest.raises(UnsafePickleError, match=r"system"):
        S.load_stylegan2(tmp_path / "e.pt")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# our format, conversion and picking a file from a snapshot
# --------------------------------------------------------------------------------------------


def test_save_load_and_convert(tmp_path: Path) -> None:
    model = tiny(flavor="nvlabs", conv_clamp=0.5)
    folder = S.save_stylegan2(model, tmp_path / "ours")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = S.load_stylegan2(folder)
    assert loaded.config == model.config
    assert torch.equal(render(loaded), render(model))
    out = S.convert_stylegan2(save_rosinality(tiny(), tmp_path / "g.pt"), tmp_path / "converted")
    assert torch.equal(render(S.load_stylegan2(out / "model.safetensors")), render(tiny()))


def test_our_format_rejects_mismatched_files(tmp_path: Path) -> None:
    folder = S.save_stylegan2(tiny(), tmp_path / "ours")
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"16": 8', '"16": 4'))
    with pytest.raises(ShapeMismatchError, match="layer"):
        S.load_stylegan2(folder)
    (folder / "config.json").write_text(config.replace("olam-edit-stylegan2", "something-else"))
    with pytest.raises(WeightFileError, match="not an olam-edit StyleGAN2 config"):
        S.load_stylegan2(folder)
    (folder / "config.json").write_text(config)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:100])
    with pytest.raises(WeightFileError, match="safetensors"):
        S.load_stylegan2(folder)


def test_find_stylegan2_file_prefers_ours_then_pt_then_pkl(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        S.find_stylegan2_file(tmp_path)
    (tmp_path / "network.pkl").write_bytes(b"x")
    assert S.find_stylegan2_file(tmp_path).name == "network.pkl"
    (tmp_path / "model.safetensors").write_bytes(b"x")  # without config.json: not ours
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.pt").write_bytes(b"x")  # sub-folders are never searched
    assert S.find_stylegan2_file(tmp_path).name == "network.pkl"
    (tmp_path / "church.pt").write_bytes(b"x")
    assert S.find_stylegan2_file(tmp_path) == tmp_path / "church.pt"
    (tmp_path / "config.json").write_text("{}")
    assert S.find_stylegan2_file(tmp_path).name == "model.safetensors"
    (tmp_path / "two.pkl").write_bytes(b"x")
    (tmp_path / "three.pkl").write_bytes(b"x")
    for name in ("model.safetensors", "church.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(WeightFileError, match="several"):
        S.find_stylegan2_file(tmp_path)


def test_cli_convert_rosinality_to_safetensors(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from olam_edit.adapters.stylegan2.files import load_stylegan2
    from olam_edit.adapters.stylegan2.rosinality import rosinality_checkpoint

    model = tiny()
    torch.save(rosinality_checkpoint(model), tmp_path / "g.pt")  # a fixture in rosinality's own layout
    exe = Path(sys.executable).parent / "olam-edit"
    out = subprocess.run([str(exe), "convert", str(tmp_path / "g.pt"), str(tmp_path / "conv")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "conv").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(render(load_stylegan2(tmp_path / "conv")), render(model))
    bad = subprocess.run([str(exe), "convert", str(tmp_path / "missing.pt"), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
