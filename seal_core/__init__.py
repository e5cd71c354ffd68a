"""seal-curate core library: SEAL bilevel data selection (Shen et al., 2024).

This package is pure Python/PyTorch and never imports Prefect; the Prefect
adapters live in the top-level ``tasks`` and ``flows`` packages.
"""

__version__ = "0.1.0"
