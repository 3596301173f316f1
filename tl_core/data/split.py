"""The stratified train / validation / test split, duplicates kept in one part."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tl_core.config import DataConfig
from tl_core.data.decode import DecodedDataset
from tl_core.errors import DataError

MIN_IMAGES_PER_CLASS = 3  # one each for train, validation and test


def split_dataset(decoded: DecodedDataset, config: DataConfig = DataConfig()) -> dict[str, np.ndarray]:
    """A stratified train / validation / test split of image indices, repeatable by seed.

    Every class appears in every split. Byte-identical files stay in the same split, within a
    class and across classes, so a duplicate can never leak from training into the test set.

    Raises:
        DataError: fewer than two classes, or a class with fewer than 3 distinct usable images.
    """
    config.validate()
    if len(decoded.class_names) < 2:
        only = decoded.class_names[0] if decoded.class_names else "none"
        raise DataError(
            f"Found {len(decoded.class_names)} class ({only}); a classifier needs at least 2. "
            "Add a folder of images for another class."
        )
    rng = np.random.default_rng(config.seed)
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    placed: dict[str, str] = {}  # file hash -> split, shared by all classes
    for label, name in enumerate(decoded.class_names):
        groups: dict[str, list[int]] = defaultdict(list)
        for index in np.flatnonzero(decoded.y == label):
            groups[decoded.hashes[index]].append(int(index))
        n = len(groups)
        if n < MIN_IMAGES_PER_CLASS:
            raise DataError(
                f"Class '{name}' has {n} distinct usable image(s); a stratified train/validation/test "
                f"split needs at least {MIN_IMAGES_PER_CLASS} per class. Add images or merge the class."
            )
        wanted = {"test": max(1, round(n * config.test_fraction)), "val": max(1, round(n * config.val_fraction))}
        free = []
        for digest in groups:
            if digest in placed:  # the same file in an earlier class: same split
                wanted[placed[digest]] = wanted.get(placed[digest], 0) - 1
                splits[placed[digest]].extend(groups[digest])
            else:
                free.append(digest)
        for position, unit in enumerate(rng.permutation(len(free))):
            n_test, n_val = max(wanted["test"], 0), max(wanted["val"], 0)
            part = "test" if position < n_test else "val" if position < n_test + n_val else "train"
            placed[free[unit]] = part
            splits[part].extend(groups[free[unit]])
    return {name: np.asarray(sorted(indices), dtype=np.int64) for name, indices in splits.items()}
