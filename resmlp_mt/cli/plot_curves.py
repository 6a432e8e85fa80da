"""``resmlp-plot-curves``: the validation curves of several runs in one PNG, from their TensorBoard logs.

The comparisons here (ResMLP against the Transformer, one setting against another) give
every run the same wall-clock budget, so the left panel puts validation loss against
minutes and the right one against updates: a model can win by learning more per update or
by making more updates. Minutes count from the run's first logged scalar (its first
``--log-interval`` updates are before it), from the event times TensorBoard stores. One
line per run directory (a model and a seed); the legend carries the run's final BLEU when
its ``bleu.txt`` (``resmlp-score``'s output, as ``train_eval.sh`` writes it) has one.

    resmlp-plot-curves runs/compare-en-de/resmlp_small runs/compare-en-de/transformer --output cmp.png

A RUN_DIR holds one run's ``--tensorboard-logdir`` (``train_inner/``, ``valid/``, ... with
event files): as ``RUN_DIR/tensorboard`` (``train_eval.sh``'s layout, which moves an earlier
run's logs aside to ``tensorboard.DATE``), else anywhere below. Directories without event
files (a ``data/`` matched by a glob) are skipped with a note.
"""
import argparse
import glob
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

_BLEU = re.compile(r"^BLEU = ([\d.]+) ", re.M)


class CurveError(ValueError):
    pass


@dataclass
class Series:
    """One run's ``subset/metric`` scalars: ``minutes[i]`` after its first event, at update ``steps[i]``."""

    run: str
    label: str
    steps: List[int]
    minutes: List[float]
    values: List[float]
    bleu: Optional[float]


def log_dirs(run_dir: str) -> Dict[str, str]:
    """``{subset: directory}`` of the TensorBoard event files under ``run_dir`` (fairseq writes one
    directory per subset: ``train_inner``, ``train``, ``valid``...)."""
    found: Dict[str, List[str]] = {}
    if os.path.isdir(os.path.join(run_dir, "tensorboard")):
        run_dir = os.path.join(run_dir, "tensorboard")
    for event_file in glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True):
        directory = os.path.dirname(event_file)
        subset = os.path.basename(directory)
        if directory not in found.setdefault(subset, []):
            found[subset].append(directory)
    for subset, directories in found.items():
        if len(directories) > 1:
            raise CurveError(f"{run_dir} holds the '{subset}' logs of several runs ({', '.join(sorted(directories))}): "
                             "pass each run's directory")
    return {subset: directories[0] for subset, directories in found.items()}


def _scalars(directory: str):
    # imported here: tensorboard is slow to import, and --help should not wait for it
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(directory, size_guidance={SCALARS: 0})  # 0: every event, no sampling
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def final_bleu(run_dir: str) -> Optional[float]:
    """The BLEU in ``run_dir/bleu.txt`` (the line ``BLEU = 35.32 ...`` that resmlp-score prints), if any."""
    path = os.path.join(run_dir, "bleu.txt")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        m = _BLEU.search(f.read())
    return float(m.group(1)) if m else None


def read_series(run_dir: str, metric: str = "loss", subset: str = "valid", label: Optional[str] = None) -> Series:
    """The ``subset/metric`` curve of one run, with wall-clock minutes since the run's first scalar event."""
    dirs = log_dirs(run_dir)
    if subset not in dirs:
        raise CurveError(f"{run_dir}: no TensorBoard logs for the subset '{subset}' (--subset); it has "
                         f"{', '.join(sorted(dirs)) or 'none'}")
    logs = {name: _scalars(directory) for name, directory in dirs.items()}
    if metric not in logs[subset]:
        raise CurveError(f"{dirs[subset]}: no scalar '{metric}' (--metric); it has {', '.join(sorted(logs[subset]))}")
    start = min(e.wall_time for scalars in logs.values() for events in scalars.values() for e in events)
    events = logs[subset][metric]
    return Series(run=run_dir, label=label or os.path.basename(os.path.normpath(run_dir)),
                  steps=[e.step for e in events], minutes=[(e.wall_time - start) / 60 for e in events],
                  values=[e.value for e in events], bleu=final_bleu(run_dir))


def labels(run_dirs: Sequence[str]) -> List[str]:
    """Each run's path below the runs' common parent: ``resmlp_small``, or ``seed1/resmlp_small``."""
    paths = [os.path.normpath(os.path.abspath(d)) for d in run_dirs]
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    common = os.path.commonpath(paths)
    return [os.path.relpath(p, common) if p != common else os.path.basename(p) for p in paths]


def plot(series: Sequence[Series], output: str, metric: str = "loss", subset: str = "valid", title: str = ""):
    """Two panels (against minutes, against updates), one line per run; writes ``output``, returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    by_time, by_update = fig.subplots(1, 2, sharey=True)
    for s in series:
        label = s.label if s.bleu is None else f"{s.label} (BLEU {s.bleu:.2f})"
        line, = by_time.plot(s.minutes, s.values, marker=".", label=label)
        by_update.plot(s.steps, s.values, marker=".", color=line.get_color())
    by_time.set_xlabel("wall-clock minutes")
    by_update.set_xlabel("updates")
    by_time.set_ylabel(f"{subset} {metric}")
    for ax in (by_time, by_update):
        ax.grid(alpha=0.3)
    by_time.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(output, dpi=110)
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one directory per run (model and seed)")
    p.add_argument("--output", "-o", required=True, help="the PNG to write")
    p.add_argument("--metric", default="loss", help="the scalar to plot: loss (default), nll_loss, bleu, accuracy...")
    p.add_argument("--subset", default="valid", help="the validation subset's name (--valid-subset; default valid)")
    p.add_argument("--title", default="", help="a title above both panels")
    args = p.parse_args(argv)
    for noisy in ("matplotlib", "tensorboard"):  # fairseq's logging setup lets their debug lines out
        logging.getLogger(noisy).setLevel(logging.WARNING)

    runs = []
    for run_dir in args.run_dirs:
        if not os.path.isdir(run_dir):
            print(f"error: {run_dir}: no such directory", file=sys.stderr)
            return 2
        if not glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True):
            print(f"note: {run_dir}: no TensorBoard event files, skipped", file=sys.stderr)
            continue
        runs.append(run_dir)
    if not runs:
        print("error: none of the directories holds TensorBoard event files (fairseq-train --tensorboard-logdir)",
              file=sys.stderr)
        return 2
    try:
        series = [read_series(r, args.metric, args.subset, label) for r, label in zip(runs, labels(runs))]
    except CurveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot(series, args.output, args.metric, args.subset, args.title)
    print(f"wrote {args.output}: {args.subset} {args.metric} of {len(series)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
