"""Prefect flows of the SEAL pipeline: one per stage, and ``curate`` chaining them.

Entry points (also in ``prefect.yaml``): ``flows/curate.py:curate`` and
``flows/stages.py:{ingest,rank,select,finetune,generate,evaluate,score}_flow``.
"""

from .curate import curate
from .stages import evaluate_flow, finetune_flow, generate_flow, ingest_flow, rank_flow, score_flow, select_flow

__all__ = ["curate", "ingest_flow", "rank_flow", "select_flow", "finetune_flow", "generate_flow",
           "evaluate_flow", "score_flow"]
