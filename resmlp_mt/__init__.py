"""resmlp_mt: ResMLP for translation and image classification, as a fairseq plugin.

Pass this directory to fairseq with ``--user-dir``. Importing it registers the
models, tasks, criteria and the ``timm_lamb`` optimizer, and applies the fairseq
compatibility shims (``fairseq_compat``) that fix checkpoint loading on torch >= 2.6,
stop fairseq from dropping evaluation sentences, and more. One INFO line names the
shims; ``RESMLP_NO_SHIM=name,...`` (or ``all``) turns them off.
"""
from . import fairseq_compat

fairseq_compat.apply()

from . import criterions, models, optim, tasks  # noqa: E402,F401

__version__ = "0.1.0"
