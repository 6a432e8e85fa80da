"""A misused command ends with one ``error:`` line that says what to do.

fairseq reports many mistakes with a long traceback whose last line is a symptom, not
the cause: ``Found no NVIDIA driver`` for ``--fp16 --cpu``, ``'NoneType' object has no
attribute 'xla_device'`` for ``--bf16 --cpu``, ``ConfigAttributeError: Key 'img_size'``
for an image checkpoint given to ``fairseq-generate``, "please ensure that the
architectures match" printed after (so below) the plugin's own explanation of a
checkpoint that does not fit. The plugin raises ``UsageError`` instead, naming the file,
flag or limit and what to do, and prints an uncaught one as that single line, also when
fairseq wrapped it in an exception of its own (``RESMLP_TRACEBACK=1`` prints the
traceback above it). Any other exception keeps Python's traceback.
"""
import functools
import os
import sys
from typing import Optional

import torch
from fairseq import checkpoint_utils
from fairseq.tasks import TASK_REGISTRY
from fairseq.trainer import Trainer


class UsageError(ValueError):
    """A command line or file that cannot work; the message names it and says what to do."""


class CheckpointMismatchError(UsageError):
    """A checkpoint whose shapes do not fit the model the command line builds."""


def usage_error_in(error: Optional[BaseException]) -> Optional[UsageError]:
    """The outermost ``UsageError`` in ``error``'s chain of causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UsageError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _one_line_hook(previous):
    def hook(kind, value, tb):
        error = usage_error_in(value)
        if error is None or os.environ.get("RESMLP_TRACEBACK"):
            previous(kind, value, tb)
        if error is not None:
            sys.stderr.write(f"error: {error}\n")
            sys.stderr.flush()

    hook.resmlp_one_line = True
    return hook


# --fp16 / --bf16 without a GPU ----------------------------------------------------------


def _xla_available() -> bool:
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


def check_precision_device(cfg) -> None:
    """fairseq's trainer runs fp16 only on a GPU, and bf16 only on a TPU (fairseq main makes
    ``--bf16`` imply ``--tpu``, so this run would need torch_xla); either fails on the CPU."""
    common = cfg.common
    if common.cpu:
        where = "--cpu"
    elif torch.cuda.is_available() or (common.tpu and _xla_available()):
        return
    else:
        where = "no CUDA GPU is visible"
    if common.fp16:
        raise UsageError(f"--fp16 needs a CUDA GPU and this run has none ({where}): drop --fp16 to train in "
                         f"fp32 on the CPU")
    if common.bf16:
        raise UsageError(f"--bf16 is not supported on the CPU by fairseq's trainer yet ({where}): drop --bf16 "
                         f"to train in fp32 on the CPU")  # unless the cpu_bf16 shim took the run over


def _checking_precision(init):
    @functools.wraps(init)
    def wrapper(self, cfg, *args, **kwargs):
        check_precision_device(cfg)
        init(self, cfg, *args, **kwargs)

    wrapper.resmlp_checks_precision = True
    return wrapper


# A checkpoint of another task, or one that does not fit ---------------------------------


def _task_name(task) -> Optional[str]:
    name = getattr(getattr(task, "cfg", None), "_name", None)
    return name or next((n for n, cls in TASK_REGISTRY.items() if cls is type(task)), None)


def _saved_task_and_arch(filename: str):
    """(task, arch) a checkpoint was trained with; (None, None) if it cannot say."""
    try:
        cfg = checkpoint_utils.load_checkpoint_to_cpu(filename)["cfg"]
        return cfg["task"]["_name"], cfg["model"].get("arch", cfg["model"].get("_name"))
    except Exception:
        return None, None


def wrong_task_error(filename: str, wanted: Optional[str]) -> Optional[UsageError]:
    """A ``UsageError`` when FILENAME was trained for another task than ``wanted``."""
    saved, arch = _saved_task_and_arch(filename) if wanted else (None, None)
    if saved is None or saved == wanted:
        return None
    if saved == "image_classification":
        todo = (f"evaluate it with fairseq-validate IMAGE_DATA --task image_classification --path {filename}; "
                f"translation needs a translation checkpoint")
    else:
        todo = f"use it with --task {saved} and that task's data"
    return UsageError(f"{filename} was trained with --task {saved} (--arch {arch}), not {wanted}: {todo}")


def _naming_wrong_task(load_ensemble):
    """fairseq-generate/-interactive pass their task; fairseq-validate names it in the overrides."""

    @functools.wraps(load_ensemble)
    def wrapper(filenames, arg_overrides=None, task=None, *args, **kwargs):
        try:
            return load_ensemble(filenames, arg_overrides, task, *args, **kwargs)
        except Exception as e:
            if usage_error_in(e) is not None:
                raise
            wanted = _task_name(task) if task is not None else (arg_overrides or {}).get("task")
            for filename in filenames:
                error = wrong_task_error(filename, wanted)
                if error is not None:
                    raise error from e
            raise

    wrapper.resmlp_names_wrong_task = True
    return wrapper


def _naming_unfit_checkpoint(load_checkpoint):
    """``--restore-file`` / ``checkpoint_last.pt``: fairseq wraps any error in "Cannot load model
    parameters from checkpoint FILE; please ensure that the architectures match", which buries
    the cause (a CheckpointMismatchError) or names none (a checkpoint of another task)."""

    @functools.wraps(load_checkpoint)
    def wrapper(self, filename, *args, **kwargs):
        try:
            return load_checkpoint(self, filename, *args, **kwargs)
        except Exception as e:
            cause = usage_error_in(e)
            if cause is None:
                error = wrong_task_error(filename, _task_name(self.task))
                if error is None:
                    raise
                raise error from e
            if filename in str(cause):
                raise  # the one-line hook finds it in the chain
            raise UsageError(f"cannot load {filename}: {cause}") from e

    wrapper.resmlp_names_unfit_checkpoint = True
    return wrapper


def apply_one_line_errors() -> None:
    """Shim ``one_line_errors``: an uncaught ``UsageError`` prints as one line. Idempotent."""
    if not getattr(sys.excepthook, "resmlp_one_line", False):
        sys.excepthook = _one_line_hook(sys.excepthook)


def apply_precision_check() -> None:
    """Shim ``precision_check``: the trainer refuses --fp16/--bf16 without a GPU. Idempotent."""
    if not getattr(Trainer.__init__, "resmlp_checks_precision", False):
        Trainer.__init__ = _checking_precision(Trainer.__init__)


def apply_checkpoint_errors() -> None:
    """Shim ``checkpoint_errors``: a checkpoint of another task, or that does not fit, says so.
    Idempotent."""
    if not getattr(Trainer.load_checkpoint, "resmlp_names_unfit_checkpoint", False):
        Trainer.load_checkpoint = _naming_unfit_checkpoint(Trainer.load_checkpoint)
    if not getattr(checkpoint_utils.load_model_ensemble_and_task, "resmlp_names_wrong_task", False):
        checkpoint_utils.load_model_ensemble_and_task = _naming_wrong_task(
            checkpoint_utils.load_model_ensemble_and_task)
