#!/usr/bin/env python3
"""Prepare Multi30k for fairseq; run with --help. The logic lives in resmlp_mt.prep.multi30k."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resmlp_mt.prep.multi30k import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
