"""Entropy, similarity and centroid code against hand-computed values on tiny tensors."""
import math

import pytest
import torch

from univseg.losses import CentroidBank, alignment_entropy, class_sums, masked_entropy, similarity, supervised_ce


def emb(*vectors):
    """[1, D, 1, N] embedding from N pixel vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, len(vectors[0]), 1, len(vectors))


def h(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


CENTROIDS = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # unit-normalised: [1,0], [0,1]


def test_similarity_cosine_normalises_both_and_divides_by_temperature():
    s = similarity(emb([3.0, 4.0]), CENTROIDS, "cosine", temperature=0.5)
    assert s.shape == (1, 2, 1, 1)
    assert torch.allclose(s.flatten(), torch.tensor([0.6 / 0.5, 0.8 / 0.5]))


def test_similarity_dot_keeps_embedding_norm():
    s = similarity(emb([3.0, 4.0]), CENTROIDS, "dot", temperature=1.0)
    assert torch.allclose(s.flatten(), torch.tensor([3.0, 4.0]))


def test_similarity_rejects_unknown_mode():
    with pytest.raises(ValueError, match="cosine"):
        similarity(emb([1.0, 0.0]), CENTROIDS, "l2")


def test_entropy_of_uniform_and_known_scores():
    assert masked_entropy(torch.zeros(1, 2, 1, 1)).item() == pytest.approx(math.log(2))
    assert masked_entropy(torch.zeros(1, 5, 2, 2)).item() == pytest.approx(math.log(5))
    scores = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    assert masked_entropy(scores).item() == pytest.approx(h(softmax([1.0, 0.0, -1.0])), rel=1e-6)


def test_alignment_entropy_dot_vs_cosine_hand_values():
    e = emb([3.0, 4.0], [1.0, 0.0])
    valid = torch.tensor([True, True])
    dot = alignment_entropy(e, CENTROIDS, valid, "dot", 1.0).item()
    cos = alignment_entropy(e, CENTROIDS, valid, "cosine", 1.0).item()
    assert dot == pytest.approx((h(softmax([3, 4])) + h(softmax([1, 0]))) / 2, rel=1e-6)
    assert cos == pytest.approx((h(softmax([0.6, 0.8])) + h(softmax([1, 0]))) / 2, rel=1e-6)


def test_dot_entropy_collapses_with_norm_but_cosine_does_not():
    valid = torch.tensor([True, True])
    small, big = emb([0.6, 0.8]), emb([60.0, 80.0])
    assert alignment_entropy(big, CENTROIDS, valid, "dot").item() < 1e-6
    assert alignment_entropy(small, CENTROIDS, valid, "cosine").item() == pytest.approx(
        alignment_entropy(big, CENTROIDS, valid, "cosine").item()
    )


def test_invalid_classes_are_left_out_and_never_nan():
    scores = torch.tensor([0.3, 5.0, -2.0]).view(1, 3, 1, 1)
    only_first_two = masked_entropy(scores, torch.tensor([True, True, False])).item()
    assert only_first_two == pytest.approx(h(softmax([0.3, 5.0])), rel=1e-6)
    assert masked_entropy(scores, torch.tensor([False, True, False])).item() == 0.0
    none = masked_entropy(scores.requires_grad_(), torch.tensor([False, False, False]))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(scores.grad).all()


def test_pixel_mask_averages_over_masked_pixels_only():
    scores = torch.tensor([[0.0, 0.0], [10.0, -10.0]]).T.reshape(1, 2, 1, 2)  # pixel0 uniform, pixel1 confident
    mask = torch.tensor([[[True, False]]])
    assert masked_entropy(scores, pixel_mask=mask).item() == pytest.approx(math.log(2))
    assert masked_entropy(scores, pixel_mask=torch.zeros(1, 1, 2, dtype=torch.bool)).item() == 0.0


def test_entropy_gradient_is_finite_with_masked_classes():
    e = emb([3.0, 4.0], [1.0, 1.0]).requires_grad_()
    loss = alignment_entropy(e, CENTROIDS, torch.tensor([True, False]), "cosine", 0.1)
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_class_sums_skip_ignore_and_count_pixels():
    e = emb([1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0])
    labels = torch.tensor([[[0, 2, 0, 255]]])
    sums, counts = class_sums(e, labels, num_classes=3)
    assert torch.equal(counts, torch.tensor([2.0, 0.0, 1.0]))
    assert torch.allclose(sums, torch.tensor([[6.0, 8.0], [0.0, 0.0], [3.0, 4.0]]))


def test_class_sums_of_a_feature_resolution_embedding_sum_its_bilinear_upsampling():
    """Width 2 -> 4 (align_corners=False): values (0, 4) upsample to (0, 1, 3, 4)."""
    e = emb([0.0], [4.0])
    sums, counts = class_sums(e, torch.tensor([[[0, 0, 1, 255]]]), num_classes=2)
    assert torch.equal(counts, torch.tensor([2.0, 1.0]))
    assert torch.allclose(sums, torch.tensor([[1.0], [3.0]]))


def test_centroid_bank_set_and_ema_update():
    bank = CentroidBank({"a": 3}, dim=2, mode="ema", momentum=0.5)
    bank.set_from_sums("a", torch.tensor([[6.0, 8.0], [0.0, 0.0], [3.0, 4.0]]), torch.tensor([2.0, 0.0, 1.0]))
    c, valid = bank.get("a")
    assert torch.equal(valid, torch.tensor([True, False, True]))
    assert torch.allclose(c, torch.tensor([[3.0, 4.0], [0.0, 0.0], [3.0, 4.0]]))
    # batch: class 0 mean (1, 0), class 1 first seen at (0, 2); class 2 absent stays
    bank.update("a", emb([1.0, 0.0], [0.0, 2.0]), torch.tensor([[[0, 1]]]))
    c, valid = bank.get("a")
    assert valid.all()
    assert torch.allclose(c, torch.tensor([[2.0, 2.0], [0.0, 2.0], [3.0, 4.0]]))


def test_frozen_bank_ignores_updates_and_round_trips_state():
    bank = CentroidBank({"a": 2, "b": 1}, dim=2, mode="frozen")
    bank.set_from_sums("a", torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([1.0, 2.0]))
    bank.ready = True
    bank.update("a", emb([9.0, 9.0]), torch.tensor([[[0]]]))
    assert torch.allclose(bank.get("a")[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    other = CentroidBank({"a": 2, "b": 1}, dim=2, mode="frozen")
    other.load_state_dict(bank.state_dict())
    assert other.ready and torch.equal(other.get("a")[0], bank.get("a")[0])
    with pytest.raises(RuntimeError, match="Missing key.*domains.x.centroids"):
        CentroidBank({"x": 2}, dim=2).load_state_dict(bank.state_dict())


def test_supervised_ce_matches_hand_value_and_handles_all_ignored():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2).requires_grad_()
    target = torch.tensor([[[0, 255]]])
    assert supervised_ce(logits, target).item() == pytest.approx(-math.log(softmax([2.0, 0.0])[0]), rel=1e-6)
    all_ignored = supervised_ce(logits, torch.full((1, 1, 2), 255))
    assert all_ignored.item() == 0.0
    all_ignored.backward()
    assert torch.isfinite(logits.grad).all()
