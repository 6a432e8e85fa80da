"""``fairseq-interactive``: an input line that is too long is reported, and the next ones
are translated.

fairseq filters a buffer of lines by ``max_positions`` before translating it. A line
longer than the model's limit (ResMLP's token-mixing matrices fix
``--max-source-positions``) made fairseq raise for the whole run, so every later line
went untranslated; with ``--skip-invalid-size-inputs-valid-test`` the line was dropped
and its ``S-``/``H-`` lines were simply missing. With the plugin loaded, such a line is
logged as a warning with its line number (and the id its ``S-``/``H-`` lines would have
had), its length and the limit, and translation goes on with the next line. The ids of
the other lines do not change.
"""
import functools
import logging
import sys

logger = logging.getLogger("resmlp_mt.interactive")


def _reporting_filter(task, first_line: int):
    """``task.filter_indices_by_size`` that drops over-long lines with a warning each."""

    def filter_indices_by_size(indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
        limit = max_positions[0] if isinstance(max_positions, (tuple, list)) else max_positions
        for i in sorted(int(i) for i in ignored):
            line = first_line + i
            logger.warning(
                f"input line {line + 1} (S-{line}) has {int(dataset.num_tokens(i))} tokens with EOS, more than the "
                f"model's limit of {limit} (--max-source-positions): it is not translated; going on with the next "
                f"lines (split it, or use a model trained with a larger limit)"
            )
        return indices

    return filter_indices_by_size


def _reporting_long_lines(make_batches):
    lines_read = [0]  # fairseq-interactive calls make_batches once per buffer, in input order

    @functools.wraps(make_batches)
    def wrapper(lines, cfg, task, max_positions, encode_fn):
        first_line = lines_read[0]
        lines_read[0] += len(lines)
        task.filter_indices_by_size = _reporting_filter(task, first_line)
        try:
            yield from make_batches(lines, cfg, task, max_positions, encode_fn)
        finally:
            del task.filter_indices_by_size  # the class's method again

    wrapper.resmlp_reports_long_lines = True
    return wrapper


def apply() -> None:
    """Patch ``fairseq-interactive`` if it is the program running (it imports the plugin
    while parsing its arguments, so its module is loaded by then); idempotent."""
    for name in ("fairseq_cli.interactive", "__main__"):
        module = sys.modules.get(name)
        spec = getattr(module, "__spec__", None)
        if module is None or (name == "__main__" and getattr(spec, "name", None) != "fairseq_cli.interactive"):
            continue
        if not getattr(module.make_batches, "resmlp_reports_long_lines", False):
            module.make_batches = _reporting_long_lines(module.make_batches)
