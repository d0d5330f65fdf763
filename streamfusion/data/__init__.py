"""Click-log sources: schemas, the C tokenizer + hasher, streaming file readers.

    >>> from streamfusion.data import open_source
    >>> src = open_source("train.csv.gz", bits=20, seed=0)  # doctest: +SKIP
    >>> batch = src.next_batch(4096)  # doctest: +SKIP
"""

from streamfusion.data.encoder import Encoder
from streamfusion.data.readers import FileSource, ParseError, open_source, read_all
from streamfusion.data.schema import (
    Column,
    Schema,
    avazu_schema,
    criteo_schema,
    detect_schema,
    infer_csv_schema,
    libsvm_schema,
)

__all__ = [
    "Column",
    "Encoder",
    "FileSource",
    "ParseError",
    "Schema",
    "avazu_schema",
    "criteo_schema",
    "detect_schema",
    "infer_csv_schema",
    "libsvm_schema",
    "open_source",
    "read_all",
]
