import numpy as np
import pytest
import torch

from labelgen.metrics import ConfusionMatrix


def test_hand_computed_case():
    # target / prediction over 3 classes, one ignored pixel (255)
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # confusion rows=target: class0: [1,1,0]; class1: [0,2,0]; class2: [0,1,0]
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    s = cm.compute()
    # IoU0 = 1/(1+0+1) = 0.5 ; IoU1 = 2/(2+2+0) = 0.5 ; IoU2 = 0/(0+0+1) = 0
    assert s.per_class_iou == pytest.approx([0.5, 0.5, 0.0])
    assert s.miou == pytest.approx(1 / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)


def test_accumulates_over_batches_and_accepts_tensors():
    cm_once, cm_parts = ConfusionMatrix(4), ConfusionMatrix(4)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 4, (6, 8, 8), generator=g)
    p = torch.randint(0, 4, (6, 8, 8), generator=g)
    cm_once.update(p, t)
    for i in range(6):
        cm_parts.update(p[i], t[i])
    assert (cm_once.matrix == cm_parts.matrix).all()
    assert cm_once.matrix.sum() == 6 * 64


def test_absent_class_is_nan_and_excluded_from_mean():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    s = cm.compute()
    assert np.isnan(s.per_class_iou[2]) and s.miou == 1.0
    assert "n/a" in s.table(["a", "b", "c"]) and "**1.0000**" in s.table(["a", "b", "c"])


def test_out_of_range_ids_raise():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError):
        cm.update(np.array([0]), np.array([5]))
