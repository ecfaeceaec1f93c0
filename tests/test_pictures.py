"""Pictures a person would look at: overlays at the input's resolution (or a chosen width) with a
legend of the classes shown, and "image | ground truth | prediction per head" panels from
``univseg eval --save-samples``."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from univseg.cli import main
from univseg.data.synthetic import LABEL_SPACES
from univseg.viz.overlay import overlay
from univseg.viz.panel import legend, overlay_with_legend, present_classes, sample_panel

FINE = LABEL_SPACES["fine"]


def colours(picture: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in picture.reshape(-1, 3)}


def striped_mask(h: int = 60, w: int = 80) -> np.ndarray:
    """Classes 2 (road), 4 (vegetation) and 6 (car) in vertical stripes, an ignored block."""
    mask = np.full((h, w), 2, dtype=np.uint8)
    mask[:, w // 3:] = 4
    mask[:, 2 * w // 3:] = 6
    mask[:10, :10] = 255
    return mask


def test_overlay_keeps_the_input_resolution_and_lists_the_classes_shown():
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = striped_mask()
    picture = overlay_with_legend(image, mask, FINE)
    assert picture.shape[1] >= 80 and picture.shape[0] > 60
    np.testing.assert_array_equal(picture[:60, :80], overlay(image, mask, FINE))  # the overlay itself, untouched
    below = colours(picture[60:])
    for k in (2, 4, 6):  # each class shown has its swatch in the legend
        assert tuple(int(v) for v in FINE.palette[k]) in below, FINE.names[k]
    for k in (0, 3, 7, 8):  # the others do not (the greys, building and pole, are also in the text's anti-aliasing)
        assert tuple(int(v) for v in FINE.palette[k]) not in below, FINE.names[k]
    assert present_classes([mask], FINE) == [2, 4, 6]


def test_a_chosen_width_scales_the_overlay():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    picture = overlay_with_legend(image, striped_mask(), FINE, width=200)
    assert picture.shape[1] == 200
    top = picture[:150]  # 60x80 scaled to 150x200; nearest-neighbour classes keep their exact colours
    assert tuple(np.asarray(overlay(image[:1, :1], np.array([[6]], dtype=np.uint8), FINE))[0, 0]) in colours(top)


def test_a_legend_wraps_into_columns_that_fit_the_width():
    narrow = legend(FINE, list(range(9)), width=120)
    wide = legend(FINE, list(range(9)), width=600)
    assert wide.width == 600 and wide.height < narrow.height  # more columns, fewer rows


def test_panel_puts_image_ground_truth_and_every_head_side_by_side():
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    mask = striped_mask()
    coarse = LABEL_SPACES["coarse"]
    panel = sample_panel(image, mask, FINE, {"city": (mask, FINE), "rural": (np.full_like(mask, 7), coarse)}, width=160)
    assert panel.shape[1] >= 4 * 160  # four tiles
    rural_tile = panel[:, 3 * 160 + 12:]
    assert tuple(int(v) for v in coarse.palette[7]) in colours(rural_tile)  # animal: only the rural head shows it
    assert tuple(int(v) for v in coarse.palette[7]) not in colours(panel[:, :3 * 160])
    no_label = sample_panel(image, None, FINE, {"city": (mask, FINE)}, width=160)
    assert no_label.shape[1] < 3 * 160


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import train_tiny_with_cli

    return train_tiny_with_cli(tmp_path_factory.mktemp("pictures"), "train.iters=1")


def test_eval_save_samples_writes_one_panel_per_image_and_domain(trained, tmp_path, capsys):
    cfg, work = trained
    out = tmp_path / "eval.json"
    argv = ["eval", str(cfg), str(work / "latest.pt"), "--out", str(out), "--save-samples", "2", "--sample-width", "96"]
    assert main(argv + ["--no-progress"]) == 0
    folder = tmp_path / "eval_samples"
    assert f"4 sample panels (image | ground truth | prediction per head) written to {folder}" in capsys.readouterr().out
    for domain in ("city", "rural"):
        panels = sorted((folder / domain).glob("*.png"))
        assert len(panels) == 2, domain
        size = Image.open(panels[0]).size
        assert size[0] >= 4 * 96 and size[1] > 48  # image, ground truth, city head, rural head; legends below


def test_eval_rejects_a_negative_sample_count_and_a_tiny_width(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "demo", "x.pt", "--save-samples", "-1"])
    assert "--save-samples: expected 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "demo", "x.pt", "--sample-width", "3"])
    assert "--sample-width: expected 16 or more, got 3" in capsys.readouterr().err
