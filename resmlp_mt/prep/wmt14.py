"""WMT14 En-De / En-Fr -> normalised, cleaned text -> joint sentencepiece -> fairseq data-bin.

    resmlp-prep-wmt14 --pair en-de --archive-dir ~/wmt14 --out data/wmt14-en-de --workers 8

Uses the training corpora of fairseq's examples/translation/prepare-wmt14en2{de,fr}.sh
(for En-De its --icml17 choice, News Commentary v9), from the original statmt.org archives:
pass the directory holding them with --archive-dir (or $WMT14_DIR), or --download them.
newstest2013 (dev.tgz) is the validation set and newstest2014 (test-full.tgz) the test set.
Training pairs get Moses punctuation normalisation and control-character removal, then the
clean-corpus-n.perl rule fairseq applies (-ratio 1.5, 1 to 250 words, words of at most 1000
characters); the whitespace-separated words of the normalised, untokenized text are counted,
since sentencepiece replaces Moses tokenization. Outputs in OUT as for Multi30k, plus
orig/ (the extracted archive members); test.raw.{src,tgt} are the newstest2014 segments
extracted exactly as sacreBLEU extracts them.
"""
import argparse
import functools
import multiprocessing
import os
import re
import shutil
import tarfile

from sacremoses import MosesPunctNormalizer
from tqdm import tqdm

from .common import (
    DataPrepError,
    Pipeline,
    add_common_args,
    atomic_path,
    atomic_writers,
    chunks,
    claim_out_dir,
    download,
    iter_lines,
    iter_parallel,
    run_cli,
    run_settings,
    subword_and_binarize,
)

STATMT = "https://statmt.org/"
ARCHIVE_URLS = {
    "training-parallel-europarl-v7.tgz": STATMT + "wmt13/training-parallel-europarl-v7.tgz",
    "training-parallel-commoncrawl.tgz": STATMT + "wmt13/training-parallel-commoncrawl.tgz",
    "training-parallel-un.tgz": STATMT + "wmt13/training-parallel-un.tgz",
    "training-parallel-nc-v9.tgz": STATMT + "wmt14/training-parallel-nc-v9.tgz",
    "training-giga-fren.tar": STATMT + "wmt10/training-giga-fren.tar",
    "dev.tgz": STATMT + "wmt14/dev.tgz",
    "test-full.tgz": STATMT + "wmt14/test-full.tgz",
}
# (archive, member with {} for the language code), in the order the corpora are concatenated.
TRAIN_CORPORA = {
    "en-de": [("training-parallel-europarl-v7.tgz", "training/europarl-v7.de-en.{}"),
              ("training-parallel-commoncrawl.tgz", "commoncrawl.de-en.{}"),
              ("training-parallel-nc-v9.tgz", "training/news-commentary-v9.de-en.{}")],
    "en-fr": [("training-parallel-europarl-v7.tgz", "training/europarl-v7.fr-en.{}"),
              ("training-parallel-commoncrawl.tgz", "commoncrawl.fr-en.{}"),
              ("training-parallel-un.tgz", "un/undoc.2000.fr-en.{}"),
              ("training-parallel-nc-v9.tgz", "training/news-commentary-v9.fr-en.{}"),
              ("training-giga-fren.tar", "giga-fren.release2.fixed.{}.gz")],
}
MAX_WORDS, MAX_RATIO, MAX_WORD_CHARS = 250, 1.5, 1000


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(TRAIN_CORPORA), default="en-de", help="source-target languages")
    p.add_argument("--archive-dir", default=os.environ.get("WMT14_DIR"),
                   help="directory holding the original archives (default $WMT14_DIR, or OUT/archives "
                        "with --download)")
    p.add_argument("--download", action="store_true", help="download missing archives from statmt.org")
    add_common_args(p, "--bpe-size", 32000, 0.9999,
                    "stray characters of other scripts in web-crawled text become <unk> instead of taking "
                    "vocabulary slots",
                    workers_help="processes for normalisation and fairseq-preprocess, threads for "
                                 "sentencepiece (default 1)")
    return p


