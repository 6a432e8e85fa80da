"""Small shims that make fairseq main (``ve-fairseq``) on torch >= 2.6 load, evaluate,
save and resume reliably.

They are applied when the plugin is imported (``--user-dir resmlp_mt``), and one INFO
line of the ``resmlp_mt.fairseq_compat`` logger names them (``SHIMS``, by the names in
brackets below). ``RESMLP_NO_SHIM=name1,name2`` turns those off, ``RESMLP_NO_SHIM=all``
every one, so that a problem can be reproduced on stock fairseq. A shim whose fix the
installed fairseq already has is skipped, and the log line says so. Most serve every
model run with the plugin loaded, fairseq's Transformer included (the README says why
each); ``epoch_batches``, which changes what a resumed run trains on, serves only runs
of the plugin's tasks or models (``is_plugin_run``).

1. Checkpoint loading [weights_only]. fairseq checkpoints are pickles (configs, meters, optimizer
   state), which torch >= 2.6's default ``weights_only=True`` loader refuses as soon as
   they hold anything but plain containers and tensors (e.g. the numpy arrays in the
   saved meters of an ``--eval-bleu`` run, or the ``argparse.Namespace`` of an older
   fairseq). fairseq's two loading paths (``checkpoint_utils`` for files,
   ``distributed.utils`` for a state broadcast from rank 0) get a ``torch`` whose
   ``load`` defaults to ``weights_only=False``. Nothing else in the process changes.
   fairseq 3d262bb and later pass ``weights_only=False`` themselves: a module whose
   loading function mentions ``weights_only`` is left alone (``_pickle_loaders``).
   Loading a pickle runs code from it: load only checkpoints you trust (see README,
   "Security"; ``resmlp_mt.safe_load`` reads tensors only).

2. No silently dropped evaluation sentences [last_batch]. fairseq main's ``batch_by_size``
   (commit d871f616) drops the last batch when its size is not a multiple of
   ``--required-batch-size-multiple``; ``fairseq-generate`` then skips up to 7
   sentences without a word. The batches are consecutive runs of ``indices``, so
   the dropped ones are exactly the tail; we give them back as a final batch
   (fairseq 0.12.2's behaviour, for training and evaluation alike).

3. Checkpoint writes survive a kill [atomic_save]. fairseq writes the first checkpoint file of a
   save atomically (``.tmp`` + rename) but then *copies* it to ``checkpoint_last.pt``
   (and ``checkpoint_best.pt``, ...) with ``shutil.copyfile``, which truncates the
   destination first: a job killed during that copy (pre-emption, OOM killer, Ctrl-C
   twice) leaves a truncated ``checkpoint_last.pt``, exactly the file the restart
   loads. ``checkpoint_utils`` gets a ``PathManager`` whose ``copy`` writes
   a temporary file in the same directory, fsyncs it and ``os.replace``s it over
   ``DST``, and whose ``rename`` (fairseq's own atomic write) fsyncs before renaming, so
   a checkpoint on disk is always a complete old one or a complete new one, also after
   a power loss. Temporary files are named ``NAME.PID-RANDOM.tmp`` (fairseq's own save
   used ``NAME.tmp``, shared by any two writers of ``NAME``), and one that an exception
   interrupts is removed. Remote (iopath) paths are left to fairseq.

4. An unreadable checkpoint names itself [corrupt_checkpoint]. ``torch.load`` on a truncated or corrupt
   file raises "PytorchStreamReader failed reading zip archive", "Ran out of input"
   or a pickle error that does not say which file. fairseq's checkpoint loading
   re-raises these as ``CorruptCheckpointError`` naming the file, its size and the
   other checkpoints in its directory to resume from (``--restore-file``). We do not
   fall back to an older checkpoint on our own: with (3) a corrupt file is no longer
   an expected outcome of a kill, so it deserves a look before training goes on.

5. A NaN/Inf gradient ends training with fairseq's own error [nan_detector]. On non-finite
   gradients (fp32, no ``--amp``) fairseq saves ``crash.pt``, re-runs the batch under
   its ``NanDetector`` to log the first module whose output is NaN/Inf, and re-raises
   ``FloatingPointError: gradients are Nan/Inf``. On torch 2 the detector's *non-full*
   backward hooks crash on any module that returns a dict of lists (every fairseq
   encoder, the Transformer's included) with a bare ``StopIteration``, which then
   replaces the real error. The trainer gets a ``NanDetector`` with forward hooks
   only: the diagnosis is complete (forward outputs, then the dump of non-finite
   gradient norms) and the error is ``FloatingPointError`` again.

6. Resuming in a later epoch trains on the same batches [epoch_batches]. fairseq main builds the
   training batches once per process, with the seed ``--seed + epoch`` of the epoch
   the process *starts* in, and reuses them in every later epoch (only their order is
   reshuffled per epoch). A fresh run therefore groups sentences into batches with
   ``seed + 1`` for its whole life, but a run resumed in epoch 3 regroups them with
   ``seed + 3``: same batch sizes, different sentences together, and the resumed run
   drifts from the uninterrupted one. When the iterator is the cached, reused kind
   (the default: no ``--update-epoch-batch-itr``, no sharded data, no per-epoch
   rebuilding), the batches are built as in epoch 1, so a resumed run sees the very
   batches of an uninterrupted one. Fresh runs are unchanged, and so are runs of
   fairseq's own models and tasks (a Transformer resumes as on stock fairseq).

7. A finished run exits with status 0 [prefetch_exit]. fairseq prefetches batches on a daemon thread
   (``BufferedIterator``'s ``BackgroundConsumer``, ``--data-buffer-size``). A run that
   stops mid-epoch (``--max-update``) leaves it working, and when the interpreter shuts
   down while that thread frees a tensor, torch's deallocator cannot take the GIL back,
   the thread is unwound through a ``noexcept`` destructor and the process dies with
   "terminate called without an active exception" (SIGABRT, exit 134) after saving
   everything: about one short run in 15 here, and any script that checks the exit
   status fails. At exit we tell live consumers to stop after the batch in hand,
   drain their queues and join them (at most ``PREFETCH_JOIN_TIMEOUT`` seconds).

8. One training run per ``--save-dir`` [save_dir_lock]. Two runs started with the same directory wrote
   the same checkpoint names: one crashed on a temporary file the other had renamed,
   the other logged "Saved checkpoint_1_5.pt" over a file holding the first run's
   weights. When a training run (its rank 0) builds its ``Trainer``, before it loads or
   saves a checkpoint, it takes an exclusive lock on ``SAVE_DIR/LOCK_NAME``, which
   records its PID and host, and holds it until the process ends; a second run stops
   with an error naming the directory and that PID. ``--no-save`` runs write nothing
   and take no lock. The lock is a POSIX record lock (``fcntl.lockf``): the kernel
   drops it when the process dies, however it dies, so a killed run never blocks its
   restart, and unlike ``flock`` it is not shared with the data-loader workers a run
   forks, which can outlive a killed parent by seconds. Holding it, the run removes the
   temporary files that killed runs left (3).

9-12. ``usage_errors`` (one ``error:`` line for misuse [one_line_errors]: ``--fp16``/
   ``--bf16`` on the CPU [precision_check], a checkpoint of another task or that does not
   fit [checkpoint_errors]) and ``interactive_lines`` (``fairseq-interactive`` reports an
   over-long line and translates the next ones [interactive_lines]).

13. ``replace_unk``: ``--replace-unk`` replaces unknown words instead of crashing at the
   first one, with or without ``--print-alignment`` and an alignment dictionary
   [replace_unk].

14. ``cpu_bf16``: ``--bf16`` on the CPU trains under bf16 autocast with fp32 weights and
   checkpoints, instead of needing torch_xla [cpu_bf16].
15. ``precision``: ``--inference-precision {fp32,bf16,int8}`` for fairseq-generate and
   fairseq-interactive, applied to every model in ``prepare_for_inference_`` (fairseq's
   ``--bf16`` selects bf16 there) [inference_precision].
"""
import atexit
import contextlib
import functools
import glob
import inspect
import logging
import os
import pickle
import queue
import re
import secrets
import shutil
import socket
import threading
import time
import types
import weakref

