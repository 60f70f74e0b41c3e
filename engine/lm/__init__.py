"""The language-model recipe built on the engine: text to a trained model to samples.

`config` (the TOML schema), `prepare`, `tokenizers` and `data` (token files read through a
memory map), `corpus` (the embedded default text), `model` (`TinyTransformerLM`), `optim`
(AdamW with the seed's weight-decay groups), `recipe` (config -> engine), `resume` (which
checkpoint a `--resume` continues from) and `doctor` (the "loss doesn't fall" checklist).
The core (`hookloop`) never imports this package.
"""
