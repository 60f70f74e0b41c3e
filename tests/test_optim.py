"""AdamW grouping: decay on weight matrices only."""

from __future__ import annotations

from hookloop.lm.model import TinyTransformerLM
from hookloop.lm.optim import build_adamw, param_groups


def test_decay_only_on_matrices_that_are_not_embeddings():
    model = TinyTransformerLM(50, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_seq_len=8)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n}
    assert {
        "tok_emb.weight",
        "pos_emb.weight",
        "ln_f.weight",
        "ln_f.bias",
        "blocks.0.attn.qkv.bias",
        "blocks.1.ln2.weight",
    } <= kept
    assert all(name.endswith("weight") and "ln" not in name for name in decayed)
    # every parameter exactly once, the tied matrix included
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_adamw_hyperparameters():
    model = TinyTransformerLM(50, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=8)
    opt = build_adamw(model, lr=3e-4, weight_decay=0.05)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8 and group["lr"] == 3e-4
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
