"""The public datasets' folder layouts, class mapping, limits and reproducible splits."""

from __future__ import annotations

import numpy as np
import pytest

from training.__main__ import main
from training.datasets import (CLASSES, DatasetError, load_dataset, parse_class_map,
                               split_dataset)

from .training_data import ct_dataset, radiography_dataset, write_images


def test_ct_scan_dataset_layout(tmp_path):
    dataset = load_dataset(ct_dataset(tmp_path, per_class=5))
    assert dataset.counts() == {"NonCOVID": 5, "COVID": 5}
    assert dataset.source_counts() == {"COVID": 5, "non-COVID": 5}
    covid = [s for s in dataset.samples if s.label == CLASSES.index("COVID")]
    assert {s.path.parent.name for s in covid} == {"COVID"}


def test_radiography_database_layout_skips_masks_and_other_classes(tmp_path):
    dataset = load_dataset(radiography_dataset(tmp_path, per_class=3))
    assert dataset.counts() == {"NonCOVID": 3, "COVID": 3}
    assert all(s.path.parent.name == "images" for s in dataset.samples)
    assert sorted(dataset.ignored_folders) == ["Lung_Opacity", "Viral Pneumonia"]


def test_radiography_other_classes_can_be_mapped(tmp_path):
    root = radiography_dataset(tmp_path, per_class=3)
    mapping = parse_class_map(["Lung_Opacity=NonCOVID", "viral pneumonia=non-covid"])
    dataset = load_dataset(root, class_map=mapping)
    assert dataset.counts() == {"NonCOVID": 9, "COVID": 3}
    assert dataset.ignored_folders == []


def test_covid_ct_dataset_folder_names(tmp_path):
    write_images(tmp_path / "CT_COVID", 2, True, seed=1)
    write_images(tmp_path / "CT_NonCOVID", 3, False, seed=2)
    assert load_dataset(tmp_path).counts() == {"NonCOVID": 3, "COVID": 2}


def test_limit_per_class_takes_the_first_in_natural_order(tmp_path):
    write_images(tmp_path / "COVID", 12, True, seed=1, prefix="COVID")
    write_images(tmp_path / "Normal", 12, False, seed=2, prefix="Normal")
    dataset = load_dataset(tmp_path, limit_per_class=10)
    names = [s.path.name for s in dataset.samples if s.source_class == "COVID"]
    assert names == [f"COVID-{i}.png" for i in range(1, 11)]


def test_missing_class_names_what_was_found(tmp_path):
    write_images(tmp_path / "COVID", 2, True, seed=1)
    write_images(tmp_path / "Lung_Opacity", 2, False, seed=2)
    with pytest.raises(DatasetError, match="NonCOVID.*Lung_Opacity.*--map-class"):
        load_dataset(tmp_path)


def test_bad_class_mapping_is_refused():
    with pytest.raises(DatasetError, match="FOLDER=COVID"):
        parse_class_map(["Lung_Opacity=Pneumonia"])


def test_split_is_stratified_disjoint_and_reproducible(tmp_path):
    write_images(tmp_path / "COVID", 40, True, seed=1, size=8)
    write_images(tmp_path / "non-COVID", 60, False, seed=2, size=8)
    dataset = load_dataset(tmp_path)
    split = split_dataset(dataset, 0.2, 0.2, seed=7)
    parts = [set(part.paths) for part in (split.train, split.validation, split.test)]
    assert sum(map(len, parts)) == 100 and len(set.union(*parts)) == 100
    assert split.sizes()["test"] == {"NonCOVID": 12, "COVID": 8}
    assert split.sizes()["validation"] == {"NonCOVID": 12, "COVID": 8}
    again = split_dataset(load_dataset(tmp_path), 0.2, 0.2, seed=7)
    assert again.test.paths == split.test.paths
    assert split_dataset(dataset, 0.2, 0.2, seed=8).test.paths != split.test.paths


def test_group_regex_keeps_a_patient_on_one_side(tmp_path):
    for patient in range(12):
        covid = patient % 2 == 0
        folder = tmp_path / ("COVID" if covid else "non-COVID")
        write_images(folder, 4, covid, seed=patient, prefix=f"patient{patient:02d}_slice",
                     size=8)
    dataset = load_dataset(tmp_path)
    split = split_dataset(dataset, 0.25, 0.25, seed=0, group_regex=r"patient(\d+)_")

    def patients(part):
        return {s.path.name.split("_")[0] for s in part.samples}

    train, val, test = (patients(p) for p in (split.train, split.validation, split.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 12
    assert all(np.unique(p.labels).size == 2 for p in (split.train, split.test))


def test_preview_counts_and_grid(tmp_path, capsys):
    root = radiography_dataset(tmp_path / "data", per_class=3)
    grid = tmp_path / "grid.png"
    assert main(["preview", "--data", str(root), "--output", str(grid), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "COVID" in out and "Normal" in out and "Lung_Opacity" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_reports_an_unusable_folder(tmp_path, capsys):
    assert main(["preview", "--data", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
