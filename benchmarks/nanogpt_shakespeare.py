"""nanoGPT's CPU baseline on tiny Shakespeare, run three ways in one process.

    .venv/bin/python benchmarks/nanogpt_shakespeare.py [--seeds 1337 1 2] [--threads 1]
        [--variants raw,same,tuned] [--steps 2000] [--set KEY=VALUE ...]

nanoGPT's README trains this on a CPU with
`python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0` and reports a validation loss of about 1.88. The work
is fixed: the same text (../shared/data/tinyshakespeare.txt), char vocabulary, 90/10 split,
4 layers, 4 heads, d_model 128 (MLP 512), no biases (nanoGPT's `bias=False`), context 64,
12 windows a step, dropout 0, 2000 steps, lr 1e-3 with 100 warmup steps and cosine decay
to 1e-4, AdamW (beta2 0.99, weight decay 0.1), gradient clipping at 1.0.

The variants, interleaved seed by seed (raw, same, tuned, raw, same, ...):

- `raw`: nanoGPT's training procedure as a plain PyTorch loop: windows drawn at random
  offsets with replacement, nanoGPT's lr formula, weight decay on every matrix (embeddings
  too), `clip_grad_norm_`. The model is `TinyTransformerLM(bias=False)`, which is nanoGPT's
  GPT layer for layer (same init); for a given seed `raw` and `same` start from the same
  weights.
- `same`: the same procedure through hookloop (`build_run`: the Engine with the `schedule`,
  `clip`, `eval`, `nan_guard`, `divergence`, `console`, `csv`, `throughput` plugins),
  random windows with replacement as nanoGPT draws them. Two details are hookloop's own:
  embeddings are not decayed, and the warmup reaches the peak lr at update 100 (nanoGPT's
  at update 101).
- `tuned`: hookloop with three choices of its own for the same work (`TUNED` below): the
  training windows are the non-overlapping windows of the split, each visited once per
  epoch in a new shuffled order (`data.sampling = "sequential"`) instead of drawn with
  replacement; AdamW betas (0.7, 0.999) instead of (0.9, 0.99); no weight decay. Model,
  data, batch, steps and learning-rate schedule stay nanoGPT's.

Every variant is evaluated twice: the mean loss over every window of the validation split,
and nanoGPT's own `estimate_loss()` (the mean of 20 batches of 12 random validation
windows), which is what its 1.88 is. `--set` adds config overrides to the hookloop
variants. torch runs on `--threads` intra-op threads.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
VARIANTS = ("raw", "same", "tuned")
# The `tuned` variant's departures from nanoGPT's procedure (benchmarks/RESULTS.md shows
# what each one is worth, added one at a time).
TUNED = ["data.sampling=sequential", "optimizer.betas=[0.7, 0.999]", "optimizer.weight_decay=0"]
# nanoGPT's settings for this run, shared by every variant.
SEQ_LEN, BATCH, STEPS = 64, 12, 2000
D_MODEL, HEADS, LAYERS, D_FF = 128, 4, 4, 512
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 100
BETAS, WEIGHT_DECAY, CLIP = (0.9, 0.99), 0.1, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=SHAKESPEARE)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more config override for the hookloop variants, applied last",
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(
            f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}"
        )

    import torch

    from hookloop.lm.prepare import prepare_texts, split_text

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hookloop-nanogpt-") as tmp:
        data = Path(tmp) / "data"
        train, val = split_text(args.text.read_text(encoding="utf-8"), 0.1)
        prepare_texts(train, val, data, tokenizer="char", source=str(args.text))
        print(
            f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, "
            f"seeds {args.seeds}",
            flush=True,
        )
        for seed in args.seeds:
            for variant in variants:
                if variant == "raw":
                    row = run_raw(data, seed, args.steps)
                else:
                    row = run_hookloop(
                        data,
                        Path(tmp) / f"run-{variant}-{seed}",
                        seed,
                        args.steps,
                        args.threads,
                        variant,
                        args.overrides,
                    )
                rows.append(row)
                print(
                    f"{variant} seed {seed}: val loss {row['val_loss']:.4f} (estimate "
                    f"{row['estimate']:.4f}), {row['seconds']:.1f}s",
                    flush=True,
                )
    print_tables(rows, variants)


def run_hookloop(
    data: Path,
    run_dir: Path,
    seed: int,
    steps: int,
    threads: int,
    variant: str,
    overrides: list[str],
) -> dict:
    """Train one hookloop variant; its validation losses and training time."""
    from hookloop.lm.config import load_config
    from hookloop.lm.recipe import build_run

    config = load_config(
        None,
        [
            f"data.path={data}",
            f"data.seq_len={SEQ_LEN}",
            f"data.batch_size={BATCH}",
            "data.sampling=random",
            f"model.d_model={D_MODEL}",
            f"model.n_heads={HEADS}",
            f"model.n_layers={LAYERS}",
            f"model.d_ff={D_FF}",
            f"model.max_seq_len={SEQ_LEN}",
            "model.dropout=0.0",
            "model.bias=false",
            f"optimizer.lr={LR}",
            f"optimizer.betas=[{BETAS[0]}, {BETAS[1]}]",
            f"optimizer.weight_decay={WEIGHT_DECAY}",
            f"training.max_steps={steps}",
            f"training.threads={threads}",
            f"training.seed={seed}",
            "training.device=cpu",
            "plugins.schedule.kind=cosine",
            f"plugins.schedule.warmup_steps={WARMUP}",
            f"plugins.schedule.min_lr={MIN_LR}",
            f"plugins.clip.max_norm={CLIP}",
            "plugins.eval.every=250",
            "plugins.eval.max_batches=20",
            'plugins.disable=["checkpoint", "progress"]',
            *(TUNED if variant == "tuned" else []),
            *overrides,
        ],
    )
    run = build_run(config, run_dir)
    start = time.perf_counter()
    state = run.fit()
    seconds = time.perf_counter() - start
    model = run.engine.model
    return {
        "variant": variant,
        "seed": seed,
        "steps": state.step,
        "tokens": state.tokens_seen,
        "seconds": seconds,
        "val_loss": run.engine.evaluate()["val_loss"],
        "estimate": nanogpt_estimate(model, data, seed),
    }


def run_raw(data: Path, seed: int, steps: int) -> dict:
    """nanoGPT's training procedure as a plain PyTorch loop."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hookloop.lm.model import TinyTransformerLM
    from hookloop.lm.tokenizers import load_tokenizer

    vocab = load_tokenizer(data / "tokenizer.json").vocab_size
    tokens = np.memmap(data / "train.bin", dtype=np.uint16, mode="r")
    torch.manual_seed(seed)
    model = TinyTransformerLM(vocab, D_MODEL, HEADS, LAYERS, D_FF, SEQ_LEN, 0.0, bias=False)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=LR,
        betas=BETAS,
    )

    def lr_at(it: int) -> float:  # nanoGPT's get_lr, decaying over the whole run
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        ratio = (it - WARMUP) / (steps - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    start = time.perf_counter()
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        offsets = torch.randint(len(tokens) - SEQ_LEN, (BATCH,)).tolist()
        window = torch.from_numpy(
            np.stack([tokens[o : o + SEQ_LEN + 1] for o in offsets]).astype(np.int64)
        )
        inputs, targets = window[:, :-1], window[:, 1:]
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {
        "variant": "raw",
        "seed": seed,
        "steps": steps,
        "tokens": steps * BATCH * SEQ_LEN,
        "seconds": seconds,
        "val_loss": full_split_loss(model, data),
        "estimate": nanogpt_estimate(model, data, seed),
    }


def full_split_loss(model, data: Path) -> float:
    """Token-weighted mean loss over every window of the validation split (what
    `Engine.evaluate()` computes for the hookloop variants)."""
    import torch

    from hookloop.lm.data import TokenDataset
    from hookloop.losses import next_token_loss

    batches = TokenDataset(
        data / "val.bin",
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        sampling="sequential",
        shuffle=False,
        drop_last=False,
    )
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            total += next_token_loss(model, batch).double().item() * batch[0].numel()
            count += batch[0].numel()
    return total / count


def nanogpt_estimate(model, data: Path, seed: int) -> float:
    """nanoGPT's `estimate_loss()` on the validation split: the mean loss of 20 batches of
    12 random windows (eval_iters=20), drawn from a generator seeded with `seed`."""
    import torch

    from hookloop.lm.data import TokenDataset
    from hookloop.losses import next_token_loss

    batches = TokenDataset(
        data / "val.bin",
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        sampling="random",
        batches_per_epoch=20,
        seed=seed,
    )
    model.eval()
    with torch.no_grad():
        losses = [next_token_loss(model, batch).item() for batch in batches]
    return sum(losses) / len(losses)


def print_tables(rows: list[dict], variants: list[str]) -> None:
    """One row per run, then one per variant: mean and range of the losses, speed."""
    print(
        "\n| variant | seed | train wall time (s) | tokens/s | val loss, full split | "
        "val loss, nanoGPT estimate |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['seed']} | {r['seconds']:.1f} | "
            f"{r['tokens'] / r['seconds']:,.0f} | {r['val_loss']:.4f} | {r['estimate']:.4f} |"
        )
    raw_time = [r["seconds"] for r in rows if r["variant"] == "raw"]
    print(
        "\n| variant | runs | val loss, full split: mean (min–max) | nanoGPT estimate: mean "
        "(min–max) | median train time (s) | time ratio to raw |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        full, est = [r["val_loss"] for r in mine], [r["estimate"] for r in mine]
        seconds = statistics.median(r["seconds"] for r in mine)
        ratio = f"{seconds / statistics.median(raw_time):.3f}" if raw_time else "-"
        print(
            f"| {variant} | {len(mine)} | {statistics.mean(full):.4f} ({min(full):.4f}–"
            f"{max(full):.4f}) | {statistics.mean(est):.4f} ({min(est):.4f}–{max(est):.4f}) "
            f"| {seconds:.1f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