try:
    import fcntl
except ImportError:  # not POSIX: no lock (see shim 8)
    fcntl = None

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq import trainer as fairseq_trainer
from fairseq.data import data_utils, iterators
from fairseq.distributed import utils as distributed_utils
from fairseq.file_io import PathManager
from fairseq.nan_detector import NanDetector
from fairseq.tasks import FairseqTask

from . import cpu_bf16, interactive_lines, precision, replace_unk, usage_errors

logger = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that ``torch.load`` cannot read (truncated, empty, overwritten)."""


class _CheckpointTorch(types.ModuleType):
    """``torch`` as fairseq's checkpoint code sees it: ``load`` defaults to pickles (shim
    ``weights_only``) and names an unreadable file (shim ``corrupt_checkpoint``)."""

    def __init__(self):
        super().__init__("torch")
        self.pickles = False
        self.names_corrupt = False

    def __getattr__(self, name):
        return getattr(torch, name)

    def load(self, f, *args, **kwargs):
        if self.pickles:
            kwargs.setdefault("weights_only", False)
        if not self.names_corrupt:
            return torch.load(f, *args, **kwargs)
        try:
            return torch.load(f, *args, **kwargs)
        except (EOFError, RuntimeError, KeyError, pickle.UnpicklingError) as e:
            path = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
            refused = "Weights only load failed" in str(e)  # a pickle torch will not load, not a bad file
            if refused or not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
                raise  # or an in-memory buffer (rank 0's broadcast)
            raise CorruptCheckpointError(_corrupt_message(os.fspath(path), e)) from e


def _checkpoint_torch(module) -> _CheckpointTorch:
    """MODULE's ``torch``, made a ``_CheckpointTorch`` (with no shim on yet) if it is not one."""
    if not isinstance(module.torch, _CheckpointTorch):
        module.torch = _CheckpointTorch()
    return module.torch


