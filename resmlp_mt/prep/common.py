"""Steps shared by the data-preparation tools.

Every step writes through a temporary name and renames on success, so an
interrupted run never leaves a half-written file that a re-run would take as
done; a step is skipped when its outputs are newer than its inputs.
"""
import contextlib
import functools
import gzip
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

SPLITS = ("train", "valid", "test")


class DataPrepError(Exception):
    """A problem with the user's input or environment: the CLI prints it without a traceback."""


def run_cli(prepare, parser, argv=None):
    """Parse ``argv``, run ``prepare(args)`` and turn a DataPrepError into exit status 2."""
    args = parser.parse_args(argv)
    try:
        prepare(args)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_common_args(parser, vocab_flag, vocab_default, coverage_default, coverage_why, workers_help):
    """Options of the sentencepiece and fairseq-preprocess steps that both tools share."""
    parser.add_argument("--out", required=True, help="output directory (created; re-runs skip finished steps)")
    parser.add_argument(vocab_flag, dest="vocab_size", type=int, default=vocab_default, metavar="N",
                        help=f"joint sentencepiece vocabulary size (default {vocab_default}); "
                             "a soft limit, so a small corpus gets a smaller vocabulary instead of an error")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                        help="sentencepiece model type (default bpe, the subword scheme of the "
                             "fairseq WMT14 recipes that ResMLP's translation results follow)")
    parser.add_argument("--character-coverage", type=float, default=coverage_default,
                        help=f"sentencepiece character coverage (default {coverage_default}: {coverage_why})")
    parser.add_argument("--spm-sample-size", type=int, default=2_000_000,
                        help="sentencepiece trains on at most this many randomly sampled lines "
                             "of the two training sides together (default 2000000)")
    parser.add_argument("--workers", type=int, default=1, help=workers_help)


def claim_out_dir(out):
    """Refuse to write into an existing, non-empty directory that these tools did not create,
    so that files of the same name there (spm.model, data-bin, ...) are never replaced."""
    stamps = os.path.join(out, ".stamps")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isdir(stamps):
        raise DataPrepError(f"output directory {out} is not empty and was not made by this tool; "
                            "pass a new or empty --out")
    os.makedirs(stamps, exist_ok=True)


def open_text(path, mode="rt"):
    """Open plain or gzipped UTF-8 text. Lines end at '\\n' only, so a stray '\\r' inside a
    sentence cannot shift one side of a parallel corpus against the other."""
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, mode, encoding="utf-8", newline="\n")


def iter_lines(path):
    """Yield (1-based line number, text with whitespace collapsed) for each line of ``path``."""
    if not os.path.isfile(path):
        raise DataPrepError(f"missing file: {path}")
    n = 0
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                yield n, " ".join(line.split())
    except UnicodeDecodeError:
        raise DataPrepError(f"{path}: not valid UTF-8 text (error after line {n})") from None
    except (OSError, EOFError) as e:
        raise DataPrepError(f"cannot read {path}: {e}") from None
    if n == 0:
        raise DataPrepError(f"empty file: {path}")


def count_lines(path):
    with open_text(path) as f:
        return sum(1 for _ in f)


def iter_parallel(src_path, tgt_path, allow_empty=False):
    """Yield aligned (line number, source, target). Differing line counts are an error, and
    so is an empty line unless ``allow_empty`` (web-crawled training data has them)."""
    for (n, src), (_, tgt) in itertools.zip_longest(iter_lines(src_path), iter_lines(tgt_path), fillvalue=(0, None)):
        if src is None or tgt is None:
            raise DataPrepError(f"line counts differ: {src_path} has {count_lines(src_path)} lines, "
                                f"{tgt_path} has {count_lines(tgt_path)} lines")
        if not allow_empty:
            for path, text in ((src_path, src), (tgt_path, tgt)):
                if not text:
                    raise DataPrepError(f"{path}: line {n} is empty")
        yield n, src, tgt


def chunks(iterable, size):
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_writers(*paths):
    """Text files for writing that all appear together, and only if the block succeeds."""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        with contextlib.ExitStack() as files:
            yield [files.enter_context(open(t, "w", encoding="utf-8")) for t in tmps]


def up_to_date(outputs, inputs):
    """True when every output exists and none is older than any input."""
    try:
        oldest = min(os.path.getmtime(p) for p in outputs)
    except FileNotFoundError:
        return False
    return all(os.path.getmtime(p) <= oldest for p in inputs)


def step(name, outputs, inputs, run):
    """Run ``run()`` unless ``outputs`` are up to date with ``inputs``."""
    if up_to_date(outputs, inputs):
        print(f"== {name}: up to date, skipped", flush=True)
    else:
        print(f"== {name}", flush=True)
        run()


