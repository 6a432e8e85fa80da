"""Steps shared by the data-preparation tools.

Every step writes through a temporary name and renames on success, so an
interrupted run (or a full disk) never leaves a half-written file that a re-run
would take as done. A step is skipped when ``OUT/.stamps`` records that it ran
with the same settings on inputs of the same sizes and SHA-256, and that its
outputs are still as it wrote them: modification times alone would take a raw
file edited and given an older time (``cp -p``, ``rsync -t``, ``tar x``) as
unchanged. Once ``OUT/data-bin`` exists, a run that would rebuild it from other
settings or inputs stops and says what changed, unless ``--force``: checkpoints
trained on it would no longer match its dictionary.
"""
import contextlib
import errno
import functools
import gzip
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zlib

import sentencepiece as spm
from tqdm import tqdm

SPLITS = ("train", "valid", "test")


class DataPrepError(Exception):
    """A problem with the user's input or environment: the CLI prints it without a traceback."""


def run_cli(prepare, parser, argv=None):
    """Parse ``argv``, run ``prepare(args)`` and turn a DataPrepError (or a file system error no
    step foresaw) into one ``error:`` line and exit status 2."""
    args = parser.parse_args(argv)
    try:
        prepare(args)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_message(e, e.filename)}", file=sys.stderr)
        return 2
    return 0


FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def os_error_message(e: OSError, path) -> str:
    if e.errno in FULL:
        return (f"cannot write {path}: {e.strerror}. Nothing half-written was kept; free space on that disk "
                "(or pass --out on another one) and re-run: finished steps are skipped")
    return f"cannot write {path}: {e.strerror or e}"


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
    parser.add_argument("--force", action="store_true",
                        help="rebuild OUT/data-bin (and spm.model) even though a run with other settings or inputs "
                             "made them: checkpoints trained on the old ones will not match the new ones")


def claim_out_dir(out):
    """Refuse to write into an existing, non-empty directory that these tools did not create,
    so that files of the same name there (spm.model, data-bin, ...) are never replaced."""
    stamps = os.path.join(out, ".stamps")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isdir(stamps):
        raise DataPrepError(f"output directory {out} is not empty and was not made by this tool; "
                            "pass a new or empty --out")
    try:
        os.makedirs(stamps, exist_ok=True)
    except OSError as e:
        raise DataPrepError(f"cannot create the output directory {out}: {e.strerror} ({e.filename}); "
                            "pass an --out where you can create directories") from None


def open_text(path, mode="rt"):
    """Open plain or gzipped UTF-8 text. Lines end at '\\n' only, so a stray '\\r' inside a
    sentence cannot shift one side of a parallel corpus against the other."""
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, mode, encoding="utf-8", newline="\n")


def open_bytes(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_lines(path):
    """Yield (1-based line number, text with whitespace collapsed) for each line of ``path``.
    Each line is decoded on its own, so an invalid byte is reported on its own line (a text
    stream decodes 8 KiB ahead of the line it returns); a byte order mark at the start of
    the file is dropped, as sentencepiece drops it."""
    if not os.path.isfile(path):
        raise DataPrepError(f"missing file: {path}")
    n = 0
    try:
        with open_bytes(path) as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataPrepError(
                        f"{path}: line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of "
                        "the line); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None
                if n == 1:
                    line = line.removeprefix("\ufeff")
                yield n, " ".join(line.split())
    except (OSError, EOFError, zlib.error) as e:
        raise DataPrepError(f"cannot read {path} (after line {n}): {e}") from None
    if n == 0:
        raise DataPrepError(f"empty file: {path}")


def count_lines(path):
    with open_bytes(path) as f:
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
def atomic_path(path, label=None):
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.
    A full disk is reported as a DataPrepError that names ``label`` (default: ``path``)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in FULL:
            raise DataPrepError(os_error_message(e, label or path)) from None
        raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_writers(*paths):
    """Text files for writing that all appear together, and only if the block succeeds."""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p, label=", ".join(paths))) for p in paths]
        with contextlib.ExitStack() as files:
            yield [files.enter_context(open(t, "w", encoding="utf-8")) for t in tmps]


_digests = {}  # (path, size, mtime, ctime, inode) -> SHA-256, for this process: a step's outputs are the next's inputs


