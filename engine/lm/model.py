"""TinyTransformerLM: a small pre-norm causal decoder with tied embeddings, and its sampler.

Shapes: B batch, T time (tokens), C = d_model channels, H heads, V vocabulary.

    ids (B, T) -> tok_emb + pos_emb -> n_layers x [x + attn(ln1(x)); x + mlp(ln2(x))]
               -> ln_f -> logits = x @ tok_emb.weight.T  (B, T, V)

The output head reuses the input embedding matrix through `F.linear`, so the tied matrix is a
single parameter that appears once in `state_dict()` and safetensors saves it as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "TinyTransformerLM"]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(
            d_model, d_model, bias=bias
        )  # a residual projection: init scaled down
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, H, T, C/H)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}
"""The MLP's activation: exact GELU (erf), or GPT-2's tanh approximation of it; the value is
`F.gelu`'s `approximate` argument."""


class MLP(nn.Module):
    """Position-wise feed-forward: C -> d_ff -> GELU -> C."""

    def __init__(
        self, d_model: int, d_ff: int, dropout: float, bias: bool = True, activation: str = "gelu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        self.approximate = ACTIVATIONS[activation]
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)  # a residual projection: init scaled down
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        bias: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, d_ff, dropout, bias, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformerLM(nn.Module):
    """A causal decoder-only language model.

    Args:
        vocab_size: Number of token ids, V.
        d_model: Width of the residual stream, C.
        n_heads: Attention heads; must divide `d_model`.
        n_layers: Transformer blocks.
        d_ff: Hidden width of each block's MLP.
        max_seq_len: Learned positions: the longest input `forward` accepts.
        dropout: Dropout probability on embeddings, attention weights and residual branches.
        bias: Biases in the linear layers and LayerNorms (GPT-2 style); nanoGPT's
            `bias=False` is a little faster and often a little better.
        activation: `gelu` (exact) or `gelu_tanh` (GPT-2's tanh approximation).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 4,
        d_ff: int = 512,
        max_seq_len: int = 128,
        dropout: float = 0.0,
        *,
        bias: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)  # also the output head (tied)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, bias, activation) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        # GPT-2 init: N(0, 0.02) everywhere; the projections that add into the residual
        # stream get std 0.02/sqrt(2*n_layers), so the stream's variance does not grow
        # with depth (two residual additions per block).
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                residual = name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight")
                std = 0.02 / math.sqrt(2 * n_layers) if residual else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
        # LayerNorm weights keep their default of 1.

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits `(B, T, V)` for token ids `(B, T)`, with `T <= max_seq_len`."""
        B, T = ids.shape
        if self.max_seq_len < T:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.max_seq_len}")
        pos = torch.arange(T, device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.tok_emb.weight)  # tied head: (B, T, V)

    def num_parameters(self) -> int:
        """Trainable parameters (the tied matrix counted once)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = 0,
    ) -> list[int]:
        """Continue a prompt token by token.

        Args:
            prompt_ids: The prompt's ids, at least one.
            max_new_tokens: How many ids to add.
            temperature: 0 = greedy (always the most likely id); otherwise logits are
                divided by it before sampling (lower = more conservative).
            top_k: Sample only among the k most likely ids.
            top_p: Nucleus sampling: only among the most likely ids whose probabilities
                sum to at least p.
            seed: Seeds a private generator, so a seed gives the same text every time and
                the global RNG is untouched. None draws from a fresh random seed.

        Returns:
            The prompt's ids followed by the new ones. The context is cropped to the last
            `max_seq_len` ids at every step.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        device = self.tok_emb.weight.device
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(1, -1)
        if ids.numel() == 0:
            raise ValueError("generate() needs a prompt of at least one token")
        g = torch.Generator(device=device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits = self(ids[:, -self.max_seq_len :])[0, -1].float()  # (V,)
                ids = torch.cat(
                    [ids, _next_token(logits, temperature, top_k, top_p, g).view(1, 1)], 1
                )
        finally:
            self.train(was_training)
        return ids[0].tolist()


def _next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    g: torch.Generator,
) -> torch.Tensor:
    """One id drawn from `logits` (V,) under the given sampling rules."""
    if temperature == 0:
        return logits.argmax()
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep an id while the mass before it is below top_p (the first id always stays)
        drop = (torch.cumsum(sorted_probs, 0) - sorted_probs) >= top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=g)[0]