def _corrupt_message(path: str, error: BaseException) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    others = sorted(
        (p for p in glob.glob(os.path.join(directory, "*.pt")) if not os.path.samefile(p, path)),
        key=os.path.getmtime,
        reverse=True,
    )
    hint = (
        "resume from another one with --restore-file, newest first: " + ", ".join(others)
        if others
        else "there is no other checkpoint in its directory"
    )
    return (
        f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes): it is truncated or corrupt "
        f"({type(error).__name__}: {str(error).split('. ')[0]}). Move it away "
        f"to start from scratch, or {hint}"
    )


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _AtomicPathManager(PathManager):
    """fairseq's ``PathManager`` as ``checkpoint_utils`` sees it: copies and renames are atomic."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)
        tmp = unique_tmp(dst_path)  # same directory, so os.replace cannot cross filesystems
        with _removed_on_error(tmp):
            shutil.copyfile(src_path, tmp)
            _AtomicPathManager.rename(tmp, dst_path)
        return True

    @staticmethod
    def rename(src: str, dst: str) -> None:
        _fsync(src)  # the data reach the disk before the new name does
        os.replace(src, dst)
        try:
            _fsync(os.path.dirname(os.path.abspath(dst)))  # and so does the new name
        except OSError:  # directories cannot be opened or fsynced on some systems
            pass

    resmlp_atomic = True


TMP_PATTERN = re.compile(r"\.(\d+)-[0-9a-f]+\.tmp$")


def unique_tmp(path: str) -> str:
    """A new, empty ``PATH.PID-RANDOM.tmp``, created here and by no one else."""
    while True:
        tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "xb"):
                return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def _removed_on_error(path: str):
    """An exception (Ctrl-C included) leaves no temporary file; only a kill does (see 8)."""
    try:
        yield path
    except BaseException:
        if os.path.exists(path):
            os.remove(path)
        raise


def _unique_tmp_save(torch_persistent_save):
    """fairseq's checkpoint save, writing a unique temporary file instead of ``NAME.tmp``."""

    @functools.wraps(torch_persistent_save)
    def wrapper(obj, filename, async_write: bool = False):
        if (async_write or not isinstance(filename, str) or PathManager.path_requires_pathmanager(filename)
                or not PathManager.supports_rename(filename)):
            return torch_persistent_save(obj, filename, async_write=async_write)
        tmp = unique_tmp(filename)
        with _removed_on_error(tmp):
            with open(tmp, "wb") as f:
                checkpoint_utils._torch_persistent_save(obj, f)  # fairseq's retries
            _AtomicPathManager.rename(tmp, filename)

    wrapper.resmlp_unique_tmp = True
    return wrapper


class SaveDirInUseError(usage_errors.UsageError):
    """Another live run holds the lock of this ``--save-dir``."""


LOCK_NAME = ".resmlp-train.lock"
_held_locks = {}  # real path of a save dir -> the open lock file, for the life of the process


