"""Data preparation (resmlp_mt.prep): Multi30k and WMT14 pipelines on tiny synthetic corpora.

The WMT14 archives are fakes with the real archive names and member layout; the expected
cleaning results are computed here from the generated sentences, independently of the code.
"""
import gzip
import io
import os
import random
import runpy
import shutil
import subprocess
import sys
import tarfile

import pytest
import sentencepiece as spm
from fairseq.data import Dictionary, data_utils

from resmlp_mt.prep import multi30k, wmt14

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

LEXICON = {
    "en": "a man woman dog cat red blue big small house street runs sits plays with on the in near green ball".split(),
    "de": "ein mann frau hund katze rot blau gross klein haus strasse rennt sitzt spielt mit auf der in nahe grün ball"
          .split(),
    "fr": "un homme femme chien chat rouge bleu grand petit maison rue court assis joue avec sur le dans près vert balle"
          .split(),
}


def sentence_pair(rng, src, tgt, length):
    words = [rng.randrange(len(LEXICON["en"])) for _ in range(length)]
    return " ".join(LEXICON[src][i] for i in words), " ".join(LEXICON[tgt][i] for i in words)


def write_text(path, lines):
    data = "".join(line + "\n" for line in lines).encode()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def run_script(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "data-prep", script), *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=300)


