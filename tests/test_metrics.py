"""The confusion-matrix metrics against brute-force computations and known answers."""
import numpy as np
import pytest

from univseg.engine.metrics import ConfusionMatrix


def brute_force_iou(pred, gt, k, ignore=255):
    """IoU per class by set operations over pixels; NaN if a class is in neither."""
    keep = gt != ignore
    out = []
    for c in range(k):
        p, g = (pred == c) & keep, (gt == c) & keep
        union = (p | g).sum()
        out.append(np.nan if union == 0 else (p & g).sum() / union)
    return np.array(out)


def test_hand_made_mask_has_miou_exactly_one_half():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 0], [0, 0]])
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    # class 0: TP 2, union 4 -> 0.5; class 1: TP 0, union 2 -> 0
    assert cm.iou().tolist() == [0.5, 0.0]
    assert cm.miou() == 0.25
    cm2 = ConfusionMatrix(2)
    cm2.update(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]))
    # class 0: TP1 union 2 = .5 ; class 1: TP 2 union 3
    assert cm2.miou() == pytest.approx((0.5 + 2 / 3) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force_with_ignore_and_absent_classes(seed):
    rng = np.random.default_rng(seed)
    k = 6
    cm = ConfusionMatrix(k)
    preds, gts = [], []
    for _ in range(3):  # dataset-level accumulation over several images
        gt = rng.integers(0, 4, size=(17, 23))  # classes 4 and 5 never in gt
        gt[rng.random(gt.shape) < 0.2] = 255
        pred = rng.integers(0, 5, size=gt.shape)  # class 5 never predicted
        cm.update(pred, gt)
        preds.append(pred)
        gts.append(gt)
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    expected = brute_force_iou(pred, gt, k)
    got = cm.iou()
    assert np.isnan(got[5]) and np.isnan(expected[5])  # absent from both: NaN, not 0
    assert got[4] == 0.0  # predicted but never true: IoU 0
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert cm.miou() == pytest.approx(np.nanmean(expected))
    keep = gt != 255
    assert cm.pixel_accuracy() == pytest.approx((pred[keep] == gt[keep]).mean())
    assert int(cm.mat.sum()) == keep.sum()


def test_unmapped_predictions_are_errors_but_no_false_positives():
    cm = ConfusionMatrix(2)
    cm.update(np.array([-1, -1, 0, 1]), np.array([0, 1, 0, 1]))
    assert cm.iou().tolist() == [0.5, 0.5]
    assert cm.pixel_accuracy() == 0.5


def test_summary_is_json_safe_and_named():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0]), np.array([0, 0]))
    s = cm.summary(["a", "b", "c"])
    assert s["mIoU"] == 1.0 and s["per_class_iou"] == {"a": 1.0, "b": None, "c": None}
    assert s["pixels"] == 2


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="pixels"):
        ConfusionMatrix(2).update(np.zeros(3), np.zeros(4))
