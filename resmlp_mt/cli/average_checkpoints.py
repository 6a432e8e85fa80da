"""``resmlp-average-checkpoints``: average the parameters of several fairseq checkpoints.

fairseq's ``scripts/average_checkpoints.py`` is not part of the installed package.
This is the same operation as a console command: the model parameters are
averaged (in float64, then cast back); everything else (config, dictionary-free
metadata) is taken from the newest checkpoint. Optimizer state is dropped, so the
result is for evaluation, not for resuming.

Typical use, as in the paper's recipes (last 5 epoch checkpoints)::

    resmlp-average-checkpoints --inputs checkpoints/ --num-epoch-checkpoints 5 \\
        --output checkpoints/averaged.pt
"""
import argparse
import os
import re
import sys
from typing import List

from fairseq import checkpoint_utils

import resmlp_mt  # noqa: F401  (loads fairseq checkpoints on torch >= 2.6)
from resmlp_mt import checkpoint_file


def last_checkpoints(directory: str, n: int, pattern: str) -> List[str]:
    """The ``n`` checkpoints of ``directory`` with the highest number in ``pattern``."""
    regex = re.compile(pattern)
    found = []
    for name in os.listdir(directory):
        m = regex.fullmatch(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    if len(found) < n:
        raise FileNotFoundError(f"{directory}: found {len(found)} checkpoints matching {pattern}, need {n}")
    return [path for _, path in sorted(found, reverse=True)[:n]]


def average(paths: List[str]) -> dict:
    newest = None
    sums = {}
    for path in paths:
        state = checkpoint_file.load_fairseq(path)
        params = state["model"]
        if sums and params.keys() != sums.keys():
            raise ValueError(f"{path} has different parameters than {paths[0]}: not the same architecture")
        for name, value in params.items():
            if name in sums and value.shape != sums[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, "
                                 f"{paths[0]} has {tuple(sums[name].shape)}")
            sums[name] = sums.get(name, 0) + value.double()
        newest = newest or state
    newest["model"] = {name: (total / len(paths)).to(newest["model"][name].dtype) for name, total in sums.items()}
    newest["last_optimizer_state"] = None
    return newest


def refuse_output_among_inputs(output: str, paths: List[str]) -> None:
    """Writing the average over an input (checkpoint_last.pt, say) would lose its optimizer state and
    update count: a resume from it would start at update 0."""
    for path in paths:
        if os.path.realpath(path) == os.path.realpath(output) or (
                os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output)):
            raise ValueError(f"--output {output} is one of the checkpoints to average ({path}): writing the average "
                             "there would replace it (and its optimizer state); pass another --output")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", required=True, help="checkpoint files, or one directory")
    p.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int,
                       help="average the last N checkpointEPOCH.pt of the directory")
    group.add_argument("--num-update-checkpoints", type=int,
                       help="average the last N checkpoint_E_UPDATE.pt of the directory")
    args = p.parse_args(argv)

    paths = args.inputs
    if args.num_epoch_checkpoints or args.num_update_checkpoints:
        if len(paths) != 1 or not os.path.isdir(paths[0]):
            p.error("--num-*-checkpoints needs exactly one directory in --inputs")
    try:
        if args.num_epoch_checkpoints:
            paths = last_checkpoints(paths[0], args.num_epoch_checkpoints, r"checkpoint(\d+)\.pt")
        elif args.num_update_checkpoints:
            paths = last_checkpoints(paths[0], args.num_update_checkpoints, r"checkpoint_\d+_(\d+)\.pt")
        refuse_output_among_inputs(args.output, paths)
        state = average(paths)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoint_utils.torch_persistent_save(state, args.output)  # writes a temporary file, then renames
    print(f"averaged {len(paths)} checkpoints into {args.output}:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
