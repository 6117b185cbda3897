"""Tests of the StyleGAN2 loaders: rosinality .pt, NVlabs .pkl (read without running code), ours.

The fixtures are written by this file in each original layout: rosinality's ``g_ema`` key names and
shapes, and pickles whose objects reduce exactly like NVlabs ``torch_utils.persistence`` records.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import math
import os
import pickle
import subprocess
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
from olam_edit.adapters.stylegan2.safety import MAX_STORAGE_BYTES, TensorFlowPickleError
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


# --------------------------------------------------------------------------------------------
# rosinality train.py checkpoints: g, d, g_ema, optimizer states and an argparse.Namespace
# --------------------------------------------------------------------------------------------


def train_args(**extra: object) -> argparse.Namespace:
    """The ``args`` rosinality's train.py saves (its argparse options, for a tiny run)."""
    return argparse.Namespace(path="lmdb", arch="stylegan2", iter=800000, batch=16, n_sample=64, size=16, r1=10.0,
                              path_regularize=2.0, path_batch_shrink=2, d_reg_every=16, g_reg_every=4, mixing=0.9,
                              ckpt=None, lr=0.002, channel_multiplier=2, wandb=False, local_rank=0, augment=False,
                              augment_p=0.0, ada_target=0.6, ada_length=500000, ada_every=256, latent=32, n_mlp=2,
                              start_iter=0, distributed=False, **extra)


def adam_state(state: dict[str, torch.Tensor]) -> dict:
    """A real Adam state dict after one step on ``state``'s tensors (what train.py keeps as g_optim / d_optim)."""
    params = [nn.Parameter(v.clone().float()) for v in state.values()]
    optim = torch.optim.Adam(params, lr=0.002, betas=(0.0, 0.99))
    sum((p * p).sum() for p in params).backward()
    optim.step()
    return optim.state_dict()


def train_checkpoint(model: StyleGAN2Generator, args: argparse.Namespace) -> dict:
    """``{"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}`` as rosinality's train.py saves it."""
    g_ema = S.rosinality_checkpoint(model)["g_ema"]
    torch.manual_seed(11)
    g = {k: v + 0.01 * torch.randn_like(v) for k, v in g_ema.items()}  # the trained G is not its average
    d = {"convs.0.0.weight": torch.randn(8, 3, 1, 1), "convs.0.1.bias": torch.randn(8),
         "convs.1.conv1.0.weight": torch.randn(8, 8, 3, 3), "final_conv.0.weight": torch.randn(8, 9, 3, 3),
         "final_linear.0.weight": torch.randn(8, 128), "final_linear.1.weight": torch.randn(1, 8)}
    return {"g": g, "d": d, "g_ema": g_ema, "g_optim": adam_state(g), "d_optim": adam_state(d), "args": args,
            "ada_aug_p": 0.0}


@pytest.mark.parametrize("zip_format", [True, False])
def test_rosinality_train_checkpoint_with_args_loads_like_its_g_ema(tmp_path: Path, zip_format: bool) -> None:
    model = tiny()
    torch.save({"g_ema": S.rosinality_checkpoint(model)["g_ema"]}, tmp_path / "g_ema.pt")
    torch.save(train_checkpoint(model, train_args()), tmp_path / "train.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.warns(UserWarning, match="latent_avg"):
        alone = S.load_stylegan2(tmp_path / "g_ema.pt")
    with pytest.warns(UserWarning, match="latent_avg"):
        trained = S.load_stylegan2(tmp_path / "train.pt")
    assert trained.config == alone.config
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in trained.state_dict().items())
    assert torch.equal(render(trained), render(alone))
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for that call only


