"""fairseq tasks of the plugin; importing a module registers it."""
from . import image_classification, translation_joined  # noqa: F401
