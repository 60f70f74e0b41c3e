"""List every installed plugin: its name, where it comes from, whether the configured run
enables it, and the hooks it implements. With --order, print for each hook the order in
which the enabled plugins' implementations run.

Only enabled plugins are imported; a disabled one shows its hooks as "-".
"""

from __future__ import annotations

import argparse
from typing import Any

from hookloop.cli import add_config_arguments
from hookloop.lm.config import config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `plugins` options."""
    add_config_arguments(parser)
    parser.add_argument(
        "--order", action="store_true", help="print the resolved calling order of every hook"
    )


def plugin_table(args: argparse.Namespace) -> dict[str, Any]:
    """The `[plugins]` table of the configured run (config file, `--set`, `-p` flags)."""
    return config_from_args(args)["plugins"]


def run(args: argparse.Namespace) -> int:
    """Print the plugin listing (or, with --order, the hook order)."""
    from hookloop.loading import (
        discover,
        hook_order,
        new_plugin_manager,
        plugin_rank,
        plugins_from_config,
        register_plugins,
    )

    available = discover()
    loaded = plugins_from_config(plugin_table(args))
    pm = new_plugin_manager()
    registered = register_plugins(pm, loaded)
    if args.order:
        for hook, names in hook_order(pm, plugin_rank(registered)).items():
            print(f"{hook}:")
            for i, name in enumerate(names, 1):
                print(f"  {i}. {name} ({registered[name].origin})")
        return 0
    rows = [("name", "origin", "enabled", "hooks")]
    for name, info in available.items():
        plugin = registered.get(name)
        hooks = (
            ", ".join(sorted(c.name for c in pm.get_hookcallers(plugin.plugin) or []))
            if plugin
            else "-"
        )
        rows.append((name, info.origin, "yes" if plugin else "no", hooks or "(none)"))
    for name, plugin in registered.items():  # plugins not from entry points
        if name not in available:
            rows.append((name, plugin.origin, "yes", "?"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]])
        )
    return 0
