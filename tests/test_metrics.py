"""fastcnn.metrics against sklearn.metrics on random and edge-case inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

import fastcnn
from fastcnn import metrics as M

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
AVERAGES = ["micro", "macro", "weighted", None]


def _device(name: str) -> torch.device:
    if name == "cuda" and not fastcnn.cuda_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of fastcnn")
    return torch.device(name)


def _np(t):
    return t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def assert_equal_sk(ours, theirs, atol=1e-12):
    ours = _np(ours).astype(np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol, equal_nan=True)


def random_case(seed: int, n: int = 300, c: int = 5, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(
        target, c
    )
    if ties:
        logits = (logits * 2).round() / 2  # many exactly equal scores
    return logits.softmax(1), target


# ----------------------------------------------------------------------------------------------------------
# accuracy, confusion matrix, precision/recall/F1
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_and_top_k(device, seed):
    dev = _device(device)
    probs, target = random_case(seed, ties=seed == 1)
    probs, target = probs.to(dev), target.to(dev)
    labels = probs.argmax(1)
    assert float(M.accuracy(labels, target)) == pytest.approx(
        skm.accuracy_score(_np(target), _np(labels)), abs=0
    )
    for k in (1, 2, 3):
        expected = skm.top_k_accuracy_score(_np(target), _np(probs), k=k, labels=range(5))
        assert float(M.accuracy(probs, target, top_k=k)) == pytest.approx(expected, abs=1e-15)


def test_top_k_ties_follow_sklearn():
    # Every score tied: sklearn ranks the higher class index first.
    scores = torch.zeros(6, 4)
    target = torch.tensor([0, 1, 2, 3, 3, 2])
    for k in (1, 2, 3):
        expected = skm.top_k_accuracy_score(_np(target), _np(scores), k=k, labels=range(4))
        assert float(M.accuracy(scores, target, top_k=k)) == pytest.approx(expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [None, "true", "pred", "all"])
def test_confusion_matrix(device, normalize):
    dev = _device(device)
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 6, (200,), generator=g)
    preds = torch.randint(0, 5, (200,), generator=g)  # class 5 never predicted: an empty column
    ours = M.confusion_matrix(preds.to(dev), target.to(dev), num_classes=7, normalize=normalize)
    theirs = skm.confusion_matrix(_np(target), _np(preds), labels=range(7), normalize=normalize)
    assert ours.device.type == dev.type
    assert_equal_sk(ours, theirs)
    if normalize is None:
        assert ours.dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("zero_division", ["warn", 0.0, 1.0, math.nan])
def test_precision_recall_f1_multiclass(device, average, zero_division):
    dev = _device(device)
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 5, (120,), generator=g)
    preds = torch.randint(0, 5, (120,), generator=g)
    preds[preds == 3] = 0  # class 3 never predicted: precision undefined
    target[target == 4] = 1  # class 4 never true: recall undefined
    preds[preds == 2] = 1
    target[target == 2] = 1  # class 2 neither true nor predicted: F1 undefined too
    kwargs = dict(average=average, zero_division=zero_division)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, s = M.precision_recall_fscore(preds.to(dev), target.to(dev), num_classes=5, **kwargs)
        sp, sr, sf, ss = skm.precision_recall_fscore_support(
            _np(target), _np(preds), labels=range(5), **kwargs
        )
        assert_equal_sk(p, sp)
        assert_equal_sk(r, sr)
        assert_equal_sk(f, sf)
        if average is None:
            assert_equal_sk(s, ss)
        for ours, theirs in (
            (M.precision, skm.precision_score),
            (M.recall, skm.recall_score),
            (M.f1_score, skm.f1_score),
        ):
            expected = theirs(_np(target), _np(preds), labels=range(5), **kwargs)
            assert_equal_sk(ours(preds.to(dev), target.to(dev), num_classes=5, **kwargs), expected)


def test_warns_like_sklearn():
    target = torch.tensor([0, 1, 1, 0])
    preds = torch.tensor([0, 0, 0, 0])  # class 1 never predicted
    with pytest.warns(M.UndefinedMetricWarning, match="Precision"):
        value = M.precision(preds, target)
    assert float(value) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(float(M.precision(preds, target, zero_division=math.nan)))
        assert float(M.precision(preds, target, zero_division=1.0)) == 1.0


@pytest.mark.parametrize("pos_label", [0, 1])
@pytest.mark.parametrize("seed", [5, 6])
def test_binary(pos_label, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (80,), generator=g)
    preds = torch.where(torch.rand(80, generator=g) < 0.8, target, 1 - target)
    for ours, theirs in (
        (M.precision, skm.precision_score),
        (M.recall, skm.recall_score),
        (M.f1_score, skm.f1_score),
    ):
        expected = theirs(_np(target), _np(preds), pos_label=pos_label)
        assert_equal_sk(ours(preds, target, pos_label=pos_label), expected)


def test_all_one_class():
    target = torch.ones(10, dtype=torch.long)
    preds = torch.ones(10, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for average in ("binary", "macro", "weighted", "micro"):
            expected = skm.f1_score(_np(target), _np(preds), average=average, labels=[0, 1])
            assert_equal_sk(M.f1_score(preds, target, average=average, num_classes=2), expected)
        zeros = torch.zeros(10, dtype=torch.long)
        assert_equal_sk(M.precision(zeros, zeros), skm.precision_score(_np(zeros), _np(zeros)))
        assert_equal_sk(M.recall(zeros, zeros), skm.recall_score(_np(zeros), _np(zeros)))


def test_scores_as_preds_use_argmax():
    probs, target = random_case(7)
    expected = skm.f1_score(_np(target), _np(probs.argmax(1)), average="macro")
    assert_equal_sk(M.f1_score(probs, target, average="macro"), expected)


# ----------------------------------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_roc_curve_binary(device, ties, drop_intermediate):
    dev = _device(device)
    g = torch.Generator().manual_seed(8)
    target = torch.randint(0, 2, (250,), generator=g)
    scores = torch.rand(250, generator=g, dtype=torch.float64) + 0.4 * target
    if ties:
        scores = (scores * 8).round() / 8
    fpr, tpr, thr = M.roc_curve(scores.to(dev), target.to(dev), drop_intermediate=drop_intermediate)
    sfpr, stpr, sthr = skm.roc_curve(_np(target), _np(scores), drop_intermediate=drop_intermediate)
    assert fpr.device.type == dev.type
    assert_equal_sk(fpr, sfpr)
    assert_equal_sk(tpr, stpr)
    assert_equal_sk(thr, sthr, atol=0)
    assert float(M.roc_auc_score(scores.to(dev), target.to(dev))) == pytest.approx(
        skm.roc_auc_score(_np(target), _np(scores)), abs=1e-12
    )


def test_roc_curve_float32_scores_and_pos_label():
    g = torch.Generator().manual_seed(9)
    target = torch.randint(0, 3, (100,), generator=g)
    scores = torch.rand(100, generator=g)  # float32 thresholds come back as float64, like sklearn
    fpr, tpr, thr = M.roc_curve(scores, target, pos_label=2)
    sfpr, stpr, sthr = skm.roc_curve(_np(target), _np(scores), pos_label=2)
    assert_equal_sk(fpr, sfpr)
    assert_equal_sk(tpr, stpr)
    assert_equal_sk(thr, sthr, atol=0)


def test_roc_single_class_present():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    target = torch.ones(4, dtype=torch.long)
    with pytest.warns(M.UndefinedMetricWarning):
        fpr, tpr, thr = M.roc_curve(scores, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sfpr, stpr, sthr = skm.roc_curve(_np(target), _np(scores))
        assert_equal_sk(fpr, sfpr)
        assert_equal_sk(tpr, stpr)
        assert math.isnan(float(M.roc_auc_score(scores, target)))
        assert math.isnan(skm.roc_auc_score(_np(target), _np(scores)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("average", ["macro", "weighted", "micro", None])
def test_roc_auc_multiclass_ovr(device, ties, average):
    dev = _device(device)
    probs, target = random_case(10, n=200, c=4, ties=ties)
    ours = M.roc_auc_score(probs.to(dev), target.to(dev), average=average)
    if average == "micro":
        onehot = np.eye(4)[_np(target)]
        theirs = skm.roc_auc_score(onehot, _np(probs), average="micro")
    elif average is None:
        theirs = [skm.roc_auc_score(_np(target) == c, _np(probs[:, c])) for c in range(4)]
    else:
        theirs = skm.roc_auc_score(
            _np(target), _np(probs), multi_class="ovr", average=average, labels=range(4)
        )
    assert_equal_sk(ours, theirs)
    curves = M.roc_curve(probs, target)
    for c, (fpr, tpr, thr) in enumerate(curves):
        sfpr, stpr, sthr = skm.roc_curve(_np(target), _np(probs[:, c]), pos_label=c)
        assert_equal_sk(fpr, sfpr)
        assert_equal_sk(tpr, stpr)
        assert_equal_sk(thr, sthr, atol=0)


def test_roc_auc_class_absent():
    probs, target = random_case(11, n=120, c=4)
    target[target == 2] = 0  # class 2 absent from target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for average in ("macro", "weighted"):
            theirs = skm.roc_auc_score(
                _np(target), _np(probs), multi_class="ovr", average=average, labels=range(4)
            )
            assert_equal_sk(M.roc_auc_score(probs, target, average=average), theirs)
        # Precision/recall/F1 with the absent class still counted (labels=range(4)).
        for average in ("macro", "weighted"):
            expected = skm.f1_score(_np(target), _np(probs.argmax(1)), average=average, labels=range(4))
            assert_equal_sk(M.f1_score(probs, target, average=average), expected)


def test_auc_matches_sklearn():
    x = torch.tensor([0.0, 0.1, 0.4, 0.4, 1.0])
    y = torch.tensor([0.0, 0.5, 0.6, 0.9, 1.0])
    assert float(M.auc(x, y)) == pytest.approx(skm.auc(_np(x), _np(y)))
    assert float(M.auc(x.flip(0), y.flip(0))) == pytest.approx(skm.auc(_np(x.flip(0)), _np(y.flip(0))))
    with pytest.raises(ValueError, match="neither increasing nor decreasing"):
        M.auc(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------


def test_empty_and_bad_inputs():
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="empty"):
        M.accuracy(empty, empty)
    with pytest.raises(ValueError, match="empty"):
        M.f1_score(empty, empty, average="macro")
    with pytest.raises(ValueError, match="empty"):
        M.confusion_matrix(empty, empty)
    with pytest.raises(ValueError, match="empty"):
        M.roc_curve(torch.zeros(0), empty)
    with pytest.raises(ValueError, match="empty"):
        M.roc_auc_score(torch.zeros(0, 3), empty)
    with pytest.raises(ValueError, match="samples but target has"):
        M.accuracy(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels must be in 0 .. 2"):
        M.confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="negative"):
        M.accuracy(torch.tensor([0, 1]), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="average='binary'"):
        M.f1_score(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="zero_division"):
        M.f1_score(torch.tensor([0, 1]), torch.tensor([0, 1]), zero_division=0.5)
    with pytest.raises(ValueError, match="NaN"):
        M.roc_curve(torch.tensor([0.1, math.nan]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="top_k"):
        M.accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), top_k=2)
    with pytest.raises(ValueError, match="no samples"):
        M.ClassificationMetrics(3).compute()


# ----------------------------------------------------------------------------------------------------------
# streaming and plots
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_equals_one_shot(device):
    dev = _device(device)
    probs, target = random_case(12, n=257, c=5)
    probs, target = probs.to(dev), target.to(dev)
    stream = M.ClassificationMetrics(5, top_k=(1, 3))
    for start in range(0, 257, 64):
        stream.update(probs[start : start + 64], target[start : start + 64])
    report = stream.compute()
    assert report.num_samples == 257
    assert report.accuracy == pytest.approx(float(M.accuracy(probs.argmax(1), target)), abs=1e-15)
    assert report.top_k_accuracy[3] == pytest.approx(float(M.accuracy(probs, target, top_k=3)), abs=1e-12)
    assert torch.equal(report.confusion_matrix, M.confusion_matrix(probs, target))
    p, r, f, s = M.precision_recall_fscore(probs, target, average=None)
    assert torch.equal(report.precision, p) and torch.equal(report.recall, r) and torch.equal(report.f1, f)
    assert torch.equal(report.support, s)
    for avg in ("macro", "weighted"):
        assert report.__dict__[avg]["f1"] == pytest.approx(
            float(M.f1_score(probs, target, average=avg)), abs=1e-15
        )
        assert report.__dict__[avg]["auc"] == pytest.approx(
            float(M.roc_auc_score(probs, target, average=avg))
        )
    torch.testing.assert_close(report.auc, M.roc_auc_score(probs, target, average=None))
    assert "macro avg" in report.format()
    # Labels only: no top-k, no ROC.
    labels_only = M.ClassificationMetrics(5)
    labels_only.update(probs.argmax(1), target)
    rep = labels_only.compute()
    assert rep.auc is None and rep.top_k_accuracy == {}


def test_plots_written(tmp_path):
    probs, target = random_case(13, n=100, c=3)
    roc_path = M.plot_roc(
        M.roc_curve(probs, target), tmp_path / "roc.png", aucs=M.roc_auc_score(probs, target, average=None)
    )
    cm_path = M.plot_confusion_matrix(
        M.confusion_matrix(probs, target), tmp_path / "cm.png", class_names=["a", "b", "c"]
    )
    for path in (roc_path, cm_path):
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    M.plot_roc(M.roc_curve(probs[:, 0], target == 0), tmp_path / "binary.png")
