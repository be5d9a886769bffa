"""Datasets: where they live on disk (`location`) and, later, loaders."""

from jaxexit.data.location import (DATASETS, ENV_VAR, FLAG, DataNotFoundError,
                                   DatasetSpec, add_data_dir_flag,
                                   dataset_spec, default_data_dir,
                                   how_to_obtain, require, require_file,
                                   resolve_data_dir)

__all__ = [
    "DATASETS", "ENV_VAR", "FLAG", "DataNotFoundError", "DatasetSpec",
    "add_data_dir_flag", "dataset_spec", "default_data_dir", "how_to_obtain",
    "require", "require_file", "resolve_data_dir",
]
