"""Test-only wrapper around fairseq-train and fairseq-generate:

    python tests/scripts/train_hooks.py train|generate ARGS...

It runs the console tool with ARGS unchanged, after patching two things (driven by
environment variables, see below): torch.save and shutil.copyfile of *.pt files write in
two halves, so that a test can stall a checkpoint write half-way (and SIGKILL the process
there) or slow every write down; and TranslationTask._inference_with_bleu records the
sample ids of each --eval-bleu batch. Used through the ``hooks`` fixture (tests/conftest.py).
"""
import io
import os
import re
import shutil
import sys
import time

tool = sys.argv.pop(1)
if tool == "train":  # first, so that fairseq_cli sets up logging as the console tool does
    from fairseq_cli.train import cli_main
else:
    from fairseq_cli.generate import cli_main
import torch  # noqa: E402

STALL = os.environ.get("RESMLP_STALL", "")  # "save:NAME" or "copy:SRC:DST", checkpoint basenames
MARKER = os.environ.get("RESMLP_STALL_MARKER")
SLOW = float(os.environ.get("RESMLP_SLOW_WRITES", "0"))  # pause half-way through every write
COUNT = os.environ.get("RESMLP_COUNT_BLEU")  # file: one line of sample ids per --eval-bleu batch


def target(path):  # the checkpoint a temporary file is for: NAME.tmp (fairseq), NAME.PID-RANDOM.tmp (plugin)
    return re.sub(r"(\.\d+-[0-9a-f]+)?\.tmp$", "", os.path.basename(str(path)))


def write_in_halves(data, f, stall):
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    if stall:
        open(MARKER, "w").close()
        time.sleep(3600)  # the test kills us here
    time.sleep(SLOW)
    f.write(data[len(data) // 2:])


_copyfile = shutil.copyfile


def copyfile(src, dst, *args, **kwargs):  # fairseq's copies, and the plugin's
    if ".pt" not in str(dst):
        return _copyfile(src, dst, *args, **kwargs)
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        write_in_halves(data, f, STALL == f"copy:{os.path.basename(str(src))}:{target(dst)}")
    return dst


_save = torch.save


def save(obj, f, *args, **kwargs):  # fairseq's torch_persistent_save writes NAME.tmp
    name = getattr(f, "name", None)
    if not isinstance(name, str) or ".pt" not in name:
        return _save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    write_in_halves(buf.getvalue(), f, STALL == "save:" + target(name))


shutil.copyfile = copyfile
torch.save = save
if COUNT:
    from fairseq.tasks.translation import TranslationTask

    _inference = TranslationTask._inference_with_bleu

    def counted(self, generator, sample, model):
        bleu = _inference(self, generator, sample, model)
        with open(COUNT, "a") as out:
            out.write(" ".join(map(str, sample["id"].tolist())) + "\n")
        return bleu

    TranslationTask._inference_with_bleu = counted

cli_main()
