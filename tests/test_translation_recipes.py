"""The recipes around the model: the demo's code path, checkpoint averaging, scoring."""
import importlib.util
import os
import random
import re
import subprocess
import sys

import pytest
import torch

from helpers import BIN, REPO, USER_DIR, run_cli
from resmlp_mt.cli import average_checkpoints, score
from test_cli_translation import TINY
from test_data_prep import sentence_pair, write_text


@pytest.fixture(scope="module")
def multi30k_like(tmp_path_factory):
    raw = tmp_path_factory.mktemp("m30k-like")
    rng = random.Random(1)
    for name, n in {"train": 300, "val": 19, "test_2016_flickr": 21}.items():
        pairs = [sentence_pair(rng, "en", "de", rng.randint(3, 10)) for _ in range(n)]
        for lang, lines in zip(("en", "de"), zip(*pairs)):
            write_text(raw / f"{name}.{lang}.gz", [s.capitalize() + " ." for s in lines])
    return raw


def run_example(script, raw_dir, work, **settings):
    """An examples/translation script as `make demo` runs it, on Multi30k-like files; its stdout."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MULTI30K_DIR": str(raw_dir), "WORK": str(work),
           "MINUTES": "5", **{k: str(v) for k, v in settings.items()}}
    proc = subprocess.run(["bash", os.path.join(REPO, "examples/translation", script)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_demo_end_to_end_in_a_few_updates(multi30k_like, tmp_path):
    """``make demo`` runs examples/translation/demo.sh; this is that script with 4 updates."""
    out = run_example("demo.sh", multi30k_like, tmp_path / "demo", MAX_UPDATE=4, THREADS=1, SAVE_EVERY=1)
    # the last 5 checkpoints of 4 updates: checkpoint_last.pt (update 4) and updates 3, 2, 1
    assert "== averaging checkpoint_last.pt and checkpoint_1_3.pt checkpoint_1_2.pt checkpoint_1_1.pt" in out, out
    assert "sentences scored: 21 of 21" in out
    assert re.search(r"^BLEU = [\d.]+ ", out, re.M), out[-2000:]
    assert re.search(r"signature: nrefs:1\|case:mixed\|eff:no\|tok:13a\|smooth:exp\|version:", out)
    assert out.count("\nHYP  ") == 5 and out.count("\nREF  ") == 5
    # TensorBoard logs: the epoch's and the validation's (4 updates: no --log-interval 25 line)
    assert sorted(os.listdir(tmp_path / "demo/resmlp_small/tensorboard")) == ["train", "valid"]
    # the precision it chose and said (bf16 where the CPU has it natively: fairseq-train --bf16)
    assert re.search(r"^== precision: (bf16|fp32) \(this CPU has (no )?native bf16", out, re.M), out[:2000]
    # the two commands it prints at its end translate with the model it trained
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    hub, interactive = out.splitlines()[-2:]
    assert hub.startswith("python -c ") and interactive.startswith('echo "A man is riding a bike." | fairseq-inter')
    for command in (hub, interactive):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip(), (command, proc.stderr[-3000:])
    assert proc.stdout.startswith("D-0\t")
    # the demo's model: relative mixing with cross-attention coverage and locality, and the floor
    # under the locality rates, the start of reading and the mean focus saved for decoding
    model = torch.load(out.splitlines()[-1].split("--path ")[1].split()[0], weights_only=False)["cfg"]["model"]
    assert [model[key] for key in ("token_mixing", "cross_attention_coverage", "cross_attention_locality",
                                   "cross_attention_locality_floor", "cross_attention_locality_start",
                                   "cross_attention_locality_focus")] == ["relative", True, True, 0.5, 16, "mean"]


@pytest.mark.slow
def test_compare_transformer_prints_its_tables(multi30k_like, tmp_path):
    """compare_transformer.sh, two models at a time, 2 seeds of 3 updates each, and long inputs."""
    # THREADS=1: PARALLEL=1 still trains two models at a time (one thread each), and the data
    # preparation and long-input runs no longer start idle second threads beside make test's workers
    out = run_example("compare_transformer.sh", multi30k_like, tmp_path / "compare", MAX_UPDATE=3, THREADS=1,
                      PARALLEL=1, MODELS="resmlp_relative transformer", SEEDS="1 2", LONG_FACTORS="4")
    rows = re.findall(r"^(resmlp_relative|transformer) +([\d.]+) +([\d.]+)/([\d.]+) +(\d+) +(\d+) "
                      r"+([\d.]+) +([\d,]+)$", out, re.M)
    assert [r[0] for r in rows] == ["resmlp_relative", "transformer"], out
    for name, mean, first, second, _, updates, _, _ in rows:
        assert abs(float(mean) - (float(first) + float(second)) / 2) <= 0.006 and updates == "3", (name, out)
    params = {r[0]: int(r[-1].replace(",", "")) for r in rows}
    assert params["transformer"] > params["resmlp_relative"]
    # the long-input table: 21 test sentences make 5 inputs of 4, all translated by each model
    long_rows = re.findall(r"^(resmlp_relative|transformer) +4 +5/5 +([\d.]+) +([\d.]+) +(-?[\d.]+) +([\d.]+) "
                           r"+-?[\d.]+\.\.-?[\d.]+$", out, re.M)
    assert [r[0] for r in long_rows] == ["resmlp_relative", "transformer"], out
    for _, parts, whole, drop, _ in long_rows:
        assert abs(float(parts) - float(whole) - float(drop)) <= 0.011
    assert (tmp_path / "compare/comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # long_compare.sh on those models: 2 updates on joined pairs each, translated with the average
    # of the checkpoints after updates 1 and 2; the locality model starts from resmlp_relative's
    # checkpoint (none of its own was trained), and is translated twice: with its locality floor and
    # start and focus, and as trained (floor 0, no start, argmax focus) at decoding time
    out = run_example("long_compare.sh", multi30k_like, tmp_path / "compare", THREADS=1, SEEDS="1",
                      MODELS="resmlp_locality transformer", LONG_UPDATES=2, LONG_FACTORS="4", LONG_AVERAGE=2,
                      LONG_SAVE_EVERY=1)
    for model in ("resmlp_locality", "transformer"):
        run = tmp_path / f"compare/long-{model}-s1"
        assert (run / "model.txt").read_text().strip() == str(run / "checkpoints/checkpoint_avg.pt")
        first, = run.glob("checkpoints/checkpoint_*_1.pt")
        ends = [torch.load(path, weights_only=False)["model"]
                for path in (first, run / "checkpoints/checkpoint_last.pt")]
        average = torch.load(run / "checkpoints/checkpoint_avg.pt", weights_only=False)["model"]
        assert average.keys() == ends[0].keys()
        for name, value in average.items():
            torch.testing.assert_close(value, (ends[0][name].double() + ends[1][name].double()).div(2).to(value.dtype))
        assert not torch.equal(ends[0]["decoder.embed_tokens.weight"], ends[1]["decoder.embed_tokens.weight"])
    log = (tmp_path / "compare/long-resmlp_locality-s1/train.log").read_text()
    assert "the checkpoint has no cross-attention coverage" in log and "no cross-attention locality" in log
    long_rows = re.findall(r"^(resmlp_locality\S*-s1|transformer-s1) +4 +5/5 +[\d.]+ +[\d.]+ +-?[\d.]+ +[\d.]+ "
                           r"+-?[\d.]+\.\.-?[\d.]+$", out, re.M)
    assert long_rows == ["resmlp_locality-s1", "resmlp_locality_nofloor-s1", "transformer-s1"], out

    # the validation sentences joined, as the floor was chosen: 19 sentences make 9 inputs of 2
    locality = (tmp_path / "compare/long-resmlp_locality-s1/model.txt").read_text().strip()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples/translation/long_inputs.py"),
                           "--data", str(tmp_path / "compare/data"), "--subset", "valid", "--factors", "2",
                           "--work", str(tmp_path / "valid-joins"), "--model", f"floor={locality}",
                           "--overrides", "floor={'model': {'cross_attention_locality_floor': 0.8}}",
                           "--generate-args", "floor=--lenpen 1.5", "--versus", "floor,floor"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and re.search(r"^floor +2 +9/9 ", proc.stdout, re.M), proc.stdout + proc.stderr[-3000:]
    assert re.search(r"^drop of floor minus drop of floor .*\n +k +difference +95%\n 2 +-?0\.00 +-?0\.00\.\.-?0\.00$",
                     proc.stdout, re.M), proc.stdout


def test_long_finetune_refuses_an_average_of_checkpoints_it_will_not_save(tmp_path):
    """LONG_AVERAGE=5 over 600 updates saved every 200 would average 3 checkpoints, not 5: refused
    before any training, naming the settings."""
    (tmp_path / "start.pt").write_bytes(b"")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "LONG_AVERAGE": "5", "LONG_UPDATES": "600"}
    proc = subprocess.run(["bash", os.path.join(REPO, "examples/translation/long_finetune.sh"), str(tmp_path),
                           str(tmp_path / "start.pt"), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "out").exists(), proc.stderr
    assert ("LONG_AVERAGE=5 needs 4 checkpoints before the final one, but LONG_UPDATES=600 saves 2 "
            "(one every LONG_SAVE_EVERY=200 updates)") in proc.stderr
    proc = subprocess.run(["bash", os.path.join(REPO, "examples/translation/long_finetune.sh"), str(tmp_path),
                           str(tmp_path / "start.pt"), str(tmp_path / "out")], env={**env, "LONG_SAVE_EVERY": "0"},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "LONG_SAVE_EVERY must be 1 or more updates, not 0" in proc.stderr
    assert not (tmp_path / "out").exists()


def long_inputs_script():
    """examples/translation/long_inputs.py as a module."""
    spec = importlib.util.spec_from_file_location("long_inputs",
                                                  os.path.join(REPO, "examples/translation/long_inputs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_inputs_average_seeds_by_name():
    long_inputs = long_inputs_script()
    rows = [["a-s1", 2, "5/5", 30.0, 20.0, 10.0, 1.0], ["a-s2", 2, "5/5", 32.0, 28.0, 4.0, 0.9],
            ["b-s1", 2, "5/5", 25.0, 24.0, 1.0, 1.1], ["a-s1", 4, "2/2", 31.0, 11.0, 20.0, 0.5]]
    assert long_inputs.seed_means(rows) == [["a", 2, 2, 31.0, 24.0, 7.0, pytest.approx(0.95)],
                                            ["b", 2, 1, 25.0, 24.0, 1.0, 1.1], ["a", 4, 1, 31.0, 11.0, 20.0, 0.5]]
    assert long_inputs.seed_means([["a", 2, "5/5", 30.0, 20.0, 10.0, 1.0]]) == []


def test_long_inputs_join_consecutive_lines():
    long_inputs = long_inputs_script()
    assert long_inputs.joined(["a", "b", "c", "d", "e"], 2) == ["a b", "c d"]
    assert long_inputs.joined(["a", "b", "c"], 1) == ["a", "b", "c"]


LONG_REFS = ["a man rides a red bike . a dog runs .", "two girls sing on a stage . it rains .",
             "a woman reads a book in the park . kids play .", "the old man walks his dog . the sun sets .",
             "people wait for the bus . a car stops .", "a boy jumps into the lake . birds fly ."]
LONG_PARTS = ["a man rides a red bike . a dog runs .", "two girls sing on the stage . it rains .",
              "a woman reads a book in a park . kids play .", "the old man walks the dog . the sun sets .",
              "people wait for a bus . a car stops .", "a boy jumps in the lake . birds fly ."]
LONG_WHOLE = ["a man rides a bike . a dog runs .", "two girls sing . it rains .",
              "a woman reads a book in the park . kids play outside .", "the man walks his dog .",
              "people wait for the bus . a car stops .", "a boy jumps into the lake . a boy jumps ."]


def test_long_inputs_score_parts_and_whole_by_sacrebleus_statistics():
    """The per-input statistics add up to sacreBLEU's own corpus scores."""
    import sacrebleu
    long_inputs = long_inputs_script()
    scored = long_inputs.Scored(list(range(6)), LONG_PARTS, LONG_WHOLE, LONG_REFS)
    bleu = long_inputs.BLEU()
    for stats, hyps in ((scored.parts, LONG_PARTS), (scored.whole, LONG_WHOLE)):
        assert bleu._compute_score_from_stats(stats.sum(0)).score == pytest.approx(
            sacrebleu.corpus_bleu(hyps, [LONG_REFS]).score, abs=1e-9)


