"""Data: raw files -> parquet (``prepare``), parquet -> TorchRec ``Batch`` (``loader``)."""

from store_rec.data.schema import DatasetSchema, SchemaError, SparseFeature  # noqa: F401
