"""The checkpoint tools misused as a new user would: each case ends in one error line, or works."""
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from helpers import USER_DIR, dictionary
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
