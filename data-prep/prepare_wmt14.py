#!/usr/bin/env python3
"""Prepare WMT14 En-De or En-Fr for fairseq; run with --help. The logic lives in resmlp_mt.prep.wmt14."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resmlp_mt.prep.wmt14 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
