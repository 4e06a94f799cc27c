"""The data layer: reading local files, tokenising and caching them, and batching them for Lightning."""

from bertft.data.base import EncodedDataModule
from bertft.data.cache import SplitCache, default_cache_dir
from bertft.data.conll import read_token_file
from bertft.data.encode import Collator, load_tokenizer
from bertft.data.files import DataError, ReadOptions, Table, read_table
from bertft.data.labels import Task
from bertft.data.sampler import LengthGroupedBatchSampler, LengthSortedSampler
from bertft.data.split import SplitState
from bertft.data.text_module import TextDataModule
from bertft.data.token_module import TokenDataModule
from bertft.data.tokens import TokenCollator

__all__ = [
    "Collator",
    "DataError",
    "EncodedDataModule",
    "LengthGroupedBatchSampler",
    "LengthSortedSampler",
    "ReadOptions",
    "SplitCache",
    "SplitState",
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