def stamp(out, name, params):
    """A file recording ``params`` that is rewritten only when they change, so a step that takes
    it as an input re-runs when its options change."""
    path = Path(out, ".stamps", f"{name}.json")
    text = json.dumps(params, sort_keys=True, indent=1)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writers(str(path)) as (f,):
            f.write(text)
    return str(path)


def download(url, dest, timeout):
    """Fetch ``url`` to ``dest`` with a progress bar; DataPrepError if the network fails."""
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, atomic_path(dest) as tmp, open(tmp, "wb") as f:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"download {os.path.basename(dest)}") as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DataPrepError(f"could not download {url}: {getattr(e, 'reason', e)}") from None


def train_sentencepiece(inputs, model, args):
    """Train the joint sentencepiece model ``model`` (``*.model``, with its ``*.vocab``)."""
    prefix = model[: -len(".model")]
    tmp = f"{prefix}.tmp{os.getpid()}"
    try:
        spm.SentencePieceTrainer.train(
            input=inputs, model_prefix=tmp, vocab_size=args.vocab_size, model_type=args.model_type,
            character_coverage=args.character_coverage, input_sentence_size=args.spm_sample_size,
            shuffle_input_sentence=True, hard_vocab_limit=False, num_threads=args.workers, minloglevel=1)
    except RuntimeError as e:
        raise DataPrepError(f"sentencepiece training on {', '.join(inputs)} failed: {e}") from None
    for ext in (".model", ".vocab"):
        os.replace(tmp + ext, prefix + ext)


def encode(model, src, dst, workers):
    """Write ``src`` as space-separated sentencepiece pieces, streaming with a progress bar.
    Characters outside the model become the piece <unk> (fairseq's own unknown word), not their
    surface form, which would grow the fairseq dictionary beyond the sentencepiece vocabulary."""
    sp = spm.SentencePieceProcessor(model_file=model)
    with open_text(src) as fin, atomic_writers(dst) as (fout,):
        lines = tqdm(fin, desc=f"encode {os.path.basename(src)}", unit=" lines", mininterval=1)
        for batch in chunks((line.rstrip("\n") for line in lines), 10_000):
            for ids in sp.encode(batch, num_threads=workers):
                fout.write(" ".join(sp.id_to_piece(ids)) + "\n")


def fairseq_preprocess(src, tgt, prefix_dir, destdir, workers):
    """Binarise ``prefix_dir/{split}.{lang}`` with one dictionary shared by both languages."""
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "fairseq_cli.preprocess"]
    prefixes = [f"--{split}pref={os.path.join(prefix_dir, split)}" for split in SPLITS]
    with atomic_path(destdir) as tmp:
        proc = subprocess.run([*cmd, "--source-lang", src, "--target-lang", tgt, *prefixes, "--destdir", tmp,
                               "--joined-dictionary", "--workers", str(workers)])
        if proc.returncode != 0:
            raise DataPrepError(f"fairseq-preprocess failed with exit status {proc.returncode} (its output is above)")


def subword_and_binarize(args, src, tgt):
    """The steps after ``OUT/raw/{split}.{lang}`` exist: sentencepiece, encoding, fairseq-preprocess."""
    out = args.out
    raw = {(split, lang): os.path.join(out, "raw", f"{split}.{lang}") for split in SPLITS for lang in (src, tgt)}
    pieces = {key: os.path.join(out, "spm", f"{key[0]}.{key[1]}") for key in raw}
    model = os.path.join(out, "spm.model")
    train_raw = [raw["train", src], raw["train", tgt]]
    spm_params = stamp(out, "spm", {k: getattr(args, k) for k in
                                    ("vocab_size", "model_type", "character_coverage", "spm_sample_size")})
    step("train joint sentencepiece model", [model], [*train_raw, spm_params],
         lambda: train_sentencepiece(train_raw, model, args))

    os.makedirs(os.path.join(out, "spm"), exist_ok=True)
    for key, path in pieces.items():
        step(f"encode {key[0]}.{key[1]}", [path], [raw[key], model],
             functools.partial(encode, model, raw[key], path, args.workers))

    destdir = os.path.join(out, "data-bin")
    binaries = [os.path.join(destdir, f"{split}.{src}-{tgt}.{lang}.{ext}")
                for split in SPLITS for lang in (src, tgt) for ext in ("bin", "idx")]
    step("fairseq-preprocess", [os.path.join(destdir, f"dict.{src}.txt"), *binaries], pieces.values(),
         lambda: fairseq_preprocess(src, tgt, os.path.join(out, "spm"), destdir, args.workers))
    print(f"done: {destdir} (sentencepiece model {model})", flush=True)
