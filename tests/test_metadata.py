"""Metadata readers on the real CUB / ILSVRC / OpenImages metadata and on broken files."""
from __future__ import annotations

from pathlib import Path

import pytest

from cream_rt.errors import MetadataError
from cream_rt.metadata import read_split, resize_box

SPLITS = [("CUB", "val", 1000), ("CUB", "test", 5794), ("ILSVRC", "val", 10000),
          ("ILSVRC", "test", 50000), ("OpenImages", "val", 2500), ("OpenImages", "test", 5000)]


@pytest.mark.parametrize("dataset,split,count", SPLITS)
def test_real_metadata(shared_meta, dataset, split, count):
    meta = read_split(shared_meta / dataset / split)
    assert len(meta.image_ids) == count
    assert set(meta.class_labels) == set(meta.image_ids)
    if dataset == "OpenImages":
        assert meta.has_masks and not meta.has_boxes
        assert all(meta.ignore_paths[i] for i in meta.image_ids)
    else:
        assert meta.has_boxes and set(meta.image_sizes) == set(meta.image_ids)
        assert sum(len(b) for b in meta.boxes.values()) >= count
    if dataset == "ILSVRC":
        assert meta.num_classes == 1000
        assert max(len(b) for b in meta.boxes.values()) > 1  # several boxes per image
    if dataset == "CUB":
        assert meta.num_classes == 200
        first = meta.image_ids[0]
        if split == "test":
            assert first == "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
            assert meta.boxes[first] == [(60.0, 27.0, 385.0, 331.0)]
            assert meta.image_sizes[first] == (500, 335)


def test_resize_box_protocol():
    # int(coord * 224 / size), per coordinate
    assert resize_box((60, 27, 385, 331), (500, 335), (224, 224)) == (26, 18, 172, 221)


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


GOOD = {
    "image_ids.txt": "a/1.jpg\na/2.jpg",  # no final newline
    "class_labels.txt": "a/1.jpg,0\na/2.jpg,1\n",
    "image_sizes.txt": "a/1.jpg,100,50\na/2.jpg,40,40\n",
    "localization.txt": "a/1.jpg,1,2,30,40\na/2.jpg,0,0,10,10\na/2.jpg,5,5,39,39\n",
}


def test_missing_final_newline_and_multiple_boxes(tmp_path):
    meta = read_split(_write(tmp_path / "s", GOOD))
    assert meta.image_ids == ["a/1.jpg", "a/2.jpg"]
    assert len(meta.boxes["a/2.jpg"]) == 2


@pytest.mark.parametrize("name,text,message", [
    ("class_labels.txt", "a/1.jpg,0\na/2.jpg,x\n", "class_labels.txt:2: the class label must be int"),
    ("class_labels.txt", "a/1.jpg,0\n", "'a/2.jpg' from image_ids.txt has no entry"),
    ("class_labels.txt", "a/1.jpg,0\na/3.jpg,1\n", "class_labels.txt:2: image id 'a/3.jpg' is not in image_ids.txt"),
    ("localization.txt", "a/1.jpg,1,2,30\na/2.jpg,0,0,1,1\n", "localization.txt:1: expected '<image_id>,<x0>"),
    ("localization.txt", "a/1.jpg,1,2,300,40\na/2.jpg,0,0,1,1\n", "lies outside the 100x50 image"),
    ("localization.txt", "a/1.jpg,30,2,1,40\na/2.jpg,0,0,1,1\n", "box must have 0 <= x0 <= x1"),
    ("image_sizes.txt", "a/1.jpg,100\na/2.jpg,40,40\n", "image_sizes.txt:1: expected"),
    ("image_ids.txt", "a/1.jpg\na/1.jpg\n", "listed twice"),
])
def test_malformed_files(tmp_path, name, text, message):
    files = dict(GOOD, **{name: text})
    with pytest.raises(MetadataError, match=None) as info:
        read_split(_write(tmp_path / "s", files))
    assert message in str(info.value)
    assert name in str(info.value)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(MetadataError, match="folder not found"):
        read_split(tmp_path / "nope")
    files = dict(GOOD)
    del files["class_labels.txt"]
    with pytest.raises(MetadataError, match="class_labels.txt: metadata file not found"):
        read_split(_write(tmp_path / "s", files))
