"""``resmlp-knn``: weighted kNN top-1 of frozen features (DINO's evaluation), a number that needs no training.

    resmlp-knn DATA --dataset fashion-mnist --path checkpoints/checkpoint_last.pt
    resmlp-knn DATA --dataset fashion-mnist --random-init --arch resmlp_tiny_28   # the untrained network
    resmlp-knn DATA --dataset fashion-mnist --raw-pixels                         # the pixels themselves

The features are the image model's pooled representation, the vector its classifier
reads (``forward_features``), or with ``--raw-pixels`` the normalised pixels, flattened.
The training split is the memory bank and the test split (``valid`` / ``val`` of an
ImageFolder tree when it has no ``test``) the queries; both go through the task's
evaluation transform (resize, centre crop, normalisation), so any data
``--task image_classification`` reads works here, and a checkpoint's head need not
match the data's classes. The vote is ``resmlp_mt.image.knn``'s: cosine similarity, the
k = 20 nearest, weights exp(sim / 0.07). One line per k::

    kNN (k=20, T=0.07) top-1 85.12% top-5 99.02% on 10000 test images, 60000 train images (checkpoint_last.pt)
"""
import argparse
import logging
import math
import os
import sys
import time

import numpy as np
import torch

import resmlp_mt  # noqa: F401  (registers the task; loads fairseq checkpoints on torch >= 2.6)
from resmlp_mt import checkpoint_file
from resmlp_mt.convert import model_config
from resmlp_mt.image.data import NAMED, ImageDataError
from resmlp_mt.image.knn import TEMPERATURE, knn_classify
from resmlp_mt.models.resmlp_image import ARCHS, ResMLPImageModel, build_resmlp_image, dino_trunk
from resmlp_mt.tasks.image_classification import ImageClassificationConfig, ImageClassificationTask

logger = logging.getLogger("resmlp_mt.knn")


def load_checkpoint_model(path: str) -> ResMLPImageModel:
    """The image model of a fairseq checkpoint, its sizes read off the weights (any class count);
    of a DINO checkpoint, the teacher's trunk."""
    state = dino_trunk(checkpoint_file.load_fairseq(path, "a fairseq checkpoint of an image ResMLP")["model"])
    if "patch_embed.weight" not in state or "blocks.0.token_mixing.weight" not in state:
        raise ValueError(f"{path} is not a checkpoint of an image ResMLP (--task image_classification): "
                         "it has no patch embedding")
    model = ResMLPImageModel(**model_config(state))
    model.load_state_dict(state)
    return model


def default_test_split(dataset: str, data: str) -> str:
    """``test`` for the named datasets and for ImageFolder trees that have one, else ``valid`` (or ``val``)."""
    if dataset in NAMED or os.path.isdir(os.path.join(data, "test")):
        return "test"
    return "valid"


def subsample(n: int, keep, seed: int) -> np.ndarray:
    """``keep`` indices of ``range(n)`` drawn without replacement (all of them, in order, when None)."""
    if keep is None or keep >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, keep, replace=False))


