"""Building blocks shared by the ResMLP translation and image models."""
from .affine import Affine, make_norm
from .block import ResMLPBlock, make_token_mixing
from .class_mlp import ClassMLP, ClassMLPLayer
from .coverage_attention import CoverageAttention
from .dropout import Dropout
from .folding import fold_mlp, gelu_linear, scaled_norm
from .layer_scale import LayerScale
from .relative_token_mixing import RelativeTokenMixing
from .token_mixing import SequenceTooLongError, TokenMixing

__all__ = ["Affine", "ClassMLP", "ClassMLPLayer", "CoverageAttention", "Dropout", "LayerScale",
           "RelativeTokenMixing", "ResMLPBlock", "SequenceTooLongError", "TokenMixing", "fold_mlp", "gelu_linear",
           "make_norm", "make_token_mixing", "scaled_norm"]
