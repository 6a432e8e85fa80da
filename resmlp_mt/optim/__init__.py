"""fairseq optim of the plugin; importing a module registers it."""
from . import lamb  # noqa: F401
