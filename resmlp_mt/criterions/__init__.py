"""fairseq criterions of the plugin; importing a module registers it."""
from . import dino, image_cross_entropy  # noqa: F401
