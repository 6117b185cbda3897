"""``olam-edit stats``: collect (or reuse) a layer's key statistics."""

from __future__ import annotations

import argparse

from olam_edit.cli.common import command


def _add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    p.add_argument("--layer", required=True, help="layer name (olam-edit stats --model M --list shows them)")
    p.add_argument("--samples", type=int, default=1000, help="number of latents (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the latents (default 1)")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--cache-dir", default=None, help="statistics cache (default ~/.cache/olam_edit/stats)")
    p.add_argument("--out", default=None, help="also write the statistic to this .safetensors file")


@command("stats", "collect (or reuse) a layer's key statistics C = E[k k^T]")
def cmd_stats(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator

    gen = load_generator(args.model)
    sm = gen.stats(args.layer, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                   cache_dir=args.cache_dir)
    print(f"{args.layer}: {sm.count} keys of dimension {sm.dim}; fingerprint {sm.manifest['fingerprint'][:16]}")
    if args.out:
        print(f"wrote {sm.save(args.out)}")
    return 0


cmd_stats.configure = _add_stats