def test_long_inputs_drop_interval_is_a_paired_bootstrap(capsys):
    """Against a brute-force paired bootstrap through sacreBLEU's public corpus_bleu, on the same
    draws of inputs, for one seed and for the mean of two."""
    import numpy as np
    import sacrebleu
    long_inputs = long_inputs_script()
    other_whole = LONG_PARTS[:3] + LONG_WHOLE[3:]
    seeds = [long_inputs.Scored(list(range(6)), LONG_PARTS, whole, LONG_REFS) for whole in (LONG_WHOLE, other_whole)]
    draws = np.random.default_rng(7).integers(0, 6, size=(300, 6))

    def brute(wholes):
        drops = [sum(sacrebleu.corpus_bleu([LONG_PARTS[i] for i in d], [[LONG_REFS[i] for i in d]]).score
                     - sacrebleu.corpus_bleu([w[i] for i in d], [[LONG_REFS[i] for i in d]]).score for w in wholes)
                 / len(wholes) for d in draws]
        return tuple(np.percentile(drops, [2.5, 97.5]))

    assert long_inputs.drop_interval(seeds[:1], 300, seed=7) == pytest.approx(brute([LONG_WHOLE]), abs=1e-9)
    assert long_inputs.drop_interval(seeds, 300, seed=7) == pytest.approx(brute([LONG_WHOLE, other_whole]), abs=1e-9)
    low, high = long_inputs.drop_interval(seeds[:1], 300, seed=7)
    drop = sacrebleu.corpus_bleu(LONG_PARTS, [LONG_REFS]).score - sacrebleu.corpus_bleu(LONG_WHOLE, [LONG_REFS]).score
    assert low < drop < high and drop > 2  # the whole translations lose words on most inputs
    same = long_inputs.Scored(list(range(6)), LONG_PARTS, LONG_PARTS, LONG_REFS)
    assert long_inputs.drop_interval([same], 50) == (0.0, 0.0)
    # seeds that translated different inputs (a model skipped some) have no joint draw
    assert long_inputs.drop_interval([seeds[0], long_inputs.Scored([0, 1], LONG_PARTS[:2], LONG_WHOLE[:2],
                                                                    LONG_REFS[:2])]) is None
    assert long_inputs.interval_text(None) == "–" and long_inputs.interval_text((0.5, 1.25)) == "0.50..1.25"
    # one model's drop minus another's, on the same draws
    tail = [long_inputs.Scored(list(range(6)), LONG_PARTS, LONG_REFS, LONG_REFS)]  # whole = the references
    by_hand = [(sacrebleu.corpus_bleu([LONG_REFS[i] for i in d], [[LONG_REFS[i] for i in d]]).score
                - sacrebleu.corpus_bleu([LONG_WHOLE[i] for i in d], [[LONG_REFS[i] for i in d]]).score) for d in draws]
    assert long_inputs.drop_interval(seeds[:1], 300, seed=7, minus=tail) == pytest.approx(
        tuple(np.percentile(by_hand, [2.5, 97.5])), abs=1e-9)
    with pytest.raises(SystemExit):
        long_inputs.main(["--data", "d", "--model", "a=a.pt", "--resamples", "0"])
    assert "--resamples 0: expected 1 or more draws" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        long_inputs.main(["--data", "d", "--model", "a-s1=a.pt", "--model", "b=b.pt", "--versus", "a,c"])
    assert "--versus a,c: expected A,B, each a --model NAME or the NAME of NAME-sSEED models" in capsys.readouterr().err


