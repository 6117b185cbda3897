"""``olam-edit stats``: collect (or reuse) a layer's key statistics."""

from __future__ import annotations

import argparse

from olam_edit.cli.common import command


def _add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--layer", help="layer name (--list shows them)")
    which.add_argument("--list", action="store_true", help="list the model's editable layers and exit")
    p.add_argument("--samples", type=int, default=1000, help="number of latents (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the latents (default 1)")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--cache-dir", default=None, help="statistics cache (default ~/.cache/olam_edit/stats)")
    p.add_argument("--out", default=None, help="also write the statistic to this .safetensors file")


@command("stats", "collect (or reuse) a layer's key statistics C = E[k k^T]")
def cmd_stats(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the ranks split the samples and rank 0 alone prints and writes ``--out``."""
    from olam_edit.adapters import load_generator
    from olam_edit.memory.distributed import is_main_process

    gen = load_generator(args.model)
    if args.list:
        print("\n".join(gen.layers()))
        return 0
    sm = gen.stats(args.layer, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                   cache_dir=args.cache_dir)
    if not is_main_process():
        return 0  # the other ranks only helped collect the statistic
    print(f"{args.layer}: {sm.count} keys of dimension {sm.dim}; fingerprint {sm.manifest['fingerprint'][:16]}")
    if args.out:
        print(f"wrote {sm.save(args.out)}")
    return 0


cmd_stats.configure = _add_stats
