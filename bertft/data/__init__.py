"""The data layer: reading local files, tokenising and caching them, and batching them for Lightning."""

from bertft.data.cache import SplitCache, default_cache_dir
from bertft.data.conll import read_token_file
from bertft.data.encode import Collator, load_tokenizer
from bertft.data.files import DataError, ReadOptions, Table, read_table
from bertft.data.labels import Task
from bertft.data.module import TextDataModule
from bertft.data.sampler import LengthGroupedBatchSampler, LengthSortedSampler
from bertft.data.token_module import TokenDataModule
from bertft.data.tokens import TokenCollator

__all__ = [
    "Collator",
    "DataError",
    "LengthGroupedBatchSampler",
    "LengthSortedSampler",
    "ReadOptions",
    "SplitCache",
    "Table",
    "Task",
    "TextDataModule",
    "TokenCollator",
    "TokenDataModule",
    "default_cache_dir",
    "load_tokenizer",
    "read_table",
    "read_token_file",
]
