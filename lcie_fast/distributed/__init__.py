"""Tagging past one machine: distributed batch tagging on Ray Data (the ``ray`` extra).

- :func:`tag_dataset`: tag a dataset on a Ray cluster into an output folder, with the contract
  of local tagging: one record per input (bad files as error records), nothing lost, nothing
  duplicated, resumable (:mod:`.ray_tagging`).
- :func:`read_ray_output`: the records of such a folder, in input order, each input checked to
  be there exactly once (:mod:`.layout`); ``lcie-fast tag-merge OUT -o tags.jsonl`` writes them.

Importing this package does not import Ray: it is imported when a run starts, and a missing Ray
is a :class:`~lcie_fast._optional.MissingDependencyError` that says ``pip install 'lcie-fast[ray]'``.
"""

from .layout import read_ray_output
from .ray_tagging import DistributedTagError, shared_storage_problem, tag_dataset

__all__ = ["DistributedTagError", "read_ray_output", "shared_storage_problem", "tag_dataset"]
