"""Batch restoration of many files, time-lapses and large planes on Dask (``pkl-dg batch``)."""

from pkl_dg.batch.plan import Job, expand_inputs
from pkl_dg.batch.report import summary_table
from pkl_dg.batch.run import run_batch, start_cluster

__all__ = ["Job", "expand_inputs", "run_batch", "start_cluster", "summary_table"]
