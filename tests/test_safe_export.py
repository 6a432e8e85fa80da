"""The tensors-only export and load of a translation checkpoint (resmlp_mt.safe_load):
exported, reloaded without unpickling anything, and equal to the original, with separate
and with shared embeddings; and why it is needed.
"""
import json
import pickle

import pytest
import torch
from fairseq import checkpoint_utils

from resmlp_mt import safe_load
from training_runs import max_abs_diff


def _outputs(model, vocab):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (3, 9), generator=g)
    src[0, :2] = model.encoder.padding_idx  # left padding, as fairseq batches it
    prev = torch.randint(4, vocab, (3, 6), generator=g)
    with torch.no_grad():
        return model(src, torch.tensor([7, 9, 9]), prev)[0]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["reference", "bleu_run"])  # separate and shared embeddings
def test_safe_export_reloads_to_identical_outputs(run, request, tmp_path, monkeypatch, capsys):
    save = request.getfixturevalue(run)
    checkpoint = save.last if run == "reference" else str(save.save / "checkpoint_last.pt")
    prefix = str(tmp_path / "export" / "model")
    safe_load.main([checkpoint, prefix])
    printed = capsys.readouterr().out.split()
    assert printed[:2] == [prefix + ".safetensors", prefix + ".json"]
    config = json.load(open(prefix + ".json"))
    assert config["arch"] == "resmlp_small" and config["model"]["max_source_positions"] == 16

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    original = models[0].eval()

    def refuse(*args, **kwargs):
        raise AssertionError("the safe path unpickled something")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    reloaded = safe_load.load_model(prefix)
    monkeypatch.undo()

    assert reloaded.state_dict().keys() == original.state_dict().keys()
    assert max_abs_diff(reloaded.state_dict(), original.state_dict()) == 0.0
    vocab = len(original.encoder.dictionary)
    assert torch.equal(_outputs(reloaded, vocab), _outputs(original, vocab))
    if run == "bleu_run":
        assert reloaded.decoder.output_projection.weight is reloaded.encoder.embed_tokens.weight


@pytest.mark.slow
def test_weights_only_torch_load_is_no_general_way_in(bleu_run, reference):
    """Why the safe path: a fairseq checkpoint is a pickle. torch's weights_only=True unpickler
    happens to accept a plain one (config, optimizer state and meters are dicts, lists, numbers and
    tensors), but refuses one trained with --eval-bleu, whose saved meters hold numpy arrays."""
    with pytest.raises(pickle.UnpicklingError, match="(?s)Weights only load failed.*numpy"):
        torch.load(bleu_run.save / "checkpoint_last.pt", weights_only=True)
    assert "model" in torch.load(reference.last, weights_only=True)