def snapshot(directory):
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))}


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def dataset_size(data_bin, split, pair, lang):
    return len(data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{pair}.{lang}"), None))


# ---------------------------------------------------------------------------------------------- Multi30k

M30K_SIZES = {"train": 200, "val": 20, "test_2016_flickr": 20}
M30K_GZ = {"train.en", "val.en", "val.de", "test_2016_flickr.de"}  # the rest plain text


@pytest.fixture(scope="module")
def m30k_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("m30k-raw")
    rng = random.Random(0)
    for name, n in M30K_SIZES.items():
        pairs = [sentence_pair(rng, "en", "de", rng.randint(3, 12)) for _ in range(n)]
        for lang, lines in zip(("en", "de"), zip(*pairs)):
            file = f"{name}.{lang}"
            write_text(raw / (file + ".gz" if file in M30K_GZ else file), [s.capitalize() + " ." for s in lines])
    return raw


@pytest.fixture(scope="module")
def m30k_out(m30k_raw, tmp_path_factory):
    before = snapshot(m30k_raw)
    out = tmp_path_factory.mktemp("m30k") / "out"
    proc = run_script("prepare_multi30k.py", "--pair", "en-de", "--raw-dir", m30k_raw, "--out", out,
                      "--vocab-size", 150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert snapshot(m30k_raw) == before, "the raw input was modified"
    return out


def test_multi30k_builds_joined_data_bin(m30k_raw, m30k_out):
    data_bin = m30k_out / "data-bin"
    assert (data_bin / "dict.en.txt").read_text() == (data_bin / "dict.de.txt").read_text()
    for split, n in (("train", 200), ("valid", 20), ("test", 20)):
        for lang in ("en", "de"):
            assert dataset_size(data_bin, split, "en-de", lang) == n
    with gzip.open(m30k_raw / "test_2016_flickr.de.gz", "rt") as f:
        test_de = f.read().splitlines()
    assert read_lines(m30k_out / "test.raw.de") == test_de
    # the binarised pieces decode back to the raw sentence with the kept sentencepiece model
    pieces = Dictionary.load(str(data_bin / "dict.de.txt")).string(
        data_utils.load_indexed_dataset(str(data_bin / "test.en-de.de"), None)[0])
    assert spm.SentencePieceProcessor(model_file=str(m30k_out / "spm.model")).decode(pieces.split()) == test_de[0]


def test_multi30k_rerun_skips_finished_steps(m30k_raw, m30k_out, capsys):
    mtimes = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(m30k_out) for p in files}
    assert multi30k.main(["--raw-dir", str(m30k_raw), "--out", str(m30k_out), "--vocab-size", "150"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 9
    assert mtimes == {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(m30k_out) for p in files}


def test_fairseq_train_accepts_data_bin(m30k_out):
    proc = subprocess.run(
        [os.path.join(BIN, "fairseq-train"), str(m30k_out / "data-bin"), "--arch", "transformer",
         "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
         "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
         "--decoder-attention-heads", "2", "--max-update", "2", "--max-tokens", "500", "--optimizer", "adam",
         "--lr", "1e-3", "--cpu", "--no-save", "--disable-validation"],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _remove(raw, name):
    os.remove(raw / name)


def _drop_last_line(raw, name):
    write_text(raw / name, read_lines(raw / name)[:-1])


def _blank_line_17(raw, name):
    lines = read_lines(raw / name)
    lines[16] = "   "
    write_text(raw / name, lines)


def _truncate(raw, name):
    write_text(raw / name, [])


@pytest.mark.parametrize("corrupt, name, expected", [
    (_remove, "val.de.gz", ["missing file val.de.gz", "in directory"]),
    (_drop_last_line, "train.de", ["line counts differ", "train.en.gz has 200 lines", "train.de has 199 lines"]),
    (_truncate, "test_2016_flickr.de.gz", ["empty file", "test_2016_flickr.de.gz"]),
    (_blank_line_17, "train.de", ["train.de: line 17 is empty"]),
])
def test_multi30k_bad_input_is_reported(m30k_raw, tmp_path, capsys, corrupt, name, expected):
    raw = tmp_path / "raw"
    shutil.copytree(m30k_raw, raw)
    corrupt(raw, name)
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err
    assert str(raw) in err


def test_multi30k_missing_raw_dir_and_failed_download(tmp_path, capsys, monkeypatch):
    assert multi30k.main(["--raw-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert f"raw directory not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    # port 9 refuses at once: no waiting on a network that is not there
    assert multi30k.main(["--out", str(tmp_path / "out"), "--download-url", "http://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert "could not download http://127.0.0.1:9/train.en.gz" in err and "--raw-dir" in err and "MULTI30K_DIR" in err


def test_output_dir_of_other_files_is_refused(m30k_raw, tmp_path, capsys):
    (tmp_path / "spm.model").write_text("someone else's")
    assert multi30k.main(["--raw-dir", str(m30k_raw), "--out", str(tmp_path)]) == 2
    assert "is not empty and was not made by this tool" in capsys.readouterr().err
    assert (tmp_path / "spm.model").read_text() == "someone else's"


# ---------------------------------------------------------------------------------------------- WMT14


def clean_rule(src, tgt):
    """clean-corpus-n.perl -ratio 1.5 ... 1 250, restated for the check."""
    ns, nt = len(src.split()), len(tgt.split())
    long_word = any(len(w) > 1000 for w in (src + " " + tgt).split())
    return 0 < ns <= 250 and 0 < nt <= 250 and ns / nt <= 1.5 and nt / ns <= 1.5 and not long_word


def fake_corpus(rng, src, tgt, n):
    """``n`` ordinary pairs plus the edge cases of the cleaning rule."""
    pairs = [sentence_pair(rng, src, tgt, rng.randint(3, 10)) for _ in range(n)]
    a, b = sentence_pair(rng, src, tgt, 250)
    pairs += [
        ("", "orphan line"),                                    # empty side: dropped
        ("two words", "one two three four"),                    # ratio 2: dropped
        ("two words", "one two three"),                         # ratio 1.5: kept
        (a, b),                                                 # 250 words: kept
        (a + " more", b + " more"),                             # 251 words: dropped
        ("x" * 1001 + " word", "long word"),                    # a 1001-character word: dropped
        ("the 中 house", f"{LEXICON[tgt][16]} 中 {LEXICON[tgt][9]}"),  # a rare character: kept, as <unk>
    ]
    rng.shuffle(pairs)
    return pairs


def sgm(segments, setid="newstest2014"):
    body = "".join(f'<seg id="{i}">{s}</seg>\n' for i, s in enumerate(segments, 1))
    return f'<srcset setid="{setid}" srclang="any">\n<doc sysid="ref" docid="d1" genre="news">\n<p>\n{body}</p>\n' \
           '</doc>\n</srcset>\n'


def make_tar(path, files):
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as tar:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def text(lines):
    return "".join(line + "\n" for line in lines)


TEST_SEGMENTS = {  # newstest2014 with untouched whitespace, quotes and entities
    "en": ["  The „best“  house &amp; garden  ", "A dog runs…", "Two cats"],
    "de": ["Das „beste“ Haus &amp; Garten", "  Ein Hund rennt…", "Zwei   Katzen"],
    "fr": ["La « meilleure » maison &amp; jardin", "Un chien court…", "Deux chats"],
}


@pytest.fixture(scope="module")
def wmt14_archives(tmp_path_factory):
    """Archives for both pairs, as statmt.org ships them; returns (dir, {pair: [corpus pairs]})."""
    d = tmp_path_factory.mktemp("wmt14-archives")
    rng = random.Random(1)
    corpora = {"en-de": {}, "en-fr": {}}
    members = {}
    layout = {  # archive: [(member pattern, lang pair)]
        "training-parallel-europarl-v7.tgz": [("training/europarl-v7.{p}.{l}", "de-en"),
                                              ("training/europarl-v7.{p}.{l}", "fr-en")],
        "training-parallel-commoncrawl.tgz": [("commoncrawl.{p}.{l}", "de-en"), ("commoncrawl.{p}.{l}", "fr-en")],
        "training-parallel-nc-v9.tgz": [("training/news-commentary-v9.{p}.{l}", "de-en"),
                                        ("training/news-commentary-v9.{p}.{l}", "fr-en")],
        "training-parallel-un.tgz": [("un/undoc.2000.{p}.{l}", "fr-en")],
    }
    for archive, entries in layout.items():
        files = members.setdefault(archive, {"training/readme.txt": "not a corpus\n"})
        for pattern, p in entries:
            other = p.split("-")[0]
            pairs = fake_corpus(rng, "en", other, 30)
            corpora[f"en-{other}"][archive] = pairs
            for lang, lines in (("en", [s for s, _ in pairs]), (other, [t for _, t in pairs])):
                files[pattern.format(p=p, l=lang)] = text(lines)
    giga = fake_corpus(rng, "en", "fr", 30)
    corpora["en-fr"]["training-giga-fren.tar"] = giga
    members["training-giga-fren.tar"] = {f"giga-fren.release2.fixed.{lang}.gz": gzip.compress(text(lines).encode())
                                         for lang, lines in zip(("en", "fr"), zip(*giga))}
    dev = [sentence_pair(rng, "en", "de", 5) for _ in range(10)]
    members["dev.tgz"] = {f"dev/newstest2013.{lang}": text(lines) for lang, lines in
                          zip(("en", "de", "fr"), (*zip(*dev), [t for _, t in dev]))}
    members["test-full.tgz"] = {f"test-full/newstest2014-{c}-{side}.{lang}.sgm": sgm(TEST_SEGMENTS[lang])
                                for c, other in (("deen", "de"), ("fren", "fr"))
                                for side, lang in (("src", "en"), ("ref", other), ("src", other), ("ref", "en"))}
    for archive, files in members.items():
        make_tar(d / archive, files)
    return d, corpora


def expected_train(corpora, pair):
    """Kept pairs in the fairseq recipe's corpus order; the test data needs no normalisation."""
    order = {"en-de": ["training-parallel-europarl-v7.tgz", "training-parallel-commoncrawl.tgz",
                       "training-parallel-nc-v9.tgz"],
             "en-fr": ["training-parallel-europarl-v7.tgz", "training-parallel-commoncrawl.tgz",
                       "training-parallel-un.tgz", "training-parallel-nc-v9.tgz", "training-giga-fren.tar"]}[pair]
    return [(s, t) for archive in order for s, t in corpora[pair][archive] if clean_rule(s, t)]


@pytest.mark.parametrize("pair, workers", [("en-de", 1), ("en-fr", 2)])
def test_wmt14_pipeline(wmt14_archives, tmp_path, pair, workers):
    archives, corpora = wmt14_archives
    before = snapshot(archives)
    src, tgt = pair.split("-")
    out = tmp_path / "out"
    assert wmt14.main(["--pair", pair, "--archive-dir", str(archives), "--out", str(out), "--bpe-size", "200",
                       "--character-coverage", "0.999", "--workers", str(workers)]) == 0
    assert snapshot(archives) == before

    kept = expected_train(corpora, pair)
    total = sum(map(len, corpora[pair].values()))
    assert len(kept) == total - 4 * len(corpora[pair])  # four of the seven edge cases go, in every corpus
    assert list(zip(read_lines(out / "raw" / f"train.{src}"), read_lines(out / "raw" / f"train.{tgt}"))) == kept
    assert read_lines(out / f"test.raw.{src}") == [" ".join(s.split()) for s in TEST_SEGMENTS[src]]
    assert read_lines(out / f"test.raw.{tgt}") == [" ".join(s.split()) for s in TEST_SEGMENTS[tgt]]
    normalised = read_lines(out / "raw" / "test.en")  # Moses punctuation normalisation reached the model input
    assert normalised[:2] == ['The "best" house &amp; garden', "A dog runs..."]

    data_bin = out / "data-bin"
    assert (data_bin / f"dict.{src}.txt").read_text() == (data_bin / f"dict.{tgt}.txt").read_text()
    pieces = {line.split("\t")[0] for line in read_lines(out / "spm.vocab")}
    symbols = {line.split()[0] for line in read_lines(data_bin / f"dict.{src}.txt")}
    assert "中" not in pieces and {s for s in symbols if not s.startswith("madeupword")} <= pieces
    for split, n in (("train", len(kept)), ("valid", 10), ("test", 3)):
        for lang in (src, tgt):
            assert dataset_size(data_bin, split, pair, lang) == n


def test_wmt14_missing_archive_fails_cleanly(wmt14_archives, tmp_path, capsys, monkeypatch):
    """Through the data-prep script itself, run in this process to spare a second fairseq import."""
    archives = tmp_path / "archives"
    shutil.copytree(wmt14_archives[0], archives)
    os.remove(archives / "training-parallel-commoncrawl.tgz")
    script = os.path.join(REPO, "data-prep", "prepare_wmt14.py")
    monkeypatch.setattr(sys, "argv", [script, "--archive-dir", str(archives), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"missing archive training-parallel-commoncrawl.tgz in directory {archives}" in err
    assert "Traceback" not in err


def test_wmt14_mismatched_corpus_is_reported(tmp_path, capsys):
    archives = tmp_path / "archives"
    archives.mkdir()
    cc = {"commoncrawl.de-en.en": "one\ntwo\nthree\n", "commoncrawl.de-en.de": "eins\nzwei\n"}
    make_tar(archives / "training-parallel-commoncrawl.tgz", cc)
    for name, files in (("training-parallel-europarl-v7.tgz", ["training/europarl-v7.de-en.{}"]),
                        ("training-parallel-nc-v9.tgz", ["training/news-commentary-v9.de-en.{}"]),
                        ("dev.tgz", ["dev/newstest2013.{}"])):
        make_tar(archives / name, {f.format(lang): "a b\n" for f in files for lang in ("en", "de")})
    make_tar(archives / "test-full.tgz", {"test-full/newstest2014-deen-src.en.sgm": sgm(["a"]),
                                          "test-full/newstest2014-deen-ref.de.sgm": sgm(["b"])})
    out = tmp_path / "out"
    assert wmt14.main(["--archive-dir", str(archives), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'orig' / 'commoncrawl.de-en.en'} has 3 lines" in err
    assert f"{out / 'orig' / 'commoncrawl.de-en.de'} has 2 lines" in err