def corpus_members(pair):
    """{archive: [member, ...]} and the ordered training (source member, target member) pairs."""
    src, tgt = pair.split("-")
    code = tgt + src  # test-full names its files newstest2014-deen-*, newstest2014-fren-*
    train = [(archive, member.format(src), member.format(tgt)) for archive, member in TRAIN_CORPORA[pair]]
    members = {}
    for archive, *names in train + [("dev.tgz", f"dev/newstest2013.{src}", f"dev/newstest2013.{tgt}"),
                                    ("test-full.tgz", f"test-full/newstest2014-{code}-src.{src}.sgm",
                                     f"test-full/newstest2014-{code}-ref.{tgt}.sgm")]:
        members.setdefault(archive, []).extend(names)
    return members, [names for _, *names in train]


def locate_archives(args, names):
    archive_dir = args.archive_dir or (os.path.join(args.out, "archives") if args.download else None)
    if not archive_dir:
        raise DataPrepError("no archives: pass --archive-dir DIR (or set WMT14_DIR) holding "
                            f"{', '.join(names)}, or --download them")
    paths = {name: os.path.join(archive_dir, name) for name in names}
    for name, path in paths.items():
        if not os.path.isfile(path):
            if not args.download:
                raise DataPrepError(f"missing archive {name} in directory {archive_dir} "
                                    f"(get it from {ARCHIVE_URLS[name]}, or pass --download)")
            try:
                download(ARCHIVE_URLS[name], path, timeout=60)
            except DataPrepError as e:
                raise DataPrepError(f"{e}\nWithout network access, fetch the archives elsewhere and pass "
                                    "--archive-dir DIR (or set WMT14_DIR)") from None
    return paths


