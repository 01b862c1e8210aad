"""Datasets: registry of time-binned datasets, on-disk layout, loaders and builders."""

from .datasets import DATASETS, DatasetInfo, get_dataset, list_datasets  # noqa: F401
