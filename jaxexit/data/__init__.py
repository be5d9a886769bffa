"""Datasets: where they live on disk (`location`) and their loaders.

`jaxexit.data.tokenize` needs the `models` extra (`tokenizers`) and is not
imported here.
"""

from jaxexit.data.glue import (TASKS, GlueSplit, GlueTask,
                               TfdsUnavailableError, glue_task, load_glue)
from jaxexit.data.location import (DATASETS, ENV_VAR, FLAG, DataNotFoundError,
                                   DatasetSpec, add_data_dir_flag,
                                   dataset_spec, default_data_dir,
                                   how_to_obtain, require, require_file,
                                   resolve_data_dir)

__all__ = [
    "DATASETS", "ENV_VAR", "FLAG", "TASKS", "DataNotFoundError",
    "DatasetSpec", "GlueSplit", "GlueTask", "TfdsUnavailableError",
    "add_data_dir_flag", "dataset_spec", "default_data_dir", "glue_task",
    "how_to_obtain", "load_glue", "require", "require_file",
    "resolve_data_dir",
]
