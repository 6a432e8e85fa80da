"""Checkpoint arguments of the command-line tools, checked before anything unpickles them.

Handed a text file, random bytes or another program's file, ``torch.load`` answers
"invalid load key", "Memo value not found" or a KeyError, and the pickle module would
run over arbitrary bytes. The tools look at the first bytes first: ``torch.save``
writes a zip archive holding ``data.pkl`` (before torch 1.6, a pickle that starts with
torch's magic number), and a safetensors file starts with its header's length and a
JSON object. Anything else is refused with one line that names the file.
"""
import json
import os
import struct
import zipfile

LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickle protocol 2 of torch's magic number


class NotACheckpointError(ValueError):
    """A file a tool needs as a checkpoint that is not one (or that is damaged)."""


def file_kind(path: str) -> str:
    """"torch", "safetensors" or "" (neither), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(LEGACY_TORCH_MAGIC[:8]):
            return "torch"
        if len(head) == 8:
            (size,) = struct.unpack("<Q", head)
            if 2 <= size <= os.path.getsize(path) - 8:
                try:
                    json.loads(f.read(size))
                    return "safetensors"
                except ValueError:
                    pass
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                if any(name.endswith("data.pkl") for name in z.namelist()):
                    return "torch"
        except (zipfile.BadZipFile, OSError):
            pass
    return ""


def _describe(path: str) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(40)
    try:
        text = head.decode("utf-8")
        shown = f", starts with the text {text.splitlines()[0][:30]!r}" if text.strip() else ""
    except UnicodeDecodeError:
        shown = ""
    return f"{size} bytes{shown}"


def require(path: str, what: str = "a fairseq checkpoint", safetensors: bool = False) -> str:
    """``path`` if it exists and its first bytes are a torch (or safetensors) file; else NotACheckpointError."""
    if not os.path.exists(path):
        raise NotACheckpointError(f"{path} does not exist")
    if not os.path.isfile(path):
        raise NotACheckpointError(f"{path} is not a file: pass {what}")
    kind = file_kind(path)
    if kind == "torch" or (kind == "safetensors" and safetensors):
        return kind
    formats = "a torch.save zip archive" + (" or a safetensors file" if safetensors else "")
    found = "a safetensors file" if kind == "safetensors" else f"not {formats}"
    raise NotACheckpointError(f"{path} is not {what}: it is {found} ({_describe(path)}); pass {what}")


def load_fairseq(path: str, what: str = "a fairseq checkpoint") -> dict:
    """fairseq's ``load_checkpoint_to_cpu`` (a pickle: trusted input only) behind the checks above."""
    from fairseq import checkpoint_utils

    require(path, what)
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as e:  # a damaged archive, or a torch file fairseq cannot upgrade (no "args"/"cfg")
        cause = e.__cause__ or e  # CorruptCheckpointError's advice is about resuming training
        if isinstance(cause, KeyError):  # a torch file of tensors: fairseq's upgrade code looks for its fields
            raise NotACheckpointError(f"{path} is a torch file but not {what} (it has no {cause} entry: "
                                      "fairseq-train did not write it)") from e
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        raise NotACheckpointError(f"cannot read {path} as {what} ({os.path.getsize(path)} bytes): {reason}") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise NotACheckpointError(f"{path} is a torch file but not {what} (it has no 'model' state dict)")
    return state