def test_train_checkpoint_allows_namespace_and_nothing_else_new(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    args = train_args(hook=Payload(os.system, f"touch {marker}"))
    torch.save(train_checkpoint(tiny(), args), tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match=r"system"):
        S.load_stylegan2(tmp_path / "evil.pt")
    ckpt = train_checkpoint(tiny(), train_args())
    ckpt["extra"] = OrderedDict(options=types.SimpleNamespace(lr=0.002))  # a look-alike, not allowed
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(UnsafePickleError, match=r"types\.SimpleNamespace"):
        S.load_stylegan2(tmp_path / "other.pt")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# TensorFlow-era pickles (dnnlib.tflib.network.Network)
# --------------------------------------------------------------------------------------------


def tf_era_pickle() -> bytes:
    """A pickle shaped like NVlabs' TensorFlow StyleGAN2 ``(G, D, Gs)``: ``Network`` objects whose state
    carries the network-building source. The module exists in ``sys.modules`` only while pickling."""
    names = ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network")
    fake = {name: types.ModuleType(name) for name in names}

    class Network:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getstate__(self) -> dict:
            return {"version": 4, "name": self.name, "static_kwargs": {}, "components": {},
                    "build_module_src": "import os\nos.system('touch pwned')\n", "build_func_name": "G_main",
                    "variables": [(f"{self.name}/dense0/weight", np.ones((2, 2), np.float32))]}

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    fake["dnnlib.tflib.network"].Network = Network
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(fake)
    try:
        return pickle.dumps((Network("G"), Network("D"), Network("Gs")), protocol=4)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.mark.parametrize("name", ["stylegan2-ffhq-config-f.pkl", "stylegan2-ffhq-config-f.pt"])
def test_tensorflow_era_pickle_names_nvlabs_converter(tmp_path: Path, name: str) -> None:
    data = tf_era_pickle()
    assert b"dnnlib.tflib.network" in data and "dnnlib.tflib.network" not in sys.modules
    (tmp_path / name).write_bytes(data)
    with pytest.raises(TensorFlowPickleError) as caught:
        S.load_stylegan2(tmp_path / name)
    message = str(caught.value)
    assert isinstance(caught.value, UnsafePickleError) and isinstance(caught.value, WeightFileError)
    assert "TensorFlow" in message and "dnnlib.tflib.network.Network" in message
    assert "python legacy.py --source=old.pkl --dest=new.pkl" in message and "stylegan2-ada-pytorch" in message
    assert not (tmp_path / "pwned").exists() and "dnnlib.tflib.network" not in sys.modules


# --------------------------------------------------------------------------------------------
# sizes a file states are checked before anything is allocated
# --------------------------------------------------------------------------------------------


class Reduce:
    """Pickles as ``func(*args)`` (func by reference; nothing is called while pickling)."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def typed_storage(values: torch.Tensor) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(wrap_storage=values.untyped_storage(), dtype=values.dtype, _internal=True)


def storage_blob(values: torch.Tensor) -> bytes:
    """The bytes ``TypedStorage.__reduce__`` hands to ``torch.storage._load_from_bytes`` (legacy torch.save)."""
    buf = io.BytesIO()
    torch.save(typed_storage(values), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


STORAGE = object()  # stands for the one storage of legacy_torch_save


def legacy_torch_save(obj: object, claimed: int, data: bytes) -> bytes:
    """Legacy torch.save bytes written by hand (magic, protocol, system info, object, keys, then count +
    bytes): ``STORAGE`` inside ``obj`` is a float32 storage that claims ``claimed`` elements, its data ``data``."""
    out = io.BytesIO()
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    for header in (torch.serialization.MAGIC_NUMBER, 1001, info):
        pickle.dump(header, out, protocol=2)

    class Claims(pickle.Pickler):
        def persistent_id(self, obj: object) -> tuple | None:
            return ("storage", torch.FloatStorage, "0", "cpu", claimed, None) if obj is STORAGE else None

    Claims(out, protocol=2).dump(obj)
    pickle.dump(["0"], out, protocol=2)
    out.write(claimed.to_bytes(8, "little") + data)
    return out.getvalue()


def legacy_storage_blob(claimed: int, data: bytes) -> bytes:
    """What ``_load_from_bytes`` receives, by hand: one storage claiming ``claimed`` float32 elements."""
    return legacy_torch_save(STORAGE, claimed, data)


def nv_tensor(blob: bytes, size: tuple[int, ...], stride: tuple[int, ...]) -> Reduce:
    """A tensor as NVlabs pickles hold it: ``_rebuild_tensor_v2(_load_from_bytes(blob), 0, size, stride, ...)``."""
    storage = Reduce(torch.storage._load_from_bytes, blob)
    return Reduce(torch._utils._rebuild_tensor_v2, storage, 0, size, stride, False, OrderedDict())


def oversized_tensor_pickle() -> bytes:
    """Under 500 bytes: a 4-element storage and a tensor of 3e9 elements on it (12 GB if it were grown)."""
    return pickle.dumps({"G_ema": nv_tensor(storage_blob(torch.arange(4.0)), (3 * 10**9,), (1,))}, protocol=3)


def unbounded_storage_pickle() -> bytes:
    """A storage record claiming one element more than MAX_STORAGE_BYTES allows, with 16 bytes present."""
    blob = legacy_storage_blob(MAX_STORAGE_BYTES // 4 + 1, torch.arange(4.0).numpy().tobytes())
    return pickle.dumps({"G_ema": nv_tensor(blob, (4,), (1,))}, protocol=3)


def expanded_rosinality_checkpoint() -> dict:
    """rosinality's layout for style_dim 2048, n_mlp 8, 1024 channels (98 M values, 390 MB as a model), every
    tensor a stride-0 expansion of one stored element: the file is a few tens of KB."""
    config = StyleGAN2Config(size=16, style_dim=2048, n_mlp=8, channels={4: 1024, 8: 1024, 16: 1024})
    with torch.device("meta"):
        ckpt = S.rosinality_checkpoint(StyleGAN2Generator(config))
    g_ema = {k: torch.full((), 0.5).expand(v.shape) for k, v in ckpt["g_ema"].items()}
    return {"g_ema": g_ema, "latent_avg": torch.zeros(()).expand(2048)}


def test_tensor_larger_than_its_storage_is_refused(tmp_path: Path) -> None:
    data = oversized_tensor_pickle()
    assert len(data) < 500
    (tmp_path / "big.pkl").write_bytes(data)
    with pytest.raises(WeightFileError, match="past the end of its storage"):
        S.load_stylegan2(tmp_path / "big.pkl")
    overlap = nv_tensor(storage_blob(torch.arange(4.0)), (1000, 4), (0, 1))  # inside, but 4000 from 4
    (tmp_path / "rows.pkl").write_bytes(pickle.dumps({"G_ema": overlap}, protocol=3))
    with pytest.raises(WeightFileError, match="stride-0 or overlapping"):
        S.load_stylegan2(tmp_path / "rows.pkl")


def test_storage_beyond_the_bound_or_the_bytes_present_is_refused(tmp_path: Path) -> None:
    (tmp_path / "huge.pkl").write_bytes(unbounded_storage_pickle())
    with pytest.raises(WeightFileError, match=r"larger than the loader's bound.*MAX_STORAGE_BYTES"):
        S.load_stylegan2(tmp_path / "huge.pkl")
    short = legacy_storage_blob(1000, torch.arange(4.0).numpy().tobytes())  # claims 4000 bytes, holds 16
    (tmp_path / "short.pkl").write_bytes(pickle.dumps({"G_ema": nv_tensor(short, (4,), (1,))}, protocol=3))
    with pytest.raises(WeightFileError, match="more bytes than the file holds"):
        S.load_stylegan2(tmp_path / "short.pkl")


def test_hand_written_storage_bytes_read_like_torch_writes_them(tmp_path: Path) -> None:
    values = torch.tensor([1.5, -2.0, 3.25, 8.0])
    blob = legacy_storage_blob(4, values.numpy().tobytes())
    from_torch = torch.load(io.BytesIO(blob), weights_only=True)  # torch reads the hand-written bytes too
    assert torch.equal(torch.tensor([], dtype=torch.float32).set_(from_torch._untyped_storage), values)
    loaded = S.safe_unpickle(io.BytesIO(pickle.dumps(nv_tensor(blob, (2, 2), (1, 2)), protocol=3)))
    assert torch.equal(loaded, values.as_strided((2, 2), (1, 2)))


def test_stride0_expanded_pt_is_refused(tmp_path: Path) -> None:
    torch.save(expanded_rosinality_checkpoint(), tmp_path / "expanded.pt")
    assert (tmp_path / "expanded.pt").stat().st_size < 100_000
    with pytest.raises(WeightFileError, match="stride-0 or overlapping"):
        S.load_stylegan2(tmp_path / "expanded.pt")


@pytest.mark.parametrize(("zip_format", "message"), [(True, "larger than its storage"),  # torch refuses to grow it
                                                     (False, "past the end of its storage")])  # the pre-flight
def test_pt_tensor_larger_than_its_storage_is_refused(tmp_path: Path, zip_format: bool, message: str) -> None:
    big = Reduce(torch._utils._rebuild_tensor_v2, typed_storage(torch.arange(4.0)), 0, (3 * 10**9,), (1,), False,
                 OrderedDict())
    torch.save({"g_ema": {"style.1.weight": big}}, tmp_path / "big.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightFileError, match=message):
        S.load_stylegan2(tmp_path / "big.pt")


def test_legacy_pt_storage_claims_are_checked_before_torch_reserves_them(tmp_path: Path) -> None:
    values = torch.arange(4.0).numpy().tobytes()
    tensor = Reduce(torch._utils._rebuild_tensor_v2, STORAGE, 0, (4,), (1,), False, OrderedDict())
    (tmp_path / "ok.pt").write_bytes(legacy_torch_save({"g_ema": {"w": tensor}}, 4, values))
    assert torch.equal(torch.load(tmp_path / "ok.pt", weights_only=True)["g_ema"]["w"], torch.arange(4.0))
    with pytest.raises(WeightFileError, match="not a rosinality StyleGAN2 g_ema"):  # the pre-flight passes it
        S.load_stylegan2(tmp_path / "ok.pt")
    (tmp_path / "claim.pt").write_bytes(legacy_torch_save({"g_ema": {"w": tensor}}, 10**7, values))
    with pytest.raises(WeightFileError, match="more bytes than the file holds"):  # torch would reserve 40 MB
        S.load_stylegan2(tmp_path / "claim.pt")
    (tmp_path / "huge.pt").write_bytes(legacy_torch_save({"g_ema": {"w": tensor}}, 10**9, values))
    with pytest.raises(WeightFileError, match="larger than the loader's bound"):
        S.load_stylegan2(tmp_path / "huge.pt")


PEAK_PROBE = """
import json, resource, sys
from olam_edit.adapters import stylegan2 as S
from olam_edit.errors import WeightFileError

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def virtual_peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmPeak:")) / 1024

S.load_stylegan2(sys.argv[1])  # warm up: imports, thread pools, allocator arenas
rss, virtual, out = peak_mb(), virtual_peak_mb(), {}
for path in sys.argv[2:]:
    try:
        S.load_stylegan2(path)
        out[path] = "loaded"
    except WeightFileError as exc:
        out[path] = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"errors": out, "rss_mb": peak_mb() - rss, "virtual_mb": virtual_peak_mb() - virtual}))
