"""Diffusers pipelines in the Space: which models get the text tab, loading one by name, and rendering
a grid of prompts and seeds, with or without an edit.

A model gets the **text** tab when it is a diffusers pipeline of a family the text rules support (a
UNet or a DiT with ``encode_prompt``: :func:`olam_edit.adapters.diffusers.families.family_of`), and
the **paint** tab otherwise (a spatial generator). Nothing here imports diffusers at module level.

Renders are deterministic: image ``(prompt, seed)`` starts from ``torch.Generator().manual_seed(seed)``
whatever else is in its batch. A pipeline without a VAE (the tiny test DiTs) is shown by its latent's
first three channels. An edit is rendered by applying it to the shared component under the
component's lock (:func:`olam_edit.model_lock`) and reverting it exactly before the lock is released,
so no other request ever sees it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from olam_edit import Edit, edited, model_lock
from olam_edit.errors import GeneratorLoadError, OlamEditError, UnsupportedModelError, explain
from olam_edit.hub.repo import looks_like_repo_id

TEXT, PAINT = "text", "paint"  # the two tabs
RENDER_BATCH = 4  # images per pipeline call
LATENT_SCALE = 3.0  # a latent's values shown: [-3, 3] -> [-1, 1]
SKIPPED_WEIGHTS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]


def component(model: Any) -> nn.Module:
    """The pipeline's UNet / transformer (the component text rules edit); UnsupportedModelError otherwise."""
    from olam_edit.adapters.diffusers.families import family_of

    return family_of(model)[1]


def is_pipeline(model: Any) -> bool:
    """Whether ``model`` is a pipeline the text tab edits: a supported UNet / DiT family with encode_prompt."""
    if not callable(getattr(model, "encode_prompt", None)) or isinstance(model, nn.Module):
        return False
    try:
        component(model)
    except UnsupportedModelError:
        return False
    return True


def tab_of(model: Any) -> str:
    """:data:`TEXT` for a diffusers pipeline, :data:`PAINT` for a spatial generator."""
    return TEXT if is_pipeline(model) else PAINT


def model_name(model: Any, spec: str) -> str:
    """What the status line calls ``model``: a generator's ``name``, else what the visitor named (``spec``)."""
    return str(getattr(model, "name", None) or spec)


# -- loading -----------------------------------------------------------------------------------------------
def hub_id(spec: str) -> bool:
    """Whether the UI may fetch ``spec``: a ``namespace/name`` Hub id, never a local path."""
    return spec.count("/") == 1 and looks_like_repo_id(spec) and not Path(spec).exists()


def names_pipeline(spec: str, endpoint: str | None = None) -> bool:
    """Whether ``spec`` (a local folder or a Hub id) holds a diffusers pipeline (its ``model_index.json``).

    A Hub repo is asked for that one file only; any failure (no such repo or file, no network) answers
    False, so the generator loader reports it in its own words."""
    path = Path(spec)
    if path.is_dir():
        return (path / "model_index.json").is_file()
    if not hub_id(spec):
        return False
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(spec, "model_index.json", endpoint=endpoint)
    except Exception:  # any failure means "not a pipeline we can load": the generator loader explains
        return False
    return True


