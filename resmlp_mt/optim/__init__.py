"""fairseq optimizers of the plugin; importing a module registers it."""
from . import adamw, lamb  # noqa: F401
