"""Data preparation (resmlp_mt.prep): Multi30k and WMT14 pipelines on tiny synthetic corpora.

The WMT14 archives are fakes with the real archive names and member layout; the expected
cleaning results are computed here from the generated sentences, independently of the code.
"""
import errno
import gzip
import io
import json
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

from resmlp_mt.prep import common, multi30k, wmt14

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

LEXICON = {
    "en": "a man woman dog cat red blue big small house street runs sits plays with on the in near green ball".split(),
    "de": "ein mann frau hund katze rot blau gross klein haus strasse rennt sitzt spielt mit auf der in nahe grün ball"
          .split(),
    "fr": ("un homme femme chien chat rouge bleu grand petit maison rue court assis joue avec sur le dans près "
           "vert balle").split(),
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


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
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


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
def test_multi30k_rerun_skips_finished_steps(m30k_raw, m30k_out, capsys):
    mtimes = {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(m30k_out) for p in files}
    assert multi30k.main(["--raw-dir", str(m30k_raw), "--out", str(m30k_out), "--vocab-size", "150"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 9
    assert mtimes == {p: os.path.getmtime(os.path.join(root, p)) for root, _, files in os.walk(m30k_out) for p in files}


@pytest.mark.slow
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


def _latin1_line(n):
    def corrupt(raw, name):
        lines = read_lines(raw / name)
        data = "".join(line + "\n" for line in lines).encode()
        start = sum(len(line.encode()) + 1 for line in lines[:n - 1])
        (raw / name).write_bytes(data[:start] + b"Caf\xe9 " + data[start:])  # Latin-1, not UTF-8
    return corrupt


@pytest.mark.parametrize("corrupt, name, expected", [
    (_remove, "val.de.gz", ["missing file val.de.gz", "in directory"]),
    (_drop_last_line, "train.de", ["line counts differ", "train.en.gz has 200 lines", "train.de has 199 lines"]),
    (_truncate, "test_2016_flickr.de.gz", ["empty file", "test_2016_flickr.de.gz"]),
    (_blank_line_17, "train.de", ["train.de: line 17 is empty"]),
    (_latin1_line(1), "train.de", ["train.de: line 1 is not valid UTF-8 (byte 0xe9 at byte 4 of the line)"]),
    (_latin1_line(150), "train.de", ["train.de: line 150 is not valid UTF-8 (byte 0xe9 at byte 4 of the line)"]),
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


def test_byte_order_marks_are_dropped(tmp_path):
    raw = tmp_path / "raw"
    for split in ("train", "valid", "test"):
        write_text(raw.mkdir(exist_ok=True) or raw / f"{split}.en", ["\ufeffA dog runs .", "A cat sits ."])
        write_text(raw / f"{split}.de.gz", ["\ufeffEin Hund rennt .", "Eine Katze sitzt ."])
    inputs = {(split, lang): str(raw / f"{split}.{lang}{'.gz' if lang == 'de' else ''}")
              for split in ("train", "valid", "test") for lang in ("en", "de")}
    multi30k.write_splits(inputs, str(tmp_path / "out"), "en", "de")
    assert read_lines(tmp_path / "out" / "raw" / "train.en") == ["A dog runs .", "A cat sits ."]
    assert read_lines(tmp_path / "out" / "raw" / "train.de") == ["Ein Hund rennt .", "Eine Katze sitzt ."]
    assert read_lines(tmp_path / "out" / "test.raw.de")[0] == "Ein Hund rennt ."


def test_an_output_directory_that_cannot_be_created(m30k_raw, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert multi30k.main(["--raw-dir", str(m30k_raw), "--out", str(tmp_path / "a-file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot create the output directory {tmp_path / 'a-file' / 'out'}: Not a directory")
    assert "pass an --out" in err and len(err.splitlines()) == 1


def test_a_full_disk_leaves_nothing_half_written(m30k_raw, tmp_path, capsys, monkeypatch):
    """The disk fills up while the sentencepiece pieces are written: one error line naming the file, no
    partial file; the steps before it are done and a re-run skips them."""
    out = tmp_path / "out"
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, text):
            self.written += len(text)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_disk_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and os.path.basename(os.path.dirname(path)) == "spm" else f

    monkeypatch.setattr(common, "open", full_disk_open, raising=False)
    for run in range(2):
        assert multi30k.main(["--raw-dir", str(m30k_raw), "--out", str(out), "--vocab-size", "150"]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()[-1]  # after tqdm's progress bars
        assert "Traceback" not in captured.err
        assert err == (f"error: cannot write {out / 'spm' / 'train.en'}: No space left on device. Nothing "
                       "half-written was kept; free space on that disk (or pass --out on another one) and re-run: "
                       "finished steps are skipped"), err
        assert captured.out.count("up to date, skipped") == 2 * run
        assert os.listdir(out / "spm") == []
        assert not [f for _, _, files in os.walk(out) for f in files if ".tmp" in f]
        assert (out / "spm.model").exists() and len(read_lines(out / "raw" / "train.en")) == 200


def copy_of_prepared(m30k_raw, m30k_out, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(m30k_raw, raw)
    shutil.copytree(m30k_out, out)  # with the modification times
    return raw, out


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
def test_an_edit_with_an_older_modification_time_is_seen(m30k_raw, m30k_out, tmp_path, capsys):
    """As cp -p, rsync -t and tar x leave it. The data-bin was built from the old text: refused without --force."""
    raw, out = copy_of_prepared(m30k_raw, m30k_out, tmp_path)
    before = snapshot(out / "data-bin")
    lines = read_lines(raw / "train.de")
    write_text(raw / "train.de", ["Ein ganz anderer Satz ."] + lines[1:])
    os.utime(raw / "train.de", (946684800, 946684800))  # 2000-01-01
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "150"]) == 2
    err = capsys.readouterr().err
    assert f"error: {out / 'data-bin'} was built with --character-coverage 1.0 --model-type bpe --pair en-de " \
           "--spm-sample-size 2000000 --vocab-size 150;" in err
    assert f"its input {raw / 'train.de'} changed" in err and "pass --force" in err and len(err.splitlines()) == 1
    assert snapshot(out / "data-bin") == before and read_lines(out / "raw" / "train.de") == lines


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
def test_another_vocab_size_does_not_replace_the_data_bin(m30k_raw, m30k_out, tmp_path, capsys):
    raw, out = copy_of_prepared(m30k_raw, m30k_out, tmp_path)
    before = snapshot(out / "data-bin"), (out / "spm.model").read_bytes()
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "120"]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size 150;" in err and "this run has --vocab-size 150 -> 120." in err and "--force" in err
    assert (snapshot(out / "data-bin"), (out / "spm.model").read_bytes()) == before


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
def test_touched_inputs_are_still_up_to_date(m30k_raw, m30k_out, tmp_path, capsys):
    """Content, not modification times: a newer time on the same text re-runs nothing."""
    raw, out = copy_of_prepared(m30k_raw, m30k_out, tmp_path)
    for path in [*raw.iterdir(), out / "spm.model"]:
        os.utime(path)
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "150"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 9


@pytest.mark.slow  # m30k_out: prepare_multi30k.py, and fairseq-preprocess, in processes
def test_an_output_directory_of_the_earlier_version(m30k_raw, m30k_out, tmp_path, capsys):
    """Its steps were decided by modification times, with each step's options in .stamps/NAME.json: they count
    as done, and a run with another vocabulary size is refused there too."""
    raw, out = copy_of_prepared(m30k_raw, m30k_out, tmp_path)
    for record in (out / ".stamps").glob("step.*.json"):
        record.unlink()
    old_stamps = {"spm": {"vocab_size": 150, "model_type": "bpe", "character_coverage": 1.0,
                          "spm_sample_size": 2000000},
                  "raw": {"pair": "en-de", "inputs": sorted(str(p) for p in raw.iterdir())}}
    for name, params in old_stamps.items():  # older than every output, as that version left them
        (out / ".stamps" / f"{name}.json").write_text(json.dumps(params, sort_keys=True, indent=1))
        os.utime(out / ".stamps" / f"{name}.json", (946684800, 946684800))
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "120"]) == 2
    err = capsys.readouterr().err
    assert "was built by an earlier version of this tool" in err and "its settings changed" not in err
    assert "step 'train joint sentencepiece model' would run again: no record of its inputs" in err
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "150"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 9
    assert len(list((out / ".stamps").glob("step.*.json"))) == 9


@pytest.mark.slow
def test_force_rebuilds_with_the_new_settings(m30k_raw, m30k_out, tmp_path, capsys):
    raw, out = copy_of_prepared(m30k_raw, m30k_out, tmp_path)
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "120", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "warning: --force:" in printed and "this run has --vocab-size 150 -> 120: rebuilding it" in printed
    assert len(spm.SentencePieceProcessor(model_file=str(out / "spm.model"))) == 120
    assert multi30k.main(["--raw-dir", str(raw), "--out", str(out), "--vocab-size", "120"]) == 0
    assert capsys.readouterr().out.count("up to date, skipped") == 9


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


@pytest.mark.slow  # fairseq-preprocess in a process; workers=2 a multiprocessing pool
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
