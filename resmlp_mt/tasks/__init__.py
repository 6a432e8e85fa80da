"""fairseq tasks of the plugin; importing a module registers it."""
from . import image_classification  # noqa: F401
