"""A small GPT-style decoder for the convergence study and ``nvfp4-compile demo``.

Pre-norm blocks of RMSNorm, causal self-attention with rotary position embeddings and a
SwiGLU MLP; byte-level tokens (vocabulary 256). The repeated blocks live in ``blocks.<i>``
and the output projection is ``lm_head``, so the backend's default policy finds the block
stack (and keeps its last 15% in high precision) and keeps the head in high precision.
Every linear layer has dimensions that are multiples of 32, so all weights tile into
16x16 blocks (NVFP4 2D) and 32-element blocks (MXFP4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 256
    dim: int = 128
    depth: int = 4
    heads: int = 4
    hidden: int = 352  # SwiGLU width, about 8/3 of dim, a multiple of 32
    seq_len: int = 128
    rope_base: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, ``[seq_len, head_dim / 2]`` in FP32."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension of ``x [b, h, s, d]``."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.proj = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos[:s], sin[:s]), apply_rotary(k, cos[:s], sin[:s])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden, bias=False)
        self.down_proj = nn.Linear(config.hidden, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.dim)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.dim)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """``GPT(config)(tokens)`` -> logits; ``GPT(config)(tokens, targets)`` -> mean cross-entropy (FP32)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.dim % config.heads or (config.dim // config.heads) % 2:
            raise ValueError(f"dim {config.dim} must split into {config.heads} heads of even size")
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.RMSNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab, bias=False)
        cos, sin = rotary_tables(config.seq_len, config.dim // config.heads, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; the projections into the residual stream scaled by 1/sqrt(2 depth)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.depth)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # RMSNorm gains stay at one
            std = residual_std if name.endswith(("attn.proj.weight", "mlp.down_proj.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, tokens, targets=None):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
