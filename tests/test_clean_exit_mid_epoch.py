"""A run that --max-update stops mid-epoch exits cleanly: fairseq's prefetch thread
(BackgroundConsumer) still freeing tensors while the interpreter exits must not abort the
process. The process is tests/scripts/prefetch_at_exit.py, with and without the plugin.
"""
import os
import signal
import subprocess
import sys

import pytest

from training_runs import ENV, PREFETCH_AT_EXIT


@pytest.mark.slow  # up to 8 Python processes that import torch and fairseq
def test_a_run_stopped_mid_epoch_exits_cleanly():
    """Stock fairseq aborts at exit ("terminate called without an active exception", 134);
    with the plugin (shim 7) the process exits with 0."""

    def exit_status(mode):
        return subprocess.run([sys.executable, PREFETCH_AT_EXIT, mode], capture_output=True, text=True,
                              env={**os.environ, **ENV}, timeout=120)

    for _ in range(3):
        proc = exit_status("plugin")
        assert proc.returncode == 0, proc.stderr[-2000:]
    stock = []  # the control: the abort is real (10 of 10 runs on the machine this was written on)
    while len(stock) < 5 and not any(p.returncode == -signal.SIGABRT and "terminate called" in p.stderr
                                     for p in stock):
        stock.append(exit_status("stock"))
    if stock[-1].returncode != -signal.SIGABRT:
        pytest.skip(f"stock control: fairseq did not abort at exit in {len(stock)} runs on this machine "
                    f"(exit statuses {[p.returncode for p in stock]}), so the failure is not reproduced here")
