"""Multi30k (task 1) -> joint sentencepiece -> fairseq data-bin.

    resmlp-prep-multi30k --pair en-de --raw-dir /work/shared/data/multi30k --out data/multi30k-en-de

The raw directory holds train.*, val.* and test_2016_flickr.* for both languages, each
plain or gzipped (the layout of github.com/multi30k/dataset data/task1/raw). Outputs in OUT:

    raw/{train,valid,test}.{src,tgt}   validated text, one sentence per line
    test.raw.{src,tgt}                 detokenized test sentences, for sacreBLEU
    spm.model, spm.vocab               joint sentencepiece model (--bpe sentencepiece)
    spm/{train,valid,test}.{src,tgt}   sentencepiece pieces
    data-bin/                          fairseq-preprocess --joined-dictionary output
"""
import argparse
import os

from tqdm import tqdm

from .common import (
    SPLITS,
    DataPrepError,
    Pipeline,
    add_common_args,
    atomic_writers,
    claim_out_dir,
    download,
    iter_parallel,
    run_cli,
    run_settings,
    subword_and_binarize,
)

RAW_NAMES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
DOWNLOAD_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=("en-de", "en-fr"), default="en-de", help="source-target languages")
    p.add_argument("--raw-dir", default=os.environ.get("MULTI30K_DIR"),
                   help="directory of the raw files (default $MULTI30K_DIR; without either, they are "
                        "downloaded into OUT/orig)")
    p.add_argument("--download", action="store_true", help="download missing raw files into the raw directory")
    p.add_argument("--download-url", default=DOWNLOAD_URL, help="base URL of the raw .gz files (default %(default)s)")
    add_common_args(p, "--vocab-size", 8000, 1.0, "the small, clean corpus keeps every character",
                    workers_help="threads for sentencepiece and processes for fairseq-preprocess (default 1)")
    return p


def find_raw(raw_dir, name):
    for candidate in (f"{name}.gz", name):
        path = os.path.join(raw_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataPrepError(f"missing file {name}.gz (or plain {name}) in directory {raw_dir}")


def fetch(raw_dir, names, base_url):
    for name in names:
        if not any(os.path.exists(os.path.join(raw_dir, n)) for n in (name, f"{name}.gz")):
            try:
                download(f"{base_url}{name}.gz", os.path.join(raw_dir, f"{name}.gz"), timeout=15)
            except DataPrepError as e:
                raise DataPrepError(
                    f"{e}\nWithout network access, pass --raw-dir DIR or set MULTI30K_DIR to a directory holding "
                    f"{', '.join(names)} (each plain or .gz), e.g. a copy of data/task1/raw of "
                    "github.com/multi30k/dataset") from None


def write_splits(inputs, out, src, tgt):
    """Validate every split before writing any, then write raw/ and the sacreBLEU references."""
    pairs = {split: [(s, t) for _, s, t in tqdm(iter_parallel(inputs[split, src], inputs[split, tgt]),
                                                desc=f"read {split}", unit=" pairs")]
             for split in SPLITS}
    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    for split, lines in pairs.items():
        paths = [os.path.join(out, "raw", f"{split}.{lang}") for lang in (src, tgt)]
        if split == "test":
            paths += [os.path.join(out, f"test.raw.{lang}") for lang in (src, tgt)]
        with atomic_writers(*paths) as files:
            for s, t in lines:
                for f, text in zip(files, (s, t, s, t)):
                    f.write(text + "\n")


def prepare(args):
    src, tgt = args.pair.split("-")
    names = [f"{RAW_NAMES[split]}.{lang}" for split in SPLITS for lang in (src, tgt)]
    claim_out_dir(args.out)
    raw_dir = args.raw_dir
    if args.download or not raw_dir:
        raw_dir = raw_dir or os.path.join(args.out, "orig")
        fetch(raw_dir, names, args.download_url)
    if not os.path.isdir(raw_dir):
        raise DataPrepError(f"raw directory not found: {raw_dir} (expected {', '.join(names)} there, plain or .gz)")
    inputs = {(split, lang): find_raw(raw_dir, f"{RAW_NAMES[split]}.{lang}") for split in SPLITS for lang in (src, tgt)}

    outputs = [os.path.join(args.out, "raw", f"{split}.{lang}") for split in SPLITS for lang in (src, tgt)]
    outputs += [os.path.join(args.out, f"test.raw.{lang}") for lang in (src, tgt)]
    pipeline = Pipeline(args.out, run_settings(args, "--vocab-size"), args.force)
    legacy = ("raw", {"pair": args.pair, "inputs": sorted(map(os.path.abspath, inputs.values()))})
    pipeline.step("read and validate raw text", outputs, list(inputs.values()),
                  lambda: write_splits(inputs, args.out, src, tgt), settings={"--pair": args.pair}, legacy=legacy)
    subword_and_binarize(args, src, tgt, pipeline)


def main(argv=None):
    return run_cli(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
