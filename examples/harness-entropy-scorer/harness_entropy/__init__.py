"""harness-entropy-scorer: an attention-entropy head scorer for prune-harness (see ``plugin``)."""

__version__ = "0.1.0"
