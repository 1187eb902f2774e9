"""ImageNet-100 is CMC's standard subset: the shipped list (100 distinct WordNet ids, spot
checks against CMC's imagenet100.txt), the tree check, and the link tool that builds the tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.imagenet100 import main as link_main
from ncstudy.data.imagenet100 import check_imagenet100_tree, imagenet100_classes


def test_the_shipped_list_is_cmcs() -> None:
    classes = imagenet100_classes()
    assert len(classes) == 100 and len(set(classes)) == 100
    assert all(c.startswith("n") and len(c) == 9 and c[1:].isdigit() for c in classes)
    # CMC's imagenet100.txt begins and ends with these
    assert classes[:3] == ["n02869837", "n01749939", "n02488291"]
    assert classes[-2:] == ["n01855672", "n02090622"]


def fake_imagenet(root: Path, extra: int = 3) -> None:
    for split in ("train", "val"):
        for wnid in [*imagenet100_classes(), *(f"n9999999{i}" for i in range(extra))]:
            (root / split / wnid).mkdir(parents=True)


def test_link_tool_builds_a_tree_the_check_accepts(tmp_path: Path) -> None:
    fake_imagenet(tmp_path / "in1k")
    out = tmp_path / "in100"
    assert link_main(["--imagenet", str(tmp_path / "in1k"), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(imagenet100_classes())
    assert (out / "val" / "n02869837").resolve() == (tmp_path / "in1k/val/n02869837").resolve()
    check_imagenet100_tree(out / "train")  # the standard subset: accepted
    # a different 100-class subset under the same name is refused, naming the differences
    other = tmp_path / "other" / "train"
    for wnid in [*imagenet100_classes()[:-1], "n99999990"]:
        (other / wnid).mkdir(parents=True)
    with pytest.raises(ValueError, match="not the standard ImageNet-100.*n02090622"):
        check_imagenet100_tree(other)


def test_link_tool_names_a_missing_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in1k" / "train").mkdir(parents=True)
    assert link_main(["--imagenet", str(tmp_path / "in1k"), "--out", str(tmp_path / "o")]) == 2
    assert "n02869837: not found" in capsys.readouterr().out
