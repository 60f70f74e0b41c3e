"""TinyTransformerLM: shapes, causality, weight tying, init, generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hookloop.lm.model import TinyTransformerLM


def tiny(vocab=37, **kw):
    torch.manual_seed(0)
    args = dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16, dropout=0.0)
    return TinyTransformerLM(vocab, **{**args, **kw})


def test_logits_shape():
    model = tiny()
    assert model(torch.randint(0, 37, (3, 11))).shape == (3, 11, 37)
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_changing_a_future_token_changes_no_earlier_logit():
    model = tiny().eval()
    ids = torch.randint(0, 37, (2, 12))
    base = model(ids)
    for t in (0, 5, 11):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % 37
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_embeddings_are_tied_and_stored_once(tmp_path):
    model = tiny()
    state = model.state_dict()
    assert [k for k in state if state[k].shape == (37, 32)] == ["tok_emb.weight"]
    save_file(state, tmp_path / "model.safetensors")  # fails if a tensor were shared twice
    other = tiny()
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    ids = torch.randint(0, 37, (1, 8))
    torch.testing.assert_close(other(ids), model(ids))
    # the gradient of the output head lands in the embedding matrix
    F.cross_entropy(model(ids).view(-1, 37), ids.view(-1)).backward()
    assert model.tok_emb.weight.grad is not None


def test_init_std_and_scaled_residual_projections():
    model = TinyTransformerLM(100, d_model=256, n_heads=4, n_layers=8, d_ff=1024, max_seq_len=64)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.blocks[3].mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.blocks[0].attn.qkv.bias.abs().sum().item() == 0


def test_initial_loss_is_close_to_log_vocab():
    vocab = 500
    model = tiny(vocab=vocab)
    ids = torch.randint(0, vocab, (8, 16))
    loss = F.cross_entropy(model(ids).view(-1, vocab), ids.roll(-1, 1).view(-1))
    assert loss.item() == pytest.approx(math.log(vocab), abs=0.1)


def test_greedy_generation_is_argmax_and_deterministic():
    model = tiny()
    out = model.generate([1, 2, 3], 5, temperature=0)
    assert out[:3] == [1, 2, 3] and len(out) == 8
    ids = torch.tensor([out[:3]])
    assert out[3] == model(ids)[0, -1].argmax().item()
    assert model.generate([1, 2, 3], 5, temperature=0, seed=99) == out


def test_sampling_is_deterministic_per_seed_and_leaves_global_rng_alone():
    model = tiny()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model.generate([1], 20, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(1), before)  # the global generator was not used
    assert model.generate([1], 20, temperature=1.0, seed=5) == a
    assert model.generate([1], 20, temperature=1.0, seed=6) != a


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny()
    greedy = model.generate([4, 5], 10, temperature=0)
    assert model.generate([4, 5], 10, temperature=1.0, top_k=1, seed=3) == greedy
    assert model.generate([4, 5], 10, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_generation_crops_context_to_max_seq_len():
    model = tiny()
    out = model.generate(list(range(30)), 4, temperature=0)  # prompt longer than 16
    assert len(out) == 34
    assert out[30] == model(torch.tensor([list(range(14, 30))]))[0, -1].argmax().item()


def test_generate_restores_training_mode_and_checks_arguments():
    model = tiny().train()
    model.generate([1], 2)
    assert model.training
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            model.generate([1], 2, **bad)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([], 2)


def test_without_bias_there_are_no_bias_parameters():
    model = tiny(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model(torch.randint(0, 37, (1, 5))).shape == (1, 5, 37)


def test_generate_stops_at_the_stop_id():
    torch.manual_seed(0)
    model = TinyTransformerLM(12, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16)
    free = model.generate([1, 2], 10, temperature=0)
    assert len(free) == 12
    stop = free[5]  # the id greedy decoding draws fourth
    first = free.index(stop, 2)
    assert model.generate([1, 2], 10, temperature=0, stop_id=stop) == free[:first]
