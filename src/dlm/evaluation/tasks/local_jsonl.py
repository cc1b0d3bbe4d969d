"""Load a task's data from JSON-lines files next to its YAML, offline (no Hugging Face Hub).

A task config names it as `custom_dataset: !function local_jsonl.load` with
`dataset_kwargs: {data_files: {test: FILE.jsonl}}`; relative file names are read from this
folder, so the tasks work from any working directory. Copy this file next to your own task
YAMLs to do the same.
"""

import json
from pathlib import Path


def load(data_files: dict, **unused):
    """{split: path} -> datasets.DatasetDict, one row per line of each file."""
    import datasets

    here = Path(__file__).resolve().parent
    splits = {}
    for split, name in data_files.items():
        path = Path(name) if Path(name).is_absolute() else here / name
        with open(path, encoding="utf-8") as f:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in f if line.strip()])
    return datasets.DatasetDict(splits)