def digest(path):
    """{"size": bytes, "sha256": hex} of a file."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _digests:
        with open(path, "rb") as f:
            _digests[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": st.st_size, "sha256": _digests[key]}


def _flag(key):
    return key if key.startswith("--") else "--" + key.replace("_", "-")


def _settings_text(settings):
    return " ".join(f"{_flag(k)} {v}" for k, v in sorted(settings.items()))


def _differences(old, new):
    return [f"{_flag(k)} {old.get(k)} -> {new.get(k)}" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]


class Pipeline:
    """The steps of one run in ``out``, each recorded in ``out/.stamps/step.NAME.json``.

    ``settings`` are the run's options that shape its outputs, by flag name (e.g. ``--vocab-size``):
    the record of the last step, which writes ``data-bin``, keeps them, so that a later run with
    other ones can name both."""

    LAST = "fairseq-preprocess"

    def __init__(self, out, settings, force=False):
        self.out, self.settings, self.force = out, settings, force
        self._warned = False

    def _record_path(self, name):
        return os.path.join(self.out, ".stamps", f"step.{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json")

    def _read_record(self, name):
        try:
            with open(self._record_path(name), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def _state(self, outputs, inputs, settings):
        return {
            "settings": settings or {},
            "inputs": [{"path": p, **digest(p)} for p in inputs],
            "outputs": [{"path": os.path.relpath(p, self.out), **digest(p)} for p in outputs],
        }

    def _why_stale(self, record, outputs, inputs, settings):
        """(reason, whether an input or setting changed), or (None, False) when the record still holds."""
        old, settings = record.get("settings", {}), settings or {}
        if old != settings:
            return f"its settings changed ({', '.join(_differences(old, settings))})", True
        recorded = record.get("inputs", [])
        if len(recorded) != len(inputs):
            return f"it now has {len(inputs)} inputs, not {len(recorded)}", True
        for was, path in zip(recorded, inputs):
            now = digest(path)
            if (was["size"], was["sha256"]) != (now["size"], now["sha256"]):
                size = f"{was['size']} -> {now['size']} bytes" if was["size"] != now["size"] else "same size, " \
                                                                                               "other content"
                return f"its input {path} changed ({size})", True
        for was in record.get("outputs", []):
            path = os.path.join(self.out, was["path"])
            if not os.path.isfile(path):
                return f"its output {path} is missing", False
            if (was["size"], was["sha256"]) != tuple(digest(path)[k] for k in ("size", "sha256")):
                return f"its output {path} was modified", True
        recorded = sorted(w["path"] for w in record.get("outputs", []))
        if sorted(os.path.relpath(p, self.out) for p in outputs) != recorded:
            return "its outputs are not the recorded ones", False
        return None, False

    def _legacy_done(self, outputs, inputs, legacy):
        """An output directory of an earlier version, which went by modification times and kept each step's
        options in .stamps/NAME.json: its steps count as done once, if those still say the same."""
        extra = []
        if legacy is not None:
            stamp, params = legacy
            path = os.path.join(self.out, ".stamps", f"{stamp}.json")
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != json.dumps(params, sort_keys=True, indent=1):
                        return False
            except FileNotFoundError:
                return False
            extra.append(path)
        try:
            oldest = min(os.path.getmtime(p) for p in outputs)
            return all(os.path.getmtime(p) <= oldest for p in [*inputs, *extra])
        except FileNotFoundError:
            return False

    def _write_record(self, name, state):
        with atomic_writers(self._record_path(name)) as (f,):
            json.dump(state, f, sort_keys=True, indent=1)

    def data_bin_exists(self):
        return any(os.path.isfile(p) for p in self._data_bin_dicts())

    def _data_bin_dicts(self):
        directory = os.path.join(self.out, "data-bin")
        return [os.path.join(directory, n) for n in (os.listdir(directory) if os.path.isdir(directory) else [])
                if n.startswith("dict.")]

    def _refusal(self, name, reason):
        data_bin = os.path.join(self.out, "data-bin")
        record = self._read_record(self.LAST)
        old = (record or {}).get("run")
        if old is None:
            built = "was built by an earlier version of this tool, which recorded neither settings nor checksums"
            now = [f"this run has {_settings_text(self.settings)}"]
        else:
            built = f"was built with {_settings_text(old)}"
            changed = _differences(old, self.settings)
            now = [f"this run has {', '.join(changed)}"] if changed else []
        if not reason.startswith("its settings changed"):
            now.append(f"step '{name}' would run again: {reason}")
        return (f"{data_bin} {built}; {', and '.join(now)}. Rebuilding it would leave checkpoints trained on it "
                f"with another dictionary: pass --force to rebuild it anyway, or a new --out")

    def step(self, name, outputs, inputs, run, settings=None, legacy=None):
        """Run ``run()`` unless the record of step ``name`` says that it is done (see the module)."""
        record = self._read_record(name)
        if record is not None:
            reason, changed = self._why_stale(record, outputs, inputs, settings)
        elif self._legacy_done(outputs, inputs, legacy):
            reason, changed = None, False
        else:
            reason = "not run yet" if not all(map(os.path.exists, outputs)) else "no record of its inputs"
            changed = reason != "not run yet"
        if reason is None:
            print(f"== {name}: up to date, skipped", flush=True)
            if record is None:
                self._write_record(name, self._state(outputs, inputs, settings))
            return
        if changed and self.data_bin_exists():
            if not self.force:
                raise DataPrepError(self._refusal(name, reason))
            if not self._warned:
                print(f"warning: --force: {self._refusal(name, reason).split('. Rebuilding')[0]}: rebuilding it",
                      flush=True)
                self._warned = True
        print(f"== {name}" + ("" if reason == "not run yet" else f" ({reason})"), flush=True)
        run()
        state = self._state(outputs, inputs, settings)
        if name == self.LAST:
            state["run"] = self.settings
        self._write_record(name, state)


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
        for ext in (".model", ".vocab"):
            os.replace(tmp + ext, prefix + ext)
    except (RuntimeError, OSError) as e:
        raise DataPrepError(f"sentencepiece training on {', '.join(inputs)} failed (writing {prefix}.model): "
                            f"{e}") from None
    finally:
        for ext in (".model", ".vocab"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)


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


SPM_OPTIONS = ("vocab_size", "model_type", "character_coverage", "spm_sample_size")


def run_settings(args, vocab_flag):
    """The options of a run that shape its data-bin, by flag name: what a refusal to rebuild names."""
    flags = {"vocab_size": vocab_flag}
    return {"--pair": args.pair, **{flags.get(k, _flag(k)): getattr(args, k) for k in SPM_OPTIONS}}


def subword_and_binarize(args, src, tgt, pipeline):
    """The steps after ``OUT/raw/{split}.{lang}`` exist: sentencepiece, encoding, fairseq-preprocess."""
    out = args.out
    raw = {(split, lang): os.path.join(out, "raw", f"{split}.{lang}") for split in SPLITS for lang in (src, tgt)}
    pieces = {key: os.path.join(out, "spm", f"{key[0]}.{key[1]}") for key in raw}
    model = os.path.join(out, "spm.model")
    train_raw = [raw["train", src], raw["train", tgt]]
    spm_params = {k: getattr(args, k) for k in SPM_OPTIONS}
    pipeline.step("train joint sentencepiece model", [model, model[:-len(".model")] + ".vocab"], train_raw,
                  lambda: train_sentencepiece(train_raw, model, args),
                  settings={k: v for k, v in pipeline.settings.items() if k != "--pair"}, legacy=("spm", spm_params))

    os.makedirs(os.path.join(out, "spm"), exist_ok=True)
    for key, path in pieces.items():
        pipeline.step(f"encode {key[0]}.{key[1]}", [path], [raw[key], model],
                      functools.partial(encode, model, raw[key], path, args.workers))

    destdir = os.path.join(out, "data-bin")
    binaries = [os.path.join(destdir, f"{split}.{src}-{tgt}.{lang}.{ext}")
                for split in SPLITS for lang in (src, tgt) for ext in ("bin", "idx")]
    dicts = [os.path.join(destdir, f"dict.{lang}.txt") for lang in (src, tgt)]
    pipeline.step(Pipeline.LAST, [*dicts, *binaries], list(pieces.values()),
                  lambda: fairseq_preprocess(src, tgt, os.path.join(out, "spm"), destdir, args.workers))
    print(f"done: {destdir} (sentencepiece model {model})", flush=True)
