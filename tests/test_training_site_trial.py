"""The go-live rehearsal's split (training/site_trial.split_by_group): whole groups, seeded, disjoint."""

from __future__ import annotations

import csv
from pathlib import Path

from sonopacs.training.site_trial import split_by_group


def _index(tmp_path: Path) -> Path:
    p = tmp_path / "index.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "mask", "group", "label_conflict"])
        for i in range(60):
            w.writerow([f"img{i}.png", "benign" if i % 3 else "normal", "", f"g{i // 4}" if i < 50 else "", 0])
    return p


def _images(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [r["image"] for r in csv.DictReader(f)]


def test_site_set_takes_whole_groups_until_the_size_and_check_set_the_rest(tmp_path: Path) -> None:
    index = _index(tmp_path)
    site, check = split_by_group(index, tmp_path, 20, seed=16)
    s, c = _images(site), _images(check)
    assert 20 <= len(s) < 24 and len(s) + len(c) == 60 and not set(s) & set(c)
    group = {f"img{i}.png": (f"g{i // 4}" if i < 50 else f"img{i}.png") for i in range(60)}
    assert not {group[x] for x in s} & {group[x] for x in c}  # no near-duplicate group on both sides
    again = split_by_group(index, tmp_path / ".." / tmp_path.name, 20, seed=16)[0]
    assert _images(again) == s
    other = tmp_path / "other"
    other.mkdir()
    assert _images(split_by_group(index, other, 20, seed=17)[0]) != s
