"""Load, save and convert StyleGAN2 generators without running code from the checkpoint.

Formats read into :class:`~olam_edit.adapters.stylegan2.net.StyleGAN2Generator`:

* rosinality/stylegan2-pytorch ``.pt``: ``{"g_ema": state_dict, "latent_avg": [D]}``, read with
  ``torch.load(weights_only=True)``; the architecture is inferred from the shapes (the mapping
  learning-rate multiplier, which shapes cannot show, is taken as rosinality's 0.01).
* NVlabs stylegan2-ada-pytorch / stylegan3 ``.pkl`` (``G_ema``): read by :class:`SafeUnpickler`,
  which only rebuilds tensors, containers and ``torch_utils.persistence`` records as plain data.
  The source code embedded in those records is never imported or executed. Only StyleGAN2
  "skip" generators without labels convert; StyleGAN3 (alias-free) networks are refused.
* ours: a folder with ``model.safetensors`` (our state-dict names) and ``config.json``.

:class:`StyleGAN2Adapter` wraps a loaded generator in the package's Generator protocol (seeded
latents, truncation 0.5 and constant noise by default); :func:`load_generator_from_path` is what
``olam_edit.adapters.load_generator`` calls for local paths and Hub snapshots.

Everything else (``os.system`` in a pickle, a persistence record of an unknown class) raises
:class:`~olam_edit.errors.UnsafePickleError` before anything is built.
"""

from olam_edit.adapters.stylegan2.build import build_generator
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.files import (
    convert_stylegan2,
    find_stylegan2_file,
    load_olam_stylegan2,
    load_stylegan2,
    save_stylegan2,
)
from olam_edit.adapters.stylegan2.generator import StyleGAN2Adapter, load_generator_from_path
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.nvlabs import from_nvlabs, load_nvlabs_pickle
from olam_edit.adapters.stylegan2.rosinality import (
    estimate_w_avg,
    from_rosinality,
    load_rosinality,
    rosinality_checkpoint,
)
from olam_edit.adapters.stylegan2.unpickle import PersistentRecord, SafeUnpickler, safe_unpickle

__all__ = [
    "PersistentRecord",
    "SafeUnpickler",
    "StyleGAN2Adapter",
    "StyleGAN2Config",
    "StyleGAN2Generator",
    "build_generator",
    "convert_stylegan2",
    "estimate_w_avg",
    "find_stylegan2_file",
    "from_nvlabs",
    "from_rosinality",
    "load_generator_from_path",
    "load_nvlabs_pickle",
    "load_olam_stylegan2",
    "load_rosinality",
    "load_stylegan2",
    "rosinality_checkpoint",
    "safe_unpickle",
    "save_stylegan2",
]