def extract(archive, members, orig):
    """Copy the wanted members out of ``archive`` in one streaming pass."""
    wanted = set(members)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name not in wanted or not info.isfile():
                    continue
                dest = os.path.join(orig, name)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with tar.extractfile(info) as fin, atomic_path(dest) as tmp, open(tmp, "wb") as fout, \
                        tqdm.wrapattr(fout, "write", total=info.size, desc=f"extract {name}") as bar:
                    shutil.copyfileobj(fin, bar, 1 << 20)
                wanted.discard(name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataPrepError(f"extracting {archive} failed: {e}") from None
    if wanted:
        raise DataPrepError(f"archive {archive} has no member {', '.join(sorted(wanted))}")


_normalizers = None


def _init_normalizers(src, tgt):
    global _normalizers
    _normalizers = [MosesPunctNormalizer(lang=lang, post_remove_control_chars=True) for lang in (src, tgt)]


def normalise(text, side):
    """normalize-punctuation.perl and remove-non-printing-char.perl, then collapse whitespace."""
    return " ".join(_normalizers[side].normalize(text).split())


def keep_pair(src_words, tgt_words):
    """The clean-corpus-n.perl test, as fairseq runs it: -ratio 1.5, 1 to 250 words."""
    ns, nt = len(src_words), len(tgt_words)
    return (1 <= ns <= MAX_WORDS and 1 <= nt <= MAX_WORDS and max(ns, nt) <= MAX_RATIO * min(ns, nt)
            and max(map(len, src_words + tgt_words)) <= MAX_WORD_CHARS)


def _clean_chunk(pairs):
    kept = []
    for src, tgt in pairs:
        src, tgt = normalise(src, 0), normalise(tgt, 1)
        if keep_pair(src.split(), tgt.split()):
            kept.append((src, tgt))
    return kept, len(pairs)


def _map_chunks(fn, items, workers, src, tgt):
    """``map(fn, items)`` on ``workers`` processes, feeding a bounded window so memory stays flat."""
    if workers <= 1:
        _init_normalizers(src, tgt)
        yield from map(fn, items)
        return
    with multiprocessing.Pool(workers, _init_normalizers, (src, tgt)) as pool:
        for window in chunks(items, 4 * workers):
            yield from pool.imap(fn, window)


def write_train(corpora, out, src, tgt, workers):
    pairs = ((s, t) for src_path, tgt_path in corpora
             for _, s, t in iter_parallel(src_path, tgt_path, allow_empty=True))
    total = kept = 0
    paths = [os.path.join(out, "raw", f"train.{lang}") for lang in (src, tgt)]
    with atomic_writers(*paths) as (fs, ft), tqdm(desc="normalise and clean train", unit=" pairs") as bar:
        for kept_pairs, n in _map_chunks(_clean_chunk, chunks(pairs, 10_000), workers, src, tgt):
            for s, t in kept_pairs:
                fs.write(s + "\n")
                ft.write(t + "\n")
            total, kept = total + n, kept + len(kept_pairs)
            bar.update(n)
        if not kept:
            raise DataPrepError(f"no training pair of {', '.join(p for c in corpora for p in c)} survived cleaning")
    print(f"train: kept {kept} of {total} pairs ({total - kept} dropped by the cleaning rule)", flush=True)


def read_sgm(path):
    """The <seg> texts of a WMT SGML file, extracted as sacreBLEU does (no entity decoding)."""
    segs = []
    for n, line in iter_lines(path):
        if line.startswith("<seg "):
            text = " ".join(re.sub(r"<seg.*?>(.*)</seg>.*?", r"\1", line).split())
            if not text:
                raise DataPrepError(f"{path}: line {n} is an empty segment")
            segs.append(text)
    if not segs:
        raise DataPrepError(f"{path}: no <seg> lines")
    return segs


def write_eval_sets(dev, test, out, src, tgt):
    """raw/valid.*, raw/test.* (normalised like train) and test.raw.* (untouched references)."""
    valid = [(s, t) for _, s, t in iter_parallel(*dev)]
    test_src, test_tgt = map(read_sgm, test)
    if len(test_src) != len(test_tgt):
        raise DataPrepError(f"segment counts differ: {test[0]} has {len(test_src)} segments, "
                            f"{test[1]} has {len(test_tgt)} segments")
    _init_normalizers(src, tgt)
    paths = [os.path.join(out, "raw", f"{split}.{lang}") for split in ("valid", "test") for lang in (src, tgt)]
    paths += [os.path.join(out, f"test.raw.{lang}") for lang in (src, tgt)]
    with atomic_writers(*paths) as (vs, vt, ts, tt, rs, rt):
        for s, t in valid:
            vs.write(normalise(s, 0) + "\n")
            vt.write(normalise(t, 1) + "\n")
        for s, t in zip(test_src, test_tgt):
            ts.write(normalise(s, 0) + "\n")
            tt.write(normalise(t, 1) + "\n")
            rs.write(s + "\n")
            rt.write(t + "\n")


def prepare(args):
    src, tgt = args.pair.split("-")
    out, orig = args.out, os.path.join(args.out, "orig")
    claim_out_dir(out)
    members, train = corpus_members(args.pair)
    archives = locate_archives(args, members)
    pipeline = Pipeline(out, run_settings(args, "--bpe-size"), args.force)
    legacy = ("archives", {"pair": args.pair, "archives": sorted(map(os.path.abspath, archives.values()))})
    for name, path in archives.items():
        pipeline.step(f"extract {name}", [os.path.join(orig, m) for m in members[name]], [path],
                      functools.partial(extract, path, members[name], orig), legacy=legacy)

    os.makedirs(os.path.join(out, "raw"), exist_ok=True)
    corpora = [(os.path.join(orig, s), os.path.join(orig, t)) for s, t in train]
    pipeline.step("normalise and clean training corpora",
                  [os.path.join(out, "raw", f"train.{lang}") for lang in (src, tgt)],
                  [p for pair in corpora for p in pair], lambda: write_train(corpora, out, src, tgt, args.workers))
    dev, test = ([os.path.join(orig, m) for m in members[a]] for a in ("dev.tgz", "test-full.tgz"))
    eval_outputs = [os.path.join(out, "raw", f"{split}.{lang}") for split in ("valid", "test") for lang in (src, tgt)]
    eval_outputs += [os.path.join(out, f"test.raw.{lang}") for lang in (src, tgt)]
    pipeline.step("newstest2013 (valid) and newstest2014 (test)", eval_outputs, dev + test,
                  lambda: write_eval_sets(dev, test, out, src, tgt))
    subword_and_binarize(args, src, tgt, pipeline)


def main(argv=None):
    return run_cli(prepare, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
