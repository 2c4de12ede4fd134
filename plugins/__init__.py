"""Built-in plugins of prune-harness (import name ``harness_plugins``).

Each module is shaped exactly like a third-party plugin: it uses only the public
``harness`` API and is registered through the ``harness`` entry-point group.
"""
