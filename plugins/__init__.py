"""hookloop's built-in plugins, one module each, each registered as an entry point.

Each module's name is also its entry-point name and its `[plugins.<name>]` config key.
"""
