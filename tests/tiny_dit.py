"""Tiny seeded DiT pipelines built in-process from configs (no downloads): PixArt-Sigma, Sana, SD3 and
Flux, each with tiny text encoders of its own kinds (T5 encoder, Gemma 2, CLIP with projection) and
offline tokenizers: a Unigram T5 tokenizer made from a word list (also standing in for Sana's Gemma
tokenizer) and the hand-written CLIP tokenizer of :mod:`tiny_diffusers`. No VAE: the tests run the
text side and the transformer, never a decode."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_diffusers import MAX_LENGTH, corpus_words, tiny_text_encoder, tiny_tokenizer

T5_WIDTH = 32


def _sana_instruction_words() -> list[str]:
    import inspect

    from diffusers import SanaPipeline

    chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    return " ".join(chi).split()


def t5_tokenizer():
    """A real T5 (Unigram) tokenizer whose pieces are the test and corpus words and the words of Sana's
    default complex human instruction (so it stays ~200 tokens), plus single characters."""
    from transformers import T5Tokenizer

    words = [*corpus_words(), *_sana_instruction_words()]
    letters = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz:\n"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<bos>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -1.0) for w in words] + [(c, -6.0) for c in letters]
    return T5Tokenizer(vocab=list(dict(vocab).items()), extra_ids=0)


def t5_encoder(vocab_size: int, seed: int, width: int = T5_WIDTH):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return T5EncoderModel(config).eval()


def gemma_encoder(vocab_size: int, seed: int, width: int = 16):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=vocab_size, hidden_size=width, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=2048,
                          pad_token_id=0, bos_token_id=3, eos_token_id=1)
    return Gemma2Model(config).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler()


def tiny_pixart(seed: int = 0):
    """PixArtSigmaPipeline: T5 (32-d) -> caption_projection -> 2 blocks of attn2 over 16-d captions."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    tr = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                  num_attention_heads=2, in_channels=4, out_channels=8, cross_attention_dim=16,
                                  caption_channels=T5_WIDTH, norm_num_groups=8, use_additional_conditions=False)
    pipe = PixArtSigmaPipeline(tokenizer=tok, text_encoder=t5_encoder(len(tok), seed), vae=None,
                               transformer=tr.eval(), scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sana(seed: int = 0):
    """SanaPipeline: Gemma 2 (16-d) -> caption_projection -> caption_norm -> attn2 over 16-d captions."""
    from diffusers import SanaPipeline, SanaTransformer2DModel

    tok = t5_tokenizer()
    torch.manual_seed(seed)
    tr = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                                attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                cross_attention_dim=16, caption_channels=16, sample_size=8)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=gemma_encoder(len(tok), seed), vae=None, transformer=tr.eval(),
                        scheduler=_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip_with_projection(tok, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=16,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return CLIPTextModelWithProjection(config).eval()


def tiny_sd3(folder: Path, seed: int = 0):
    """StableDiffusion3Pipeline: two 16-d CLIPs (32-d, zero-padded to 32) + T5 (32-d) -> context_embedder."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    clip, t5 = tiny_tokenizer(folder / "clip"), t5_tokenizer()
    torch.manual_seed(seed)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                               num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=T5_WIDTH,
                               pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(transformer=tr.eval(), scheduler=_scheduler(), vae=None,
                                    text_encoder=_clip_with_projection(clip, seed + 1), tokenizer=clip,
                                    text_encoder_2=_clip_with_projection(clip, seed + 2), tokenizer_2=clip,
                                    text_encoder_3=t5_encoder(len(t5), seed + 3), tokenizer_3=t5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(folder: Path, seed: int = 0):
    """FluxPipeline: CLIP (32-d pooled) and T5 (32-d tokens) -> context_embedder."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    clip, t5 = tiny_tokenizer(folder / "clip"), t5_tokenizer()
    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=32,
                                axes_dims_rope=[2, 2, 4])
    pipe = FluxPipeline(transformer=tr.eval(), scheduler=_scheduler(), vae=None,
                        text_encoder=tiny_text_encoder(clip, seed + 1), tokenizer=clip,
                        text_encoder_2=t5_encoder(len(t5), seed + 2), tokenizer_2=t5)
    pipe.set_progress_bar_config(disable=True)
    return pipe