def test_long_inputs_read_the_test_or_the_validation_sentences(tmp_path):
    long_inputs = long_inputs_script()
    (tmp_path / "raw").mkdir()
    (tmp_path / "test.raw.en").write_text("t1\nt2\n")
    (tmp_path / "raw" / "valid.en").write_text("v1\nv2\nv3\n")
    assert long_inputs.raw_lines(str(tmp_path), "test", "en") == ["t1", "t2"]
    assert long_inputs.raw_lines(str(tmp_path), "valid", "en") == ["v1", "v2", "v3"]


def test_long_inputs_give_each_model_its_own_search_options(tmp_path, monkeypatch):
    """--overrides and --generate-args reach fairseq-generate for the model they name, after the
    shared settings (so that they win), for its whole inputs and its parts alike."""
    long_inputs = long_inputs_script()
    commands = []

    def fake_run(command, stdout, **_):
        commands.append(command)
        stdout.write("D-0\t-0.5\tein Hund\n")
    monkeypatch.setattr(long_inputs.subprocess, "run", fake_run)
    hyps = long_inputs.translate("bin", "en", "de", "a.pt", str(tmp_path / "out.txt"), 16,
                                 overrides="{'model': {'x': 1}}", generate_args="--lenpen 1.5 --beam 8")
    assert hyps == {0: "ein Hund"}
    tail = commands[0][-6:]
    assert tail == ["--model-overrides", "{'model': {'x': 1}}", "--lenpen", "1.5", "--beam", "8"]
    assert commands[0].index("--beam") < len(commands[0]) - 2  # the shared --beam 4 comes first
    long_inputs.translate("bin", "en", "de", "b.pt", str(tmp_path / "out.txt"), 16)
    assert "--lenpen" not in commands[1] and "--model-overrides" not in commands[1]