@torch.inference_mode()
def extract(dataset, indices, encode, batch_size: int, num_workers: int, device):
    """``(features, labels)`` of the images at ``indices``, through ``encode`` in batches."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices.tolist()), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=dataset.collater)
    features, labels = [], []
    for batch in loader:
        features.append(encode(batch["net_input"]["images"].to(device)).float())
        labels.append(batch["target"])
    return torch.cat(features), torch.cat(labels).to(device)


def build_encoder(args, in_chans: int, num_classes: int):
    """(encode function, image side, description) for --path, --random-init or --raw-pixels."""
    if args.raw_pixels:
        size = args.img_size or (ARCHS[args.arch]["img_size"] if args.arch else None)
        if size is None and args.dataset in NAMED:
            size = NAMED[args.dataset].img_size
        if size is None:
            raise ValueError("--raw-pixels on an ImageFolder tree needs --img-size (or --arch) for the resolution")
        return (lambda images: images.flatten(1)), size, f"raw pixels {size}x{size}"
    if args.path:
        model, what = load_checkpoint_model(args.path), os.path.basename(args.path)
    else:
        torch.manual_seed(args.seed)
        model = build_resmlp_image(args.arch, num_classes=num_classes, img_size=args.img_size, in_chans=in_chans)
        what = f"{args.arch} at random initialisation, seed {args.seed}"
    if model.in_chans != in_chans:
        raise ValueError(f"the model takes {model.in_chans}-channel images, the data have {in_chans} channels")
    model.eval().to(args.device)
    return model.forward_features, model.img_size, what


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="what --task image_classification reads: an ImageFolder root or a --dataset root")
    p.add_argument("--dataset", default="imagefolder", choices=["imagefolder", *NAMED])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--path", help="a fairseq checkpoint of resmlp_image (its features)")
    source.add_argument("--random-init", action="store_true", help="the --arch network at random initialisation")
    source.add_argument("--raw-pixels", action="store_true", help="the flattened, normalised pixels")
    p.add_argument("--arch", choices=sorted(ARCHS), help="the architecture for --random-init")
    p.add_argument("--img-size", type=int, help="image side (default: the checkpoint's or the arch's)")
    p.add_argument("--crop-pct", type=float, help="the evaluation transform's crop (default: the task's)")
    p.add_argument("--train-subset", default="train", help="the memory bank's split (default train)")
    p.add_argument("--test-subset", help="the queries' split (default test, else valid)")
    p.add_argument("--k", type=int, nargs="+", default=[20], help="neighbours (several: one line each)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="vote weight exp(sim / T)")
    p.add_argument("--max-train", type=int, help="a random subset of this many training images")
    p.add_argument("--max-test", type=int, help="a random subset of this many test images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="image loading processes")
    p.add_argument("--seed", type=int, default=1, help="of the random initialisation and the subsets")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is there")
    args = p.parse_args(argv)
    if args.random_init and not args.arch:
        p.error("--random-init needs --arch")
    if min(args.k) < 1 or args.temperature <= 0 or args.batch_size < 1:
        p.error("--k and --batch-size must be positive, --temperature above 0")
    args.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    return args


def run(args):
    probe = ImageClassificationTask.setup_task(ImageClassificationConfig(data=args.data, dataset=args.dataset))
    encode, size, what = build_encoder(args, probe.in_chans, probe.num_classes)
    cfg = ImageClassificationConfig(data=args.data, dataset=args.dataset, img_size=size, crop_pct=args.crop_pct,
                                    no_augment=True, seed=args.seed)
    task = ImageClassificationTask.setup_task(cfg)
    test_split = args.test_subset or default_test_split(args.dataset, args.data)
    features = {}
    for split, keep in ((args.train_subset, args.max_train), (test_split, args.max_test)):
        task.load_dataset(split)
        dataset = task.dataset(split)
        dataset.shuffle = dataset.seed_items = False  # the evaluation transform: nothing to reseed
        start = time.time()
        features[split] = extract(dataset, subsample(len(dataset), keep, args.seed), encode, args.batch_size,
                                  args.num_workers, args.device)
        logger.info(f"{split}: {len(features[split][0])} feature vectors of size {features[split][0].size(1)} "
                    f"in {time.time() - start:.1f} s")
    results = knn_classify(*features[args.train_subset], *features[test_split], task.num_classes, args.k,
                           args.temperature)
    return results, what


def format_result(r, what: str) -> str:
    top5 = "" if math.isnan(r.top5) else f" top-5 {r.top5:.2f}%"
    return (f"kNN (k={r.k}, T={r.temperature:g}) top-1 {r.top1:.2f}%{top5} on {r.num_test} test images, "
            f"{r.num_train} train images ({what})")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    args = parse_args(argv)
    try:
        results, what = run(args)
    except (FileNotFoundError, ValueError, ImageDataError) as e:  # NotACheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(format_result(r, what), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
