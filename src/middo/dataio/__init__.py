"""Dataset I/O: read users' datasets into :class:`~middo.records.Record` s with reasons for every reject, and
write the pipeline's own JSONL files atomically."""

from middo.dataio.readers import DatasetError, ReadResult, Reject, read_dataset
from middo.dataio.writers import read_records, write_jsonl

__all__ = ["DatasetError", "ReadResult", "Reject", "read_dataset", "read_records", "write_jsonl"]
