"""nanoGPT's CPU baseline, the same work through hookloop: tiny Shakespeare, char-level.

    .venv/bin/python benchmarks/nanogpt_shakespeare.py [--text PATH] [--steps 2000] [--threads 1]

nanoGPT's README trains this on a CPU with
`python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0` and reports a validation loss of about 1.88. Here: the
same text (../shared/data/tinyshakespeare.txt), 90/10 split, char vocabulary, 4 layers,
4 heads, d_model 128 (MLP 512), context 64, batch 12 random windows, dropout 0, 2000 steps,
AdamW lr 1e-3 with 100 warmup steps and cosine decay to 1e-4 (the built-in `schedule`
plugin), and nanoGPT's other settings: no biases in linears and LayerNorms (`bias=False`),
beta2 0.99, weight decay 0.1 (on matrices; hookloop leaves embeddings undecayed), gradient
clipping 1.0.
Two validation losses are reported: over the whole validation split, and nanoGPT's own
estimate (the mean of 20 batches of 12 random windows, `eval_iters=20`), which is what its
1.88 is. torch runs on `--threads` intra-op threads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=SHAKESPEARE)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--bias", action="store_true", help="biases in linears and norms "
                        "(nanoGPT's config has none)")
    args = parser.parse_args()

    from hookloop.config import load_config
    from hookloop.prepare import prepare_texts, split_text
    from hookloop.recipe import build_run

    with tempfile.TemporaryDirectory(prefix="hookloop-nanogpt-") as tmp:
        train, val = split_text(args.text.read_text(encoding="utf-8"), 0.1)
        prepare_texts(train, val, Path(tmp) / "data", tokenizer="char", source=str(args.text))
        config = load_config(None, [
            f"data.path={tmp}/data", "data.seq_len=64", "data.batch_size=12",
            "data.sampling=random", "model.d_model=128", "model.n_heads=4", "model.n_layers=4",
            "model.d_ff=512", "model.max_seq_len=64", "model.dropout=0.0",
            f"model.bias={str(args.bias).lower()}", "optimizer.lr=1e-3",
            "optimizer.betas=[0.9, 0.99]", "optimizer.weight_decay=0.1",
            f"training.max_steps={args.steps}", f"training.threads={args.threads}",
            f"training.seed={args.seed}", "training.device=cpu",
            "plugins.schedule.kind=cosine", "plugins.schedule.warmup_steps=100",
            "plugins.schedule.min_lr=1e-4", "plugins.clip.max_norm=1.0",
            "plugins.eval.every=250", "plugins.eval.max_batches=20",
            'plugins.disable=["checkpoint", "progress"]',
        ])
        run = build_run(config, Path(tmp) / "run")
        start = time.perf_counter()
        state = run.fit()
        seconds = time.perf_counter() - start
        t_eval = time.perf_counter()
        metrics = run.engine.evaluate()
        eval_seconds = time.perf_counter() - t_eval
        estimate = nanogpt_estimate(run, Path(tmp) / "data" / "val.bin", args.seed)
    print(f"\nparameters {run.engine.model.num_parameters():,}, vocabulary {run.tokenizer.vocab_size}, "
          f"threads {args.threads}")
    print("| seed | steps | tokens | train wall time (s) | tokens/s | val loss, full split | "
          "val loss, nanoGPT estimate (20 random batches) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.seed} | {state.step} | {state.tokens_seen:,} | {seconds:.1f} | "
          f"{state.tokens_seen / seconds:,.0f} | {metrics['val_loss']:.4f} | {estimate:.4f} |")
    print(f"(full-split evaluation took {eval_seconds:.1f}s)")


def nanogpt_estimate(run, val_path: Path, seed: int) -> float:
    """nanoGPT's `estimate_loss()` on the validation split: the mean loss of 20 batches of
    12 random windows (eval_iters=20), drawn from a generator seeded with `seed`."""
    import torch

    from hookloop.data import TokenDataset
    from hookloop.losses import next_token_loss

    batches = TokenDataset(val_path, seq_len=64, batch_size=12, sampling="random",
                           batches_per_epoch=20, seed=seed)
    model = run.engine.model.eval()
    with torch.no_grad():
        losses = [next_token_loss(model, batch).item() for batch in batches]
    return sum(losses) / len(losses)


if __name__ == "__main__":
    main()
