"""The checkpoint tools misused as a new user would: each case ends in one error line, or works."""
import json
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from helpers import USER_DIR, dictionary
from resmlp_mt import safe_load
from resmlp_mt.cli import average_checkpoints

TINY = ["--arch", "resmlp_small", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
        "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
        "--decoder-attention-heads", "2", "--max-source-positions", "16", "--max-target-positions", "16"]


def translation_checkpoint(directory, data="data-bin", name="checkpoint_last.pt", seed=0):
    """A checkpoint as fairseq-train writes one (config naming the relative data-bin DATA), built in-process
    from dictionaries alone. Returns its path; DIRECTORY/DATA holds dict.src.txt and dict.tgt.txt."""
    os.makedirs(os.path.join(directory, data), exist_ok=True)
    for lang, size in (("src", 30), ("tgt", 34)):
        dictionary(size).save(os.path.join(directory, data, f"dict.{lang}.txt"))
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", USER_DIR, "--task", "translation", "-s", "src", "-t", "tgt", *TINY,
        "--optimizer", "adam", "--lr", "1e-3"])
    cfg = convert_namespace_to_omegaconf(args)
    cfg.task.data = os.path.join(directory, data)
    torch.manual_seed(seed)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    cfg.task.data = data  # as fairseq-train run in DIRECTORY records it
    path = os.path.join(directory, name)
    checkpoint_utils.torch_persistent_save({
        "args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {},
                               "num_updates": 7}],
        "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": {"state": {}},
    }, path)
    return path


# ---------------------------------------------------------------------------------------- resmlp-export-safe


def test_export_from_another_directory_needs_data(tmp_path, monkeypatch, capsys):
    checkpoint = translation_checkpoint(str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)  # not where training ran: the config's relative "data-bin" is not here
    prefix = str(tmp_path / "export" / "model")
    assert safe_load.main([checkpoint, prefix]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after any warnings of hydra's, on its first use
    assert err.startswith("error: the data-bin data-bin (a relative path, read from the current directory")
    assert "pass --data DATA_BIN" in err
    assert not (tmp_path / "export").exists() or not os.listdir(tmp_path / "export")

    assert safe_load.main([checkpoint, prefix, "--data", str(tmp_path / "run" / "data-bin")]) == 0
    assert safe_load.load_model(prefix).encoder.embed_tokens.weight.shape == (30, 16)


def test_export_is_shareable(tmp_path, monkeypatch):
    """No absolute path of the exporting machine in the JSON; every file with an ordinary new file's mode."""
    checkpoint = translation_checkpoint(str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path / "run")
    prefix = str(tmp_path / "export" / "model")
    assert safe_load.main([checkpoint, prefix]) == 0
    config = json.load(open(prefix + ".json"))
    assert config["exported_from"] == "checkpoint_last.pt"
    assert str(tmp_path) not in open(prefix + ".json").read()
    umask = os.umask(0o022)
    try:
        assert safe_load.main([checkpoint, prefix]) == 0  # again, over the first export, under umask 022
    finally:
        os.umask(umask)
    files = sorted(os.listdir(tmp_path / "export"))
    assert files == ["model.dict.src.txt", "model.dict.tgt.txt", "model.json", "model.safetensors"]
    assert {oct(os.stat(tmp_path / "export" / f).st_mode & 0o777) for f in files} == {"0o644"}


def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("hello world\n")
    assert safe_load.main([str(tmp_path / "notes.pt"), str(tmp_path / "export" / "model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'notes.pt'} is not a fairseq checkpoint") and len(err.splitlines()) == 1
    assert not (tmp_path / "export").exists()


# ------------------------------------------------------------------------------- resmlp-average-checkpoints


@pytest.mark.parametrize("output", ["checkpoint_last.pt", "link.pt", "./run/../run/checkpoint_last.pt"])
def test_average_refuses_to_write_over_an_input(tmp_path, monkeypatch, capsys, output):
    run = tmp_path / "run"
    inputs = [translation_checkpoint(str(run), name=f"checkpoint_1_{n}.pt", seed=n) for n in (5, 10)]
    last = translation_checkpoint(str(run), seed=10)
    (run / "link.pt").symlink_to(last)
    monkeypatch.chdir(tmp_path)
    before = (run / "checkpoint_last.pt").read_bytes()
    output = output if output.startswith(".") else str(run / output)
    assert average_checkpoints.main(["--inputs", *inputs, last, "--output", output]) == 2
    err = capsys.readouterr().err
    assert f"--output {output} is one of the checkpoints to average" in err and "pass another --output" in err
    assert (run / "checkpoint_last.pt").read_bytes() == before
    assert torch.load(last, weights_only=False)["optimizer_history"][-1]["num_updates"] == 7

    # With the directory and --num-update-checkpoints, the selected checkpoints are the inputs.
    assert average_checkpoints.main(["--inputs", str(run), "--num-update-checkpoints", "2",
                                     "--output", inputs[1]]) == 2
    assert f"is one of the checkpoints to average ({inputs[1]})" in capsys.readouterr().err
    assert average_checkpoints.main(["--inputs", *inputs, "--output", str(run / "avg.pt")]) == 0
