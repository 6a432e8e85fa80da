"""fairseq criterions of the plugin; importing a module registers it."""
from . import dino, fused_label_smoothed_cross_entropy, image_cross_entropy  # noqa: F401
