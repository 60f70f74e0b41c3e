"""The `hookloop` subcommands, one module each.

Each module has a docstring (its `--help` description), `add_arguments(parser)` and
`run(args) -> int`. Modules import torch and plugins inside `run` only, so that
`hookloop --help` answers without importing torch.
"""
