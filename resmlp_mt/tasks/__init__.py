"""fairseq tasks of the plugin; importing a module registers it."""
from . import image_classification, image_dino, translation_joined  # noqa: F401
