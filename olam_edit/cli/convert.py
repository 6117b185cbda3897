"""CLI command ``convert``: a StyleGAN2 checkpoint (rosinality .pt, NVlabs .pkl) to our safetensors."""

from __future__ import annotations

import argparse

from olam_edit.cli.common import command


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a rosinality .pt, an NVlabs .pkl (read without running its code) or our folder")
    p.add_argument("dst", help="output folder: model.safetensors + config.json")


@command("convert", "convert a StyleGAN2 checkpoint to safetensors (no pickle code is executed)")
def cmd_convert(args: argparse.Namespace) -> int:
    from olam_edit.adapters.stylegan2.files import convert_stylegan2, load_stylegan2

    out = convert_stylegan2(args.src, args.dst)
    gen = load_stylegan2(out)
    c = gen.config
    print(f"wrote {out} (StyleGAN2 {c.size}px, style_dim {c.style_dim}, {sum(p.numel() for p in gen.parameters())} "
          "parameters)")
    return 0


cmd_convert.configure = _add_convert
