"""DINO's multi-crop augmentation (Caron et al., 2021, Sec. 3.1; their DataAugmentationDINO),
from torchvision's transforms: two global views and ``local_crops`` local views of an image.

Global views are random-resized crops covering 40-100% of the image (``global_scale``),
local views 5-40% (``local_scale``). Each gets a flip, colour jitter (p 0.8), grayscale
(p 0.2), Gaussian blur (p 1.0 / 0.1 for the two global views, 0.5 for local ones) and, on
the second global view, solarisation (p 0.2).

**Where ResMLP differs from DINO's ViT: the resolution of local views.** DINO crops local
views at 96 pixels and the ViT reads any number of patches. A ResMLP's token-mixing matrix
fixes the number of patches, so here every view, local ones included, is resized to the
model's resolution: a local view costs as much as a global one. ``local_crops`` 0 trains on
the two global views only (the default): on Fashion-MNIST, two local views cost 1.5-1.7x
the time and 10 kNN points at equal updates (examples/image/README.md, "Self-supervised DINO").

The blur kernel is about a tenth of the image side (odd), sigma 0.1-2.0 as DINO's; on
one-channel images (Fashion-MNIST) saturation, hue and grayscale change nothing.
"""
from typing import Sequence, Tuple

import torch

GLOBAL_VIEWS = 2


class MultiCrop:
    """image -> tensor ``(2 + local_crops, C, img_size, img_size)``: the global views first."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], local_crops: int = 0,
                 global_scale: Tuple[float, float] = (0.4, 1.0), local_scale: Tuple[float, float] = (0.05, 0.4),
                 hflip: float = 0.5):
        if local_crops < 0:
            raise ValueError(f"--local-crops must be at least 0, got {local_crops}")
        for name, (low, high) in (("global", global_scale), ("local", local_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"the {name} crop scale {low}-{high} must lie in (0, 1], smallest first")
        # imported here: torchvision pulls torch._dynamo, seconds, which translation runs never need
        from torchvision import transforms as T

        flip_and_color = T.Compose([
            T.RandomHorizontalFlip(hflip),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ])
        normalize = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

        def crop(scale):
            return T.RandomResizedCrop(img_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC)

        def blur(p):
            kernel = max(3, (img_size // 10) | 1)
            return T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=p)

        self.global1 = T.Compose([crop(global_scale), flip_and_color, blur(1.0), normalize])
        self.global2 = T.Compose([crop(global_scale), flip_and_color, blur(0.1), T.RandomSolarize(128, p=0.2),
                                  normalize])
        self.local = T.Compose([crop(local_scale), flip_and_color, blur(0.5), normalize])
        self.local_crops = local_crops

    @property
    def views(self) -> int:
        return GLOBAL_VIEWS + self.local_crops

    def __call__(self, image) -> torch.Tensor:
        views = [self.global1(image), self.global2(image)] + [self.local(image) for _ in range(self.local_crops)]
        return torch.stack(views)