def load_pipeline(spec: str, endpoint: str | None = None) -> Any:
    """The diffusers pipeline in the folder or Hub repo ``spec``, weights read from safetensors only (a repo
    with pickled weights only is refused), its progress bars off. GeneratorLoadError says why it failed."""
    from huggingface_hub import snapshot_download

    from olam_edit.hub.errors import hub_errors

    try:
        folder = Path(spec)
        if not folder.is_dir():
            with hub_errors("download the pipeline", spec):
                folder = Path(snapshot_download(spec, endpoint=endpoint, ignore_patterns=SKIPPED_WEIGHTS))
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(folder), use_safetensors=True)
    except OlamEditError as e:
        raise GeneratorLoadError(f"could not load the pipeline {spec!r}: {e.what}", got=e.got, fix=e.fix) from e
    except Exception as e:  # diffusers' own errors: a missing component, pickled weights only, ...
        raise GeneratorLoadError(explain(f"could not load the pipeline {spec!r}",
                                         got=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                                         expected="a diffusers pipeline folder with safetensors weights")) from e
    if not Path(spec).is_dir():
        pipe.register_to_config(_name_or_path=spec)  # edits name the repo as their base, not the download folder
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(spec: str, endpoint: str | None = None) -> Any:
    """What ``OLAM_EDIT_MODEL`` / ``--model`` names: a diffusers pipeline (a folder or Hub repo with
    ``model_index.json``, :func:`load_pipeline`), else a generator (:func:`olam_edit.adapters.load_generator`)."""
    if spec != "default" and names_pipeline(spec, endpoint):
        return load_pipeline(spec, endpoint)
    from olam_edit.adapters import load_generator

    return load_generator(spec)


# -- rendering ---------------------------------------------------------------------------------------------
def default_size(pipe: Any) -> int:
    """The pipeline's own image side in pixels (its component's sample size times the VAE's factor)."""
    config = getattr(component(pipe), "config", None)
    sample = getattr(config, "sample_size", None)
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    sample = sample or getattr(pipe, "default_sample_size", None) or 64
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8) or 8)


def _options(pipe: Any, steps: int, size: int) -> dict[str, Any]:
    """The call options every render uses (those this pipeline's ``__call__`` takes)."""
    params = inspect.signature(type(pipe).__call__).parameters
    wanted = {"num_inference_steps": steps, "height": size, "width": size, "use_resolution_binning": False,
              "clean_caption": False,  # as text rules encode prompts (PixArt / Sana; it would need bs4 and ftfy)
              "output_type": "pt" if getattr(pipe, "vae", None) is not None else "latent"}
    return {k: v for k, v in wanted.items() if k in params}


def _as_images(pipe: Any, out: Tensor, size: int) -> Tensor:
    """A pipeline's output as ``[B, 3, H, W]`` in [-1, 1]: decoded images from [0, 1], or a latent's
    first three channels (a packed Flux latent is unpacked first)."""
    if getattr(pipe, "vae", None) is not None:
        return out.float() * 2 - 1  # [B, 3, H, W]
    if out.ndim == 3 and callable(getattr(pipe, "_unpack_latents", None)):
        out = pipe._unpack_latents(out, size, size, pipe.vae_scale_factor)  # [B, C, h, w]
    x = out.float()[:, :3]  # [B, <=3, h, w]
    x = x.repeat(1, 3, 1, 1)[:, :3] if x.shape[1] < 3 else x  # [B, 3, h, w]
    return (x / LATENT_SCALE).clamp(-1, 1)


def render(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], steps: int, size: int,
           edit: Edit | None = None, scale: float = 1.0) -> Tensor:
    """Images ``[len(prompts) * len(seeds), 3, H, W]`` in [-1, 1], prompt-major, with ``edit`` at ``scale``
    (applied under the component's lock and reverted exactly; None or scale 0 is the base model)."""
    pairs = [(p, int(s)) for p in prompts for s in seeds]
    options = _options(pipe, int(steps), int(size))
    with model_lock(component(pipe)), torch.no_grad():
        if edit is None or scale == 0:
            return _render_pairs(pipe, pairs, options, size)
        with edited(pipe, edit, scale):
            return _render_pairs(pipe, pairs, options, size)


def _render_pairs(pipe: Any, pairs: list[tuple[str, int]], options: dict[str, Any], size: int) -> Tensor:
    out = []
    for i in range(0, len(pairs), RENDER_BATCH):
        chunk = pairs[i : i + RENDER_BATCH]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        images = pipe(prompt=[p for p, _ in chunk], generator=gens, **options).images
        out.append(_as_images(pipe, images, size).cpu())  # [b, 3, H, W]
    return torch.cat(out)
