"""CLI command ``export-lora``: write an edit folder as a LoRA that stock PEFT / diffusers load."""

from __future__ import annotations

import argparse
import math

from olam_edit.cli.common import command

FORMATS = ("peft", "diffusers", "kohya")
BASE_VERSIONS = ("sd_v1", "sd_v2", "sd_v2_v", "sdxl_base_v1-0")  # kohya's ss_base_model_version values


def _add_export_lora(p: argparse.ArgumentParser) -> None:
    p.add_argument("edit", metavar="EDIT_DIR", help="edit folder (or the Hub repo id of a published edit)")
    p.add_argument("out", metavar="OUT_DIR", help="folder to write the LoRA into")
    p.add_argument("--format", choices=FORMATS, default="peft",
                   help="peft: adapter_model.safetensors + adapter_config.json (PeftModel.from_pretrained); "
                        "diffusers: pytorch_lora_weights.safetensors (pipe.load_lora_weights); "
                        "kohya: lora.safetensors with lora_unet_* keys (A1111, ComfyUI, kohya's scripts; "
                        "pipe.load_lora_weights too). Default peft")
    p.add_argument("--prefix", default=None,
                   help="diffusers key prefix (default: the edit's component, else 'unet')")
    p.add_argument("--base-version", choices=BASE_VERSIONS, default=None,
                   help="kohya format: the base model written to the metadata (default: read off the edited layers)")


@command("export-lora", "export an edit as a PEFT, diffusers or kohya LoRA (exact: alpha = rank)")
def cmd_export_lora(args: argparse.Namespace) -> int:
    from olam_edit.edit.core import Edit
    from olam_edit.edit.lora import to_lora

    edit = Edit.from_pretrained(args.edit)  # a folder or a Hub id, verified
    out = to_lora(edit, args.out, args.format, prefix=args.prefix, base_version=args.base_version)
    ranks = sorted({d.rank * math.prod(d.lam.shape[2:]) for d in edit.deltas.values()})
    print(f"wrote a {args.format} LoRA of {len(edit.deltas)} layer(s) to {out} (LoRA ranks {ranks})")
    return 0


cmd_export_lora.configure = _add_export_lora
