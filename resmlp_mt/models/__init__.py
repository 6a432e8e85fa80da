"""fairseq models of the plugin; importing a module registers its architectures."""
from . import (
    resmlp_dino,  # noqa: F401
    resmlp_image,  # noqa: F401
    resmlp_translation,  # noqa: F401
)
