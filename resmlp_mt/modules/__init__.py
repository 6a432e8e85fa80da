"""Building blocks shared by the ResMLP translation and image models."""
from .affine import Affine, make_norm, scaled_norm
from .block import ResMLPBlock
from .gelu_linear import gelu_linear
from .layer_scale import LayerScale
from .token_mixing import SequenceTooLongError, TokenMixing

__all__ = ["Affine", "LayerScale", "ResMLPBlock", "SequenceTooLongError", "TokenMixing", "gelu_linear", "make_norm",
           "scaled_norm"]
