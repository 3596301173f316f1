"""Images in, arrays out: one concern a module.

- :mod:`~tl_core.data.ingest`: find the labelled images of a folder, a zip or an upload, and check them;
- :mod:`~tl_core.data.decode`: decode them to fixed-size pixels, with the on-disk pixel cache;
- :mod:`~tl_core.data.arrays`: on-disk (memory-mapped) array utilities that features also use;
- :mod:`~tl_core.data.report`: the health report (counts, imbalance, duplicates, unreadable files);
- :mod:`~tl_core.data.split`: the stratified train/val/test split;
- :mod:`~tl_core.data.pipeline`: batches for Keras (the only module that touches TensorFlow, lazily).

The names below are the package's public interface; callers may import them from here.
"""

from __future__ import annotations

from tl_core.data.ingest import (  # noqa: F401
    ARCHIVE_EXTENSIONS,
    DATASET_META,
    IMAGE_EXTENSIONS,
    ImageItem,
    ImageSet,
    ZIP_RATIO_MIN_BYTES,
    load_folder,
    load_images,
    load_uploads,
    load_zip,
)
from tl_core.data.decode import (  # noqa: F401
    DECODER_VERSION,
    DECODE_AHEAD,
    DecodedDataset,
    cached_decode,
    check_usable,
    decode_dataset,
    decode_image,
    file_hashes,
    prepare_image,
)
from tl_core.data.arrays import (  # noqa: F401
    PageRelease,
    RELEASE_BYTES,
    Rows,
    create_npy,
    iter_chunks,
    release_pages,
    take_rows,
    truncate_npy,
)
from tl_core.data.report import (  # noqa: F401
    IMBALANCE_RATIO,
    build_report,
    find_duplicates,
    inspect_dataset,
)
from tl_core.data.split import (  # noqa: F401
    MIN_IMAGES_PER_CLASS,
    split_dataset,
)
from tl_core.data.pipeline import (  # noqa: F401
    make_batches,
)

__all__ = [
    "ARCHIVE_EXTENSIONS",
    "DATASET_META",
    "DECODER_VERSION",
    "DECODE_AHEAD",
    "DecodedDataset",
    "IMAGE_EXTENSIONS",
    "IMBALANCE_RATIO",
    "ImageItem",
    "ImageSet",
    "MIN_IMAGES_PER_CLASS",
    "PageRelease",
    "RELEASE_BYTES",
    "Rows",
    "ZIP_RATIO_MIN_BYTES",
    "build_report",
    "cached_decode",
    "check_usable",
    "create_npy",
    "decode_dataset",
    "decode_image",
    "file_hashes",
    "find_duplicates",
    "inspect_dataset",
    "iter_chunks",
    "load_folder",
    "load_images",
    "load_uploads",
    "load_zip",
    "make_batches",
    "prepare_image",
    "release_pages",
    "split_dataset",
    "take_rows",
    "truncate_npy",
]
