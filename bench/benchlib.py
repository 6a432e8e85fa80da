"""What every bench shares: options, thread pinning, interleaved timing, memory, reporting.

The machine may be shared, so contenders are never timed in separate phases:
``interleaved`` runs them A, B, A, B, ... and each result is a median over repeats,
so that background load falls on every contender alike.
"""
import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "resmlp_mt")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run on toy sizes")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeats", type=int, help="timed rounds per contender (median reported)")
    p.add_argument("--out", help="also write the results as JSON to this file")
    return p


def setup(args) -> None:
    """Pin threads, seed, and silence fairseq/hydra chatter so that stdout is the report."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def interleaved(contenders: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each contender, called in turn A, B, A, B, ... after ``warmup`` rounds.

    A contender that returns a number has timed itself (e.g. a CLI's own timer, which
    leaves out its start-up); that number is taken as its seconds.
    """
    for _ in range(warmup):
        for run in contenders.values():
            run()
    seconds = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            own = run()
            seconds[name].append(own if isinstance(own, float) else time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_speedup(seconds: Dict[str, List[float]], fast: str, slow: str) -> Tuple[float, float, float]:
    """Median and quartiles over rounds of slow/fast seconds (each pair ran back to back)."""
    q1, q2, q3 = statistics.quantiles([s / f for f, s in zip(seconds[fast], seconds[slow])], n=4, method="inclusive")
    return q2, q1, q3


def cycling(run: Callable[[object], object], items: Sequence) -> Callable[[], object]:
    """A contender that works on the next of ``items``, round robin, at each call."""
    it = itertools.cycle(items)
    return lambda: run(next(it))


def pass_seconds(seconds: List[float], items: int, warmup: int = 1) -> float:
    """Seconds of one pass over the items of a ``cycling`` contender: the sum of each item's median."""
    return sum(median([s for j, s in enumerate(seconds) if (j + warmup) % items == i]) for i in range(items))


def rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's resident-set high-water mark to the current RSS (Linux >= 4.0); return it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_kib("VmRSS")


def in_fresh_processes(script: str, argvs: List[List[str]], threads: int) -> List[dict]:
    """Run ``script argv`` for each argv, each in a new interpreter, as many at once as the cores
    hold at ``threads`` each (for memory figures, which concurrency does not change; all at once,
    eight WMT-size training runs outgrew a 24 GB machine); each prints one JSON line last."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    at_once = max(1, (os.cpu_count() or 1) // threads)
    results = []
    for first in range(0, len(argvs), at_once):
        group = argvs[first:first + at_once]
        procs = [subprocess.Popen([sys.executable, script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for argv in group]
        for argv, proc in zip(group, procs):
            out, err = proc.communicate()
            if proc.returncode != 0:
                how = (f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
                       if proc.returncode < 0 else f"exit status {proc.returncode}")
                raise RuntimeError(f"{script} {' '.join(argv)} failed, {how}:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def environment(threads: int) -> dict:
    import fairseq
    import timm

    gpu = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
        # the first visible GPU, the one the benches use; None without CUDA
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None,
        "gpus_visible": torch.cuda.device_count() if gpu else 0,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if gpu else None,
        "fairseq": fairseq.__version__,
        "timm": timm.__version__,
    }


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(
    tables: List[Tuple[str, List[str], List[list]]], ratios: List[str], env: dict, out: str = None, **extra
) -> None:
    """Print each (title, columns, rows) table, the ratio lines, and the machine and versions
    lines; optionally write everything as JSON to ``out``."""
    for title, columns, rows in tables:
        cells = [[fmt(c) for c in r] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]

        def line(values):
            return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

        print(f"== {title}")
        print(line(columns))
        print(line(["-" * w for w in widths]))
        for r in cells:
            print(line(r))
    for r in ratios:
        print(r)
    gpu = (f"; GPU: {env['gpu']}, {env['gpu_memory_gib']} GiB ({env['gpus_visible']} visible, the first used)"
           if env.get("gpu") else "")
    print(f"machine: {env['cpu']}, {env['cores']} cores, {env['threads']} torch threads, "
          f"1-min load average {env['load_average_1min']} at start{gpu}")
    cuda = f", CUDA {env['cuda']}" if env.get("cuda") else ""
    print(f"versions: python {env['python']}, torch {env['torch']}{cuda}, fairseq {env['fairseq']}, "
          f"timm {env['timm']}")
    if out:
        with open(out, "w") as f:
            json.dump({"environment": env, "tables": [{"title": t, "columns": c, "rows": r} for t, c, r in tables],
                       "ratios": ratios, **extra}, f, indent=1)


def ratio_line(what: str, value, target: str, better_high: bool = True) -> str:
    """``value``: a number, or a ``paired_speedup`` (median, q1, q3) whose quartiles are shown."""
    median_value, spread = (
        (value[0], f", quartiles {value[1]:.2f}-{value[2]:.2f}") if isinstance(value, tuple) else (value, "")
    )
    met = median_value >= float(target) if better_high else median_value <= float(target)
    return (f"ratio {what}: {median_value:.2f}x{spread} "
            f"(target {'>=' if better_high else '<='} {target}x: {'met' if met else 'NOT met'})")