def test_score_refuses_a_missing_hypothesis(tmp_path, capsys):
    (tmp_path / "ref").write_text("a b c d e\nd e f g h\ng h i j k\n")
    (tmp_path / "gen").write_text("D-2\t-0.1\tg h i j k\nD-0\t-0.2\ta b c d e\n")
    assert score.main([str(tmp_path / "gen"), "--ref", str(tmp_path / "ref")]) == 2
    assert "2 hypotheses for 3 references (missing ids [1]" in capsys.readouterr().err
    (tmp_path / "gen").write_text("D-2\t-0.1\tg h i j k\nD-0\t-0.2\ta b c d e\nD-1\t-0.3\td e f g h\n")
    assert score.main([str(tmp_path / "gen"), "--ref", str(tmp_path / "ref")]) == 0
    assert "BLEU = 100.00" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_averaging_is_the_mean(tiny_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    run_cli("fairseq-train", tiny_data_bin, "--user-dir", USER_DIR, *TINY, "--optimizer", "adam", "--lr", "1e-3",
            "--max-tokens", "400", "--max-update", "9", "--save-interval-updates", "3", "--cpu",
            "--save-dir", save, "--disable-validation", "--log-format", "simple")
    out = tmp_path / "avg.pt"
    assert average_checkpoints.main(["--inputs", str(save), "--num-update-checkpoints", "3", "--output", str(out)]) == 0

    states = [torch.load(next(save.glob(f"checkpoint_*_{u}.pt")), weights_only=False)["model"] for u in (3, 6, 9)]
    averaged = torch.load(out, weights_only=False)["model"]
    assert averaged.keys() == states[0].keys()
    for name, value in averaged.items():
        by_hand = (states[0][name] + states[1][name] + states[2][name]) / 3
        torch.testing.assert_close(value, by_hand, rtol=0, atol=1e-6)
    assert not torch.equal(states[0]["decoder.layers.0.token_mixing.weight"],
                           averaged["decoder.layers.0.token_mixing.weight"])
    gen = run_cli("fairseq-generate", tiny_data_bin, "--user-dir", USER_DIR, "--path", out, "--beam", "4",
                  "--gen-subset", "test", "--cpu")
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 13


@pytest.mark.slow
def test_averaging_different_architectures_is_refused(tiny_data_bin, tmp_path, capsys):
    paths = []
    for layers in ("1", "2"):
        save = tmp_path / f"ckpt{layers}"
        run_cli("fairseq-train", tiny_data_bin, "--user-dir", USER_DIR, *TINY, "--encoder-layers", layers,
                "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "400", "--max-update", "1", "--cpu",
                "--save-dir", save, "--disable-validation", "--no-epoch-checkpoints")
        paths.append(str(save / "checkpoint_last.pt"))
    assert average_checkpoints.main(["--inputs", *paths, "--output", str(tmp_path / "x.pt")]) == 2
    assert "different parameters" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config, dropout", [("resmlp_wmt_en_de", 0.15), ("resmlp_wmt_en_fr", 0.1)])
def test_hydra_configs_train_with_fairseq_hydra_train(tiny_data_bin, tmp_path, config, dropout):
    proc = run_cli("fairseq-hydra-train", "--config-dir", os.path.join(REPO, "examples/translation/config"),
                   "--config-name", config, f"task.data={tiny_data_bin}", "task.source_lang=src",
                   "task.target_lang=tgt", f"common.user_dir={USER_DIR}", "common.cpu=true",
                   "optimization.max_update=2", f"checkpoint.save_dir={tmp_path}", "model.encoder_layers=1",
                   "model.decoder_layers=1", "dataset.max_tokens=500", "dataset.disable_validation=true",
                   cwd=tmp_path)  # hydra writes its outputs/ into the working directory
    log = proc.stdout + proc.stderr
    assert "done training" in log
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)
    model = state["cfg"]["model"]
    assert (model["_name"], model["encoder_embed_dim"], model["layerscale_init"], model["dropout"]) == \
        ("resmlp", 512, 0.2, dropout)
    assert state["cfg"]["optimizer"]["_name"] == "adagrad" and state["cfg"]["lr_scheduler"]["warmup_updates"] == 32000