def lock_save_dir(save_dir: str) -> None:
    """Take SAVE_DIR's lock for the rest of this process, or raise ``SaveDirInUseError``."""
    if fcntl is None or PathManager.path_requires_pathmanager(save_dir):
        return
    key = os.path.realpath(save_dir)
    if key in _held_locks:
        return
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, LOCK_NAME)
    f = open(path, "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "PID not written yet"
        f.close()  # our own descriptor: closing it releases no lock of ours
        raise SaveDirInUseError(
            f"--save-dir {save_dir} is in use by another training run ({holder}; it holds {path}): two runs "
            f"in one directory overwrite each other's checkpoints. Wait for that run to end, or give this "
            f"one another --save-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _held_locks[key] = f
    for name in os.listdir(save_dir):  # left by killed runs: no other run writes here now
        m = TMP_PATTERN.search(name)
        if m and int(m.group(1)) != os.getpid():
            try:
                os.remove(os.path.join(save_dir, name))
            except OSError:
                pass


def _locking_save_dir(trainer_init):
    """The trainer of ``fairseq-train``'s rank 0 takes the lock, unless it saves nothing."""

    @functools.wraps(trainer_init)
    def wrapper(self, cfg, *args, **kwargs):
        if distributed_utils.is_master(cfg.distributed_training) and not cfg.checkpoint.no_save:
            try:
                lock_save_dir(cfg.checkpoint.save_dir)
            except SaveDirInUseError:
                raise
            except OSError:  # not writable, or not a local path: fairseq's own code says so
                pass
        trainer_init(self, cfg, *args, **kwargs)

    wrapper.resmlp_locks_save_dir = True
    return wrapper


class _ForwardNanDetector(NanDetector):
    """fairseq's ``NanDetector`` without the backward hooks that crash on torch 2."""

    def __init__(self, model, forward=True, backward=True):
        super().__init__(model, forward=forward, backward=False)


def _keep_last_batch(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = batch_by_size(indices, *args, **kwargs)
        kept = sum(len(b) for b in batches)
        if kept < len(indices) and kwargs.get("fixed_shapes") is None:
            batches = list(batches) + [indices[kept:]]
        return batches

    wrapper.resmlp_keeps_last_batch = True
    return wrapper


def _batches_as_in_epoch_one(get_batch_iterator):
    signature = inspect.signature(get_batch_iterator)

    @functools.wraps(get_batch_iterator)
    def wrapper(self, *args, **kwargs):
        call = signature.bind(self, *args, **kwargs)
        call.apply_defaults()
        arg = call.arguments
        dataset, epoch = arg["dataset"], arg["epoch"]
        reused = (
            not arg["disable_iterator_cache"]
            and not arg["update_epoch_batch_itr"]
            and not getattr(getattr(self, "cfg", None), "rebuild_batches", False)
            and self.can_reuse_epoch_itr(dataset)
        )
        if epoch <= 1 or not reused or dataset in self.dataset_to_epoch_iter or not is_plugin_run(self):
            return get_batch_iterator(*call.args, **call.kwargs)
        arg["epoch"] = 1
        epoch_iter = get_batch_iterator(*call.args, **call.kwargs)
        epoch_iter.epoch = epoch
        dataset.set_epoch(epoch)
        return epoch_iter

    wrapper.resmlp_epoch_one_batches = True
    return wrapper


PREFETCH_JOIN_TIMEOUT = 30.0


def _stop_prefetch_threads(timeout: float = PREFETCH_JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if not isinstance(thread, iterators.BackgroundConsumer):
            continue
        thread._max_len = 0  # its loop stops after the next batch it queues
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:  # room for that batch and the end-of-data sentinel
                    thread._queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


_stop_prefetch_threads.resmlp_registered = False


# Which runs the training-side shims serve ---------------------------------------------

_plugin_tasks = weakref.WeakSet()  # tasks that built one of the plugin's models


def mark_plugin_task(task) -> None:
    """Called by the plugin's models when TASK builds them: TASK's run is a plugin run."""
    with contextlib.suppress(TypeError):  # not weak-referenceable: a test's stand-in
        _plugin_tasks.add(task)


def is_plugin_run(task) -> bool:
    """TASK is one of the plugin's, or built one of the plugin's models."""
    return type(task).__module__.startswith(__package__ + ".") or task in _plugin_tasks


# The shims, their names and switch ------------------------------------------------------

SWITCH = "RESMLP_NO_SHIM"  # RESMLP_NO_SHIM=name1,name2 turns those off; RESMLP_NO_SHIM=all, every one


def _source_has(function, text: str) -> bool:
    try:
        return text in inspect.getsource(function)
    except (OSError, TypeError):  # no source installed: assume the fix is not there
        return False


def _pickle_loaders():
    """fairseq's modules whose ``torch.load`` calls still need ``weights_only=False``:
    fairseq 3d262bb and later pass it themselves."""
    loaders = ((checkpoint_utils, checkpoint_utils.load_checkpoint_to_cpu),
               (distributed_utils, getattr(distributed_utils, "_broadcast_object_slow", None)))
    return [module for module, function in loaders if not _source_has(function, "weights_only")]


def _apply_weights_only() -> None:
    for module in _pickle_loaders():
        _checkpoint_torch(module).pickles = True


def _apply_corrupt_checkpoint() -> None:
    _checkpoint_torch(checkpoint_utils).names_corrupt = True


def _apply_last_batch() -> None:
    if not getattr(data_utils.batch_by_size, "resmlp_keeps_last_batch", False):
        data_utils.batch_by_size = _keep_last_batch(data_utils.batch_by_size)


def _apply_atomic_save() -> None:
    if not getattr(checkpoint_utils.PathManager, "resmlp_atomic", False):
        checkpoint_utils.PathManager = _AtomicPathManager
    if not getattr(checkpoint_utils.torch_persistent_save, "resmlp_unique_tmp", False):
        checkpoint_utils.torch_persistent_save = _unique_tmp_save(checkpoint_utils.torch_persistent_save)


def _apply_nan_detector() -> None:
    if not issubclass(fairseq_trainer.NanDetector, _ForwardNanDetector):
        fairseq_trainer.NanDetector = _ForwardNanDetector


def _apply_epoch_batches() -> None:
    if not getattr(FairseqTask.get_batch_iterator, "resmlp_epoch_one_batches", False):
        FairseqTask.get_batch_iterator = _batches_as_in_epoch_one(FairseqTask.get_batch_iterator)


def _apply_prefetch_exit() -> None:
    if not _stop_prefetch_threads.resmlp_registered:
        atexit.register(_stop_prefetch_threads)
        _stop_prefetch_threads.resmlp_registered = True


def _apply_save_dir_lock() -> None:
    if not getattr(fairseq_trainer.Trainer.__init__, "resmlp_locks_save_dir", False):
        fairseq_trainer.Trainer.__init__ = _locking_save_dir(fairseq_trainer.Trainer.__init__)


SHIMS = {  # name -> (apply, "the installed fairseq has the fix"); in the order of the docstring
    "weights_only": (_apply_weights_only, lambda: not _pickle_loaders()),
    "corrupt_checkpoint": (_apply_corrupt_checkpoint, None),
    "last_batch": (_apply_last_batch, None),
    "atomic_save": (_apply_atomic_save, None),
    "nan_detector": (_apply_nan_detector, None),
    "epoch_batches": (_apply_epoch_batches, None),
    "prefetch_exit": (_apply_prefetch_exit, None),
    "save_dir_lock": (_apply_save_dir_lock, None),
    "one_line_errors": (usage_errors.apply_one_line_errors, None),
    "precision_check": (usage_errors.apply_precision_check, None),
    "checkpoint_errors": (usage_errors.apply_checkpoint_errors, None),
    "interactive_lines": (interactive_lines.apply, None),
    "replace_unk": (replace_unk.apply, None),
    "cpu_bf16": (cpu_bf16.apply, None),  # after precision_check: its wrapper runs first
    "inference_precision": (precision.apply, None),
}


def switched_off() -> set:
    """The shims ``RESMLP_NO_SHIM`` names (``all``: every one); an unknown name is warned about."""
    names = {n.strip() for n in os.environ.get(SWITCH, "").split(",") if n.strip()}
    if "all" in names:
        return set(SHIMS)
    unknown = sorted(names - set(SHIMS))
    if unknown:
        logger.warning(f"{SWITCH}: no shim named {', '.join(unknown)}; the names are: all, {', '.join(SHIMS)}")
    return names & set(SHIMS)


_logged = []


def apply() -> dict:
    """Apply every shim that is not switched off nor fixed in the installed fairseq, and log
    which, once. Idempotent: safe to call on every import of the plugin. Returns
    {"active": [...], "off": [...], "upstream": [...]}, names in ``SHIMS`` order."""
    off = switched_off()
    report = {"active": [], "off": [], "upstream": []}
    for name, (apply_shim, fixed_upstream) in SHIMS.items():
        if name in off:
            report["off"].append(name)
        elif fixed_upstream is not None and fixed_upstream():
            report["upstream"].append(name)
        else:
            apply_shim()
            report["active"].append(name)
    if report not in _logged:
        _logged.append(report)
        logger.info(log_line(report))
    return report


def log_line(report: dict) -> str:
    """One line a bug report can quote: what the plugin changed in fairseq, and what not."""
    line = f"fairseq shims active: {', '.join(report['active']) or 'none'}"
    if report["off"]:
        line += f"; off ({SWITCH}): {', '.join(report['off'])}"
    if report["upstream"]:
        line += f"; skipped, the installed fairseq has the fix: {', '.join(report['upstream'])}"
    return line
