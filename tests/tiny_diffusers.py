"""Tiny seeded diffusers models built in-process (no downloads): UNet, VAE, CLIP text encoder,
a CLIP tokenizer made from a vocabulary the test writes, and a StableDiffusionPipeline of them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a", "an", "photo", "of", "rose", "blue", "red", "cat", "dog", "sitting", "on", "the", "grass",
         "painting", "house", "tree", "green", "big", "small", "car", "sky", "in", "with", "flower", "field")
MAX_LENGTH = 20
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SDXL_PROJECTION = 16  # text_encoder_2's projection_dim


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def corpus_words() -> tuple[str, ...]:
    """The test words plus every word of the shipped prompt corpus (so no prompt splits into letters)."""
    from olam_edit.adapters.diffusers.text import corpus_prompts

    words = [w.strip(".,'") for p in corpus_prompts() for w in p.lower().split()]
    return tuple(dict.fromkeys([*WORDS, *(w for w in words if w)]))


def write_vocab(folder: Path, words: tuple[str, ...] | None = None) -> tuple[Path, Path]:
    """Write a CLIP-style ``vocab.json`` and ``merges.txt`` whose merges spell out ``words``."""
    words = corpus_words() if words is None else words
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            rule = f"{parts[0]} {parts[1]}"
            if rule not in merges:
                merges.append(rule)
                vocab.append(merged)
            parts = [merged, *parts[2:]]
    vocab += [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_vocab(folder)
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_LENGTH, bos_token=BOS, eos_token=EOS,
                         pad_token=EOS, unk_token=EOS)


def tiny_text_encoder(tokenizer, seed: int = 0, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():  # like a trained CLIP, give the final layer norm an offset (else every key has sum 0)
        norm = getattr(model, "text_model", model).final_layer_norm  # transformers 4 nests it in text_model
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0.0, 0.5)
    return model


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, sdxl: bool = False):
    """A 2-level UNet2DConditionModel; ``sdxl`` uses SDXL's layout (a plain first block, linear
    projections, 2 transformer layers per block, 64-d context from two encoders, text_time embeddings)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if sdxl:
        extra = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                     use_linear_projection=True, attention_head_dim=(2, 4), addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + SDXL_PROJECTION)
        cross_attention_dim = 2 * cross_attention_dim
    else:
        extra = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), cross_attention_dim=cross_attention_dim,
                                norm_num_groups=8, **extra)
    return unet.eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, sample_size=16)
    return vae.eval()


def tiny_pipeline(folder: Path, seed: int = 0):
    """A StableDiffusionPipeline of tiny seeded parts (no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tok = tiny_tokenizer(folder / "tokenizer")
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=tiny_text_encoder(tok, seed), tokenizer=tok,
                                   unet=tiny_unet(seed), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(folder: Path, seed: int = 0):
    """A StableDiffusionXLPipeline: two 32-wide CLIP encoders (the UNet reads their 64-d concatenation)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed + 1)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=SDXL_PROJECTION,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed), text_encoder=tiny_text_encoder(tok, seed),
                                     text_encoder_2=CLIPTextModelWithProjection(config).eval(), tokenizer=tok,
                                     tokenizer_2=tok, unet=tiny_unet(seed, sdxl=True),
                                     scheduler=EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
