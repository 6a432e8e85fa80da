"""The table of compare_transformer.sh: each model's test BLEU over seeds, speed and size.

    python compare_table.py WORK --models resmlp_relative transformer --seeds 1 2

reads WORK/MODEL-sSEED/{train.log, bleu.txt, generate-test.log} (train_eval.sh's outputs).
"""
import argparse
import re
import statistics


def run_figures(run: str) -> dict:
    log = open(f"{run}/train.log").read()
    bleu = float(re.search(r"^BLEU = ([\d.]+)", open(f"{run}/bleu.txt").read(), re.M).group(1))
    params = int(re.search(r"num\. shared model params: ([\d,]+)", log).group(1).replace(",", ""))
    # each epoch's wps, weighted by its training time (the last epoch is usually a short one)
    epochs = [(float(w), float(t))
              for w, t in re.findall(r"\| train \| epoch .*?\| wps ([\d.]+) .*?\| train_wall ([\d.]+)", log)]
    wps = sum(w * t for w, t in epochs) / max(sum(t for _, t in epochs), 1e-9)
    updates = int(re.findall(r"num_updates[ =](\d+)", log)[-1])
    gen = float(re.search(r"\(([\d.]+) sentences/s", open(f"{run}/generate-test.log").read()).group(1))
    return {"bleu": bleu, "params": params, "wps": wps, "updates": updates, "gen": gen}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", required=True)
    args = p.parse_args(argv)
    print(f"\n{'model':<20} {'BLEU':>6} {'per seed':>14} {'train tok/s':>12} {'updates':>8} "
          f"{'gen sent/s':>11} {'params':>12}")
    for model in args.models:
        runs = [run_figures(f"{args.work}/{model}-s{seed}") for seed in args.seeds]
        mean = lambda key: statistics.mean(r[key] for r in runs)  # noqa: E731
        per_seed = "/".join(f"{r['bleu']:.2f}" for r in runs)
        print(f"{model:<20} {mean('bleu'):>6.2f} {per_seed:>14} {mean('wps'):>12.0f} {mean('updates'):>8.0f} "
              f"{mean('gen'):>11.1f} {runs[0]['params']:>12,}")


if __name__ == "__main__":
    main()
