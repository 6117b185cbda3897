"""olam-edit: rewrite one rule inside a pretrained generative model (Bau et al., ECCV 2020).

The core is framework-agnostic: it imports torch, numpy, safetensors and huggingface_hub only.
Model families live in :mod:`olam_edit.adapters`. The names below are the public API; each lives in
the folder of its concern (memory, edit, rules, hub) and is re-exported here.
"""

from olam_edit._version import __version__
from olam_edit.edit.apply import apply_edit, check_base, edited, edited_parameters, model_lock, preview, revert_edit
from olam_edit.edit.core import Edit
from olam_edit.memory.collect import collect_stats, stats_fingerprint
from olam_edit.memory.delta import Delta
from olam_edit.memory.directions import context_directions, single_key_direction
from olam_edit.memory.handles import LayerHandle, get_handle, list_layers
from olam_edit.memory.solve import Problem, SolveReport, erase_delta, rewrite_layer, solve_lambda
from olam_edit.memory.stats import SecondMoment
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

__all__ = [
    "Delta",
    "Edit",
    "EditRequest",
    "LayerHandle",
    "Problem",
    "Rewriter",
    "SecondMoment",
    "Selection",
    "SolveReport",
    "__version__",
    "apply_edit",
    "check_base",
    "collect_stats",
    "context_directions",
    "edited",
    "edited_parameters",
    "erase_delta",
    "get_handle",
    "list_layers",
    "model_lock",
    "preview",
    "revert_edit",
    "rewrite_layer",
    "single_key_direction",
    "solve_lambda",
    "stats_fingerprint",
]
