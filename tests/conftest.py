"""Shared test set-up: everything runs offline, with small models and generated data."""

import os

# Before huggingface_hub/datasets are imported: never wait on a hub that cannot be reached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
