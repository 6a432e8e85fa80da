"""``--replace-unk`` (fairseq-generate, fairseq-interactive) replaces unknown words again.

It copies into each ``<unk>`` of a hypothesis the source word aligned with it, or that
word's entry in an alignment dictionary (``--replace-unk FILE``). On fairseq main it
crashed at the first ``<unk>`` for every model, fairseq's Transformer included, in
three places:

1. ``--replace-unk`` without a file took the option's constant, ``"@@ "``, for the name
   of the dictionary file (FileNotFoundError). Without a file it now copies the source
   word, as its help says ("optionally with alignment dictionary").
2. Without ``--print-alignment`` the generator gave no alignment (an empty tensor) and
   the replacement indexed it (IndexError). ``--replace-unk`` now gets fairseq's
   alignment generator (``SequenceGeneratorWithAlignment``, hard alignments) by itself;
   nothing more is printed.
3. With ``--print-alignment`` the alignment is a list of (source word, target word)
   pairs (soft: a row of source probabilities per target token), which the replacement
   indexed as if it held a source position per target word (TypeError). Both kinds are
   now read as what they are; a tensor of positions, the older kind, goes to fairseq's
   own ``replace_unk``.

Positions are words of the text fairseq has at hand (with ``--dataset-impl raw``, the
raw source line), so the replacement is right for word-level vocabularies, as it was in
fairseq; with BPE or sentencepiece, target positions count pieces.
"""
import functools
import inspect
import os

from fairseq import utils
from fairseq.tasks import FairseqTask

NO_FILE = "@@ "  # what fairseq's --replace-unk takes when given without a value


def _aligned_words(alignment):
    """{target word: source word} from a hard alignment (pairs) or a soft one (rows of
    probabilities, the source's EOS last), else None (not one of these kinds)."""
    if not isinstance(alignment, list):
        return None
    if all(isinstance(a, tuple) and len(a) == 2 for a in alignment):
        return {int(t): int(s) for s, t in alignment}
    if all(isinstance(row, list) for row in alignment):
        return {t: max(range(len(row) - 1), key=lambda s: float(row[s]))
                for t, row in enumerate(alignment) if len(row) > 1}
    return None


def _reading_alignments(replace_unk):
    @functools.wraps(replace_unk)
    def wrapper(hypo_str, src_str, alignment, align_dict, unk):
        aligned = _aligned_words(alignment)
        if aligned is None and not (hasattr(alignment, "numel") and alignment.numel() == 0):
            return replace_unk(hypo_str, src_str, alignment, align_dict, unk)
        aligned = aligned or {}
        source, words = src_str.split(), hypo_str.split()
        for t, word in enumerate(words):
            s = aligned.get(t)
            if word == unk and s is not None and s < len(source):
                words[t] = align_dict.get(source[s], source[s])
        return " ".join(words)

    wrapper.resmlp_reads_alignments = True
    return wrapper


def _copying_without_a_file(load_align_dict):
    @functools.wraps(load_align_dict)
    def wrapper(replace_unk):
        if replace_unk == NO_FILE and not os.path.exists(replace_unk):
            return {}
        return load_align_dict(replace_unk)

    wrapper.resmlp_copies_without_a_file = True
    return wrapper


def _aligning_for_replace_unk(build_generator):
    signature = inspect.signature(build_generator)

    @functools.wraps(build_generator)
    def wrapper(self, *args, **kwargs):
        call = signature.bind(self, *args, **kwargs)
        arg = call.arguments
        gen = arg["args"]
        if (
            arg.get("seq_gen_cls") is None
            and getattr(gen, "replace_unk", None) is not None
            and not getattr(gen, "print_alignment", None)
            and not getattr(gen, "score_reference", False)
        ):
            from fairseq.sequence_generator import SequenceGeneratorWithAlignment

            arg["seq_gen_cls"] = SequenceGeneratorWithAlignment
            arg["extra_gen_cls_kwargs"] = {**(arg.get("extra_gen_cls_kwargs") or {}), "print_alignment": "hard"}
        return build_generator(*call.args, **call.kwargs)

    wrapper.resmlp_aligns_for_replace_unk = True
    return wrapper


def wanted(generation_cfg) -> bool:
    """Whether a generation config asks for alignments: ``--print-alignment``, or
    ``--replace-unk``, which reads them."""
    return bool(getattr(generation_cfg, "print_alignment", None)) or (
        getattr(generation_cfg, "replace_unk", None) is not None
    )


def apply() -> None:
    """Idempotent."""
    if not getattr(utils.replace_unk, "resmlp_reads_alignments", False):
        utils.replace_unk = _reading_alignments(utils.replace_unk)
    if not getattr(utils.load_align_dict, "resmlp_copies_without_a_file", False):
        utils.load_align_dict = _copying_without_a_file(utils.load_align_dict)
    if not getattr(FairseqTask.build_generator, "resmlp_aligns_for_replace_unk", False):
        FairseqTask.build_generator = _aligning_for_replace_unk(FairseqTask.build_generator)