"""


def test_hostile_files_keep_peak_memory_low(tmp_path: Path) -> None:
    save_rosinality(tiny(), tmp_path / "good.pt")
    (tmp_path / "big.pkl").write_bytes(oversized_tensor_pickle())
    (tmp_path / "huge.pkl").write_bytes(unbounded_storage_pickle())
    torch.save(expanded_rosinality_checkpoint(), tmp_path / "expanded.pt")
    hostile = [str(tmp_path / name) for name in ("big.pkl", "huge.pkl", "expanded.pt")]
    run = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(tmp_path / "good.pt"), *hostile],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert all(report["errors"][p].startswith("WeightFileError: ") for p in hostile), report["errors"]
    assert "past the end" in report["errors"][hostile[0]] and "bound" in report["errors"][hostile[1]]
    assert "stride-0" in report["errors"][hostile[2]]
    assert report["rss_mb"] < 300, report
    assert report["virtual_mb"] < 4096, report  # the pickles ask for 12 GB and 256 MB; nothing is reserved


def test_error_messages_never_format_the_files_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from olam_edit.adapters.stylegan2 import opscan, unpickle

    def no_repr(self: object) -> str:
        raise AssertionError("repr called on an object read from the file")

    monkeypatch.setattr(unpickle._EasyDict, "__repr__", no_repr)  # what the file's dnnlib.util.EasyDict becomes
    monkeypatch.setattr(unpickle._DType, "__repr__", no_repr)  # and its numpy.dtype
    # The opcode pre-scan refuses these values first (test_hostile_pickles); lifted here so that the
    # refusals after unpickling are shown never to format them either.
    monkeypatch.setattr(opscan, "MAX_EXPANDED_NODES", 2**62)
    laughs: object = EasyDict(a=1)
    key: object = np.dtype("float32")
    for depth in range(40):
        laughs = (laughs, laughs)  # its repr would be 2**40 EasyDicts long
        key = (key, key) if depth < 16 else key  # hashable (hashing is exponential too: kept shallower)
    marker = object()

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return laughs if obj is marker else None

    out = io.BytesIO()
    saved = {name: sys.modules.get(name) for name in _fake_modules()}
    sys.modules.update(_fake_modules())
    try:
        WithPersistentId(out, protocol=3).dump({"G_ema": marker})
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    g = nv_generator(tiny(flavor="nvlabs"))
    g.state["_modules"]["synthesis"].state["_modules"]["b4"].state["architecture"] = laughs
    cases = {"pid.pkl": (out.getvalue(), UnsafePickleError, "persistent ids"),
             "class.pkl": (dumps({"G_ema": Record(laughs)}), UnsafePickleError, "persistent object of class tuple"),
             "attr.pkl": (dumps({"G_ema": g}), WeightFileError, "architecture"),
             "keys.pkl": (dumps({key: 1, "G": 2}), WeightFileError, "no NVlabs generator")}
    for name, (data, kind, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(kind, match=message) as caught:
            S.load_stylegan2(tmp_path / name)
        assert "tuple of 2 items" in str(caught.value) and len(str(caught.value)) < 600


@pytest.mark.parametrize("change", [
    lambda c: {**c, "config": {**c["config"], "size": "16"}},        # a string where a number belongs
    lambda c: {**c, "config": {**c["config"], "size": 16.0}},        # a float where an int belongs
    lambda c: {**c, "config": {**c["config"], "lr_mlp": None}},      # null where a number belongs
    lambda c: {**c, "config": {**c["config"], "surprise": 1}},       # an unknown field
    lambda c: {**c, "config": {**c["config"], "channels": {"x": 8}}},  # a resolution that is not a number
    lambda c: {**c, "config": [1, 2]},                               # not an object
    lambda c: [c],                                                   # the whole file a list
])
def test_hostile_config_json_is_one_clear_error(tmp_path: Path, change) -> None:
    folder = S.save_stylegan2(tiny(), tmp_path / "ours")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(change(config)))
    with pytest.raises(WeightFileError):
        S.load_stylegan2(folder)


def test_deep_or_binary_config_json_is_one_clear_error(tmp_path: Path) -> None:
    folder = S.save_stylegan2(tiny(), tmp_path / "ours")
    (folder / "config.json").write_text("[" * 5000 + "]" * 5000)  # json would recurse past the C stack guard
    with pytest.raises(WeightFileError, match="nests too deeply"):
        S.load_stylegan2(folder)
    (folder / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(WeightFileError, match="UTF-8"):
        S.load_stylegan2(folder)
