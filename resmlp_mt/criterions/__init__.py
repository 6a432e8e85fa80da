"""fairseq criterions of the plugin; importing a module registers it."""
from . import image_cross_entropy  # noqa: F401
