"""Find the images of a dataset folder, label them, and split them reproducibly.

A dataset is a folder with one subfolder per class. The public datasets are read as
downloaded: the SARS-CoV-2 CT-scan dataset (``COVID``, ``non-COVID``), the COVID-19
Radiography Database (``COVID/images``, ``Normal/images``, ``Lung_Opacity/images``,
``Viral Pneumonia/images``, each beside a ``masks`` folder) and the COVID-CT dataset
(``CT_COVID``, ``CT_NonCOVID``). Other classes are left out unless mapped onto one of
the two the models predict. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.cards import DEFAULT_CLASSES

CLASSES = DEFAULT_CLASSES  # output order of every model: index 1 is COVID
NON_COVID_INDEX, COVID_INDEX = 0, 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

# Folder names (lower case, letters and digits only) that mean one of the two classes.
KNOWN_FOLDERS = {
    "covid": "COVID", "covid19": "COVID", "ctcovid": "COVID", "positive": "COVID",
    "noncovid": "NonCOVID", "noncovid19": "NonCOVID", "ctnoncovid": "NonCOVID",
    "normal": "NonCOVID", "negative": "NonCOVID",
}
SKIPPED_SUBFOLDERS = {"masks", "mask", "__macosx"}


class DatasetError(ValueError):
    """A dataset folder that cannot be read as two classes; the message says why."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into CLASSES
    source_class: str  # the folder it came from, e.g. "Lung_Opacity"


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    ignored_folders: list[str]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        return [str(s.path) for s in self.samples]

    def counts(self) -> dict[str, int]:
        counter = Counter(s.label for s in self.samples)
        return {name: counter.get(i, 0) for i, name in enumerate(CLASSES)}

    def source_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.source_class for s in self.samples).items()))

    def subset(self, indices) -> "Dataset":
        return Dataset(self.root, [self.samples[i] for i in indices], self.ignored_folders)


def folder_key(name: str) -> str:
    """``non-COVID`` / ``Non_COVID`` / ``NonCOVID`` -> ``noncovid``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def natural_key(path: Path) -> list:
    """Sort ``COVID-2`` before ``COVID-10``, so "the first N" means what people expect."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", path.as_posix())]


def parse_class_map(items: list[str] | None) -> dict[str, str]:
    """``["Lung_Opacity=NonCOVID", "Viral Pneumonia=NonCOVID"]`` -> folder key -> class."""
    mapping: dict[str, str] = {}
    for item in items or []:
        folder, sep, target = item.partition("=")
        target_key = folder_key(target)
        by_key = {folder_key(name): name for name in CLASSES}
        if not sep or not folder.strip() or target_key not in by_key:
            raise DatasetError(
                f"Bad class mapping {item!r}: write FOLDER=COVID or FOLDER=NonCOVID.")
        mapping[folder_key(folder)] = by_key[target_key]
    return mapping


def image_files(folder: Path) -> list[Path]:
    """Images of one class folder: its ``images`` subfolder when there is one (the
    Radiography Database keeps lung masks beside it), else every image below it."""
    images_dir = next((p for p in folder.iterdir()
                       if p.is_dir() and p.name.lower() == "images"), None)
    base = images_dir or folder
    found = [p for p in base.rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")
             and not SKIPPED_SUBFOLDERS.intersection(
                 part.lower() for part in p.relative_to(base).parts[:-1])]
    return sorted(found, key=natural_key)


def class_folders(root: Path, class_map: dict[str, str]) -> tuple[dict[Path, str], list[str]]:
    """Subfolders that hold a class, descending through single wrapper folders
    (``COVID-19_Radiography_Dataset/``) that archives often add."""
    while True:
        subfolders = sorted((p for p in root.iterdir() if p.is_dir()
                             and folder_key(p.name) not in SKIPPED_SUBFOLDERS),
                            key=natural_key)
        known = {p: class_map.get(folder_key(p.name)) or KNOWN_FOLDERS.get(folder_key(p.name))
                 for p in subfolders}
        if any(known.values()) or len(subfolders) != 1:
            break
        root = subfolders[0]
    chosen = {p: name for p, name in known.items() if name}
    ignored = [p.name for p, name in known.items() if not name]
    return chosen, ignored


def load_dataset(root: str | Path, limit_per_class: int | None = None,
                 class_map: dict[str, str] | None = None) -> Dataset:
    """Every labelled image under ``root``; ``limit_per_class`` keeps the first N of
    each source folder in natural order (the published models used 1200 X-rays each)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.")
    folders, ignored = class_folders(root, class_map or {})
    samples = []
    for folder, class_name in folders.items():
        files = image_files(folder)
        if limit_per_class:
            files = files[:limit_per_class]
        label = CLASSES.index(class_name)
        samples.extend(Sample(path, label, folder.name) for path in files)
    dataset = Dataset(root, samples, ignored)
    counts = dataset.counts()
    if not all(counts.values()):
        missing = ", ".join(name for name, n in counts.items() if not n)
        raise DatasetError(
            f"No {missing} images under {root}. Expected one subfolder per class such as "
            f"COVID and non-COVID (CT) or COVID/images and Normal/images (X-ray); "
            f"found {', '.join(sorted(ignored)) or 'no class folders'}. "
            f"Map other folders with --map-class FOLDER=COVID|NonCOVID.")
    return dataset


def group_ids(dataset: Dataset, group_regex: str | None) -> np.ndarray:
    """One group name per image: the regex's first group (or whole match) on the file's
    path relative to the dataset; images it does not match are their own group."""
    if not group_regex:
        return np.arange(len(dataset.samples)).astype(str)
    pattern = re.compile(group_regex)
    ids = []
    for sample in dataset.samples:
        relative = sample.path.relative_to(dataset.root).as_posix()
        match = pattern.search(relative)
        if match is None:
            ids.append(f"\0{relative}")
        else:
            ids.append(match.group(1) if pattern.groups else match.group(0))
    return np.array(ids)


@dataclass
class Split:
    train: Dataset
    validation: Dataset
    test: Dataset
    seed: int

    def sizes(self) -> dict[str, dict[str, int]]:
        return {name: part.counts() for name, part in
                (("train", self.train), ("validation", self.validation), ("test", self.test))}


def _hold_out(labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): stratified, and group-aware when groups are given."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    indices = np.arange(len(labels))
    if groups is None:
        return train_test_split(indices, test_size=fraction, stratify=labels,
                                random_state=seed)
    n_splits = max(2, int(round(1.0 / fraction)))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    kept, held = next(folds.split(indices, labels, groups))
    return kept, held


def split_dataset(dataset: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 42, group_regex: str | None = None) -> Split:
    """Stratified train / validation / test split, the same for the same seed.

    With ``group_regex`` every image of one group (a patient) lands on one side, since
    image-level splits of these datasets overstate accuracy.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError("Validation and test fractions must be in (0, 1) and sum below 1.")
    labels = dataset.labels
    groups = group_ids(dataset, group_regex) if group_regex else None
    try:
        rest, test = _hold_out(labels, groups, test_fraction, seed)
        relative_val = val_fraction / (1.0 - test_fraction)
        train, val = _hold_out(labels[rest], None if groups is None else groups[rest],
                               relative_val, seed)
    except ValueError as exc:
        raise DatasetError(f"Cannot split {len(labels)} images that way: {exc}") from exc
    return Split(dataset.subset(rest[train]), dataset.subset(rest[val]),
                 dataset.subset(test), seed)
