"""resmlp_mt: ResMLP for machine translation and image classification, as a fairseq plugin.

fairseq itself is not listed in install_requires: on Python 3.11 the PyPI
``fairseq`` 0.12.2 does not build, and the working wheel is ``ve-fairseq``
(installed with --no-deps; see requirements*.txt and the Makefile).
"""
from setuptools import find_packages, setup

setup(
    name="resmlp_mt",
    version="0.1.0",
    description="ResMLP (Touvron et al., 2021) for fairseq: translation and image classification",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["resmlp_mt", "resmlp_mt.*"]),
    install_requires=[
        "torch>=2.4",  # torch.is_autocast_enabled(device_type)
        "torchvision",  # the image task's datasets and ImageFolder helpers
        "timm>=1.0",
        "sentencepiece",
        "sacrebleu>=2.0",
        "numpy",
        "tqdm",
        "sacremoses",
        "matplotlib",
        "safetensors",
        "tensorboard",
        "tensorboardX",
    ],
    entry_points={
        "console_scripts": [
            "resmlp-user-dir=resmlp_mt.cli.user_dir:main",
            "resmlp-score=resmlp_mt.cli.score:main",
            "resmlp-average-checkpoints=resmlp_mt.cli.average_checkpoints:main",
            "resmlp-prep-multi30k=resmlp_mt.prep.multi30k:main",
            "resmlp-prep-wmt14=resmlp_mt.prep.wmt14:main",
            "resmlp-convert=resmlp_mt.convert:main",
            "resmlp-show-mixing=resmlp_mt.visualize:main",
            "resmlp-export-safe=resmlp_mt.safe_load:main",
            "resmlp-plot-curves=resmlp_mt.cli.plot_curves:main",
            "resmlp-knn=resmlp_mt.cli.knn:main",
        ]
    },
)
