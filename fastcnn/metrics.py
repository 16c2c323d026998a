"""Classification metrics on tensors, computed on the device the tensors live on.

Accuracy (top-1 / top-k), precision, recall and F1 (binary, or multiclass with micro / macro /
weighted averaging), the confusion matrix, ROC curves and the area under them (binary and
one-vs-rest multiclass), each defined to return what ``sklearn.metrics`` returns on the same data:

* the confusion matrix is one ``bincount`` of ``target * C + pred``; precision, recall and F1 are
  read off its diagonal and margins;
* ROC thresholds come from one descending sort and a cumulative sum of the positives, with ties in
  the scores collapsed to one threshold exactly as ``sklearn.metrics.roc_curve`` does, and
  ``drop_intermediate`` (default True, as sklearn) dropping the collinear points the same way;
* the AUC is the trapezoidal area under that curve.

Classes are ``0 .. num_classes - 1`` (``num_classes`` defaults to ``max(label) + 1``), which is sklearn
with ``labels=range(num_classes)``: a class absent from both ``preds`` and ``target`` still counts.

Zero division follows sklearn's ``zero_division`` parameter: ``"warn"`` (the default) gives 0.0 and
emits :class:`UndefinedMetricWarning`, while 0.0, 1.0 or ``nan`` give that value silently. A class's F1
is undefined only when it has neither true nor predicted samples (sklearn >= 1.3). Averages ignore NaN
entries (sklearn's ``_nanaverage``). ROC AUC with a single class present in ``target`` is NaN with a
warning, as sklearn >= 1.6; a macro average containing such a class is NaN, a weighted one gives it
weight 0.

Results are 0-d or 1-d float64 tensors on the input's device (counts are int64). The only
device-to-host synchronisations are the input checks and the data-dependent sizes (the number of
distinct thresholds of a ROC curve; ``num_classes`` when not given).

:class:`ClassificationMetrics` is the streaming form: ``update(output, target)`` per batch,
``compute()`` at the end. :func:`plot_roc` and :func:`plot_confusion_matrix` write PNG files with
matplotlib's Agg backend.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ClassificationMetrics",
    "ClassificationReport",
    "UndefinedMetricWarning",
    "accuracy",
    "auc",
    "confusion_matrix",
    "f1_score",
    "plot_confusion_matrix",
    "plot_roc",
    "precision",
    "precision_recall_fscore",
    "recall",
    "roc_auc_score",
    "roc_curve",
]

Average = Literal["binary", "micro", "macro", "weighted"] | None
ZeroDivision = Literal["warn"] | float


class UndefinedMetricWarning(UserWarning):
    """A metric was undefined on the data (a zero denominator) and replaced by ``zero_division``."""


# ----------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------


def _as_tensor(x: Tensor | Sequence, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(x).__name__}") from exc


def _check_target(target: Tensor | Sequence, n: int | None = None) -> Tensor:
    target = _as_tensor(target, "target")
    if target.dim() != 1:
        raise ValueError(f"target must be 1-D (one class label per sample), got shape {tuple(target.shape)}")
    if target.numel() == 0:
        raise ValueError("target is empty: metrics need at least one sample")
    if target.is_floating_point() or target.is_complex():
        if not torch.equal(target, target.round()):
            raise ValueError("target must hold integer class labels, got non-integer values")
    target = target.long()
    if n is not None and target.shape[0] != n:
        raise ValueError(f"preds/scores have {n} samples but target has {target.shape[0]}")
    if bool((target < 0).any()):
        raise ValueError("target holds negative class labels; classes are 0 .. num_classes - 1")
    return target


def _labels_from(preds: Tensor | Sequence, name: str = "preds") -> Tensor:
    """Class labels from labels ``[N]`` or scores ``[N, C]`` (argmax, first maximum as numpy)."""
    preds = _as_tensor(preds, name)
    if preds.dim() == 2:
        if preds.shape[0] == 0:
            raise ValueError(f"{name} is empty: metrics need at least one sample")
        return preds.argmax(dim=1)
    if preds.dim() != 1:
        raise ValueError(f"{name} must be labels [N] or scores [N, C], got shape {tuple(preds.shape)}")
    if preds.numel() == 0:
        raise ValueError(f"{name} is empty: metrics need at least one sample")
    if preds.is_floating_point():
        if not torch.equal(preds, preds.round()):
            raise ValueError(
                f"1-D floating {name} must hold class labels; for scores of the positive class use "
                "roc_curve/roc_auc_score, or pass [N, C] scores"
            )
    if bool((preds < 0).any()):
        raise ValueError(f"{name} holds negative class labels")
    return preds.long()


def _pair(
    preds: Tensor | Sequence, target: Tensor | Sequence, num_classes: int | None
) -> tuple[Tensor, Tensor, int]:
    labels = _labels_from(preds)
    target = _check_target(target, labels.shape[0])
    if labels.device != target.device:
        raise ValueError(f"preds are on {labels.device} but target is on {target.device}")
    preds_t = _as_tensor(preds, "preds")
    score_classes = preds_t.shape[1] if preds_t.dim() == 2 else None
    if num_classes is None:
        num_classes = score_classes or int(torch.maximum(labels.max(), target.max()).item()) + 1
    elif num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if score_classes is not None and score_classes != num_classes:
        raise ValueError(f"scores have {score_classes} columns but num_classes is {num_classes}")
    if bool((labels >= num_classes).any()) or bool((target >= num_classes).any()):
        raise ValueError(f"labels must be in 0 .. {num_classes - 1} (num_classes={num_classes})")
    return labels, target, num_classes


def _zero_division_value(zero_division: ZeroDivision) -> float:
    if zero_division == "warn":
        return 0.0
    if isinstance(zero_division, int | float) and (zero_division in (0, 1) or math.isnan(zero_division)):
        return float(zero_division)
    raise ValueError(f"zero_division must be 'warn', 0, 1 or nan, got {zero_division!r}")


# ----------------------------------------------------------------------------------------------------------
# accuracy and the confusion matrix
# ----------------------------------------------------------------------------------------------------------


def accuracy(preds: Tensor | Sequence, target: Tensor | Sequence, top_k: int = 1) -> Tensor:
    """Fraction of samples whose class is predicted (top-1) or among the ``top_k`` highest scores.

    ``preds`` is labels ``[N]`` or scores ``[N, C]`` (logits or probabilities). For labels this is
    ``sklearn.metrics.accuracy_score``; for scores it is ``top_k_accuracy_score`` including its tie rule:
    among equal scores the higher class index ranks first.
    """
    preds = _as_tensor(preds, "preds")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if preds.dim() == 1:
        if top_k != 1:
            raise ValueError("top_k > 1 needs scores [N, C], not labels")
        labels, target, _ = _pair(preds, target, None)
        return (labels == target).double().mean()
    if preds.dim() != 2:
        raise ValueError(f"preds must be labels [N] or scores [N, C], got shape {tuple(preds.shape)}")
    target = _check_target(target, preds.shape[0])
    num_classes = preds.shape[1]
    if bool((target >= num_classes).any()):
        raise ValueError(f"target labels must be < the number of score columns ({num_classes})")
    target = target.to(preds.device)
    own = preds.gather(1, target[:, None])
    classes = torch.arange(num_classes, device=preds.device)
    # Rank of the true class: classes scored higher, plus tied classes with a larger index.
    rank = (preds > own).sum(1) + ((preds == own) & (classes[None, :] > target[:, None])).sum(1)
    return (rank < top_k).double().mean()


def confusion_matrix(
    preds: Tensor | Sequence,
    target: Tensor | Sequence,
    num_classes: int | None = None,
    normalize: Literal["true", "pred", "all"] | None = None,
) -> Tensor:
    """``[C, C]`` counts, row = true class, column = predicted class (``sklearn.metrics.confusion_matrix``).

    ``normalize`` divides by the row sums ("true"), column sums ("pred") or the total ("all"); empty
    rows/columns give 0 as in sklearn. Counts are int64, normalised matrices float64.
    """
    labels, target, num_classes = _pair(preds, target, num_classes)
    cm = torch.bincount(target * num_classes + labels, minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes)
    if normalize is None:
        return cm
    cm = cm.double()
    if normalize == "true":
        cm = cm / cm.sum(1, keepdim=True)
    elif normalize == "pred":
        cm = cm / cm.sum(0, keepdim=True)
    elif normalize == "all":
        cm = cm / cm.sum()
    else:
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")
    return torch.nan_to_num(cm, nan=0.0)


# ----------------------------------------------------------------------------------------------------------
# precision, recall, F1
# ----------------------------------------------------------------------------------------------------------


def _divide(num: Tensor, den: Tensor, zero_division: ZeroDivision, what: str, warn: bool) -> Tensor:
    value = _zero_division_value(zero_division)
    zero = den == 0
    out = torch.where(zero, torch.full_like(num, value), num / torch.where(zero, torch.ones_like(den), den))
    if warn and zero_division == "warn" and bool(zero.any()):
        warnings.warn(
            f"{what} is ill-defined and being set to 0.0 for classes with no {_NO[what]} samples. "
            "Use `zero_division` to control this behaviour.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    return out


_NO = {"Precision": "predicted", "Recall": "true", "F-score": "true nor predicted"}


def _nanaverage(values: Tensor, weights: Tensor | None) -> Tensor:
    keep = ~torch.isnan(values)
    if weights is None:
        return values.nanmean()
    w = torch.where(keep, weights, torch.zeros_like(weights))
    v = torch.where(keep, values, torch.zeros_like(values))
    total = w.sum()
    # All remaining weights zero: an unweighted mean of the defined values (sklearn does the same).
    return torch.where(total > 0, (v * w).sum() / torch.where(total > 0, total, 1.0), values.nanmean())


def _from_stats(
    tp: Tensor,
    pred_sum: Tensor,
    true_sum: Tensor,
    average: Average,
    zero_division: ZeroDivision,
    warn_for: tuple[str, ...],
    pos_label: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    tp, pred_sum, true_sum = tp.double(), pred_sum.double(), true_sum.double()
    if average == "micro":
        tp, pred_sum, true_sum = (
            tp.sum(0, keepdim=True),
            pred_sum.sum(0, keepdim=True),
            true_sum.sum(0, keepdim=True),
        )
    elif average == "binary":
        tp, pred_sum, true_sum = (
            tp[pos_label : pos_label + 1],
            pred_sum[pos_label : pos_label + 1],
            true_sum[pos_label : pos_label + 1],
        )
    p = _divide(tp, pred_sum, zero_division, "Precision", "precision" in warn_for)
    r = _divide(tp, true_sum, zero_division, "Recall", "recall" in warn_for)
    f = _divide(2 * tp, true_sum + pred_sum, zero_division, "F-score", "f-score" in warn_for)
    if average is None:
        return p, r, f, true_sum.long()
    if average in ("micro", "binary"):
        return p[0], r[0], f[0], true_sum.sum().long()
    weights = true_sum if average == "weighted" else None
    return _nanaverage(p, weights), _nanaverage(r, weights), _nanaverage(f, weights), true_sum.sum().long()


def _counts(preds, target, num_classes: int | None, average: Average, pos_label: int):
    if average not in ("binary", "micro", "macro", "weighted", None):
        raise ValueError(f"average must be 'binary', 'micro', 'macro', 'weighted' or None, got {average!r}")
    if average == "binary":
        labels, target, num_classes = _pair(preds, target, num_classes)
        if num_classes > 2:
            raise ValueError(
                f"average='binary' needs labels in {{0, 1}}, got {num_classes} classes; "
                "choose average='micro', 'macro', 'weighted' or None"
            )
        if pos_label not in (0, 1):
            raise ValueError(f"pos_label must be 0 or 1, got {pos_label!r}")
        num_classes = 2
    else:
        labels, target, num_classes = _pair(preds, target, num_classes)
    cm = confusion_matrix(labels, target, num_classes)
    return cm.diagonal(), cm.sum(0), cm.sum(1)


def precision_recall_fscore(
    preds: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    num_classes: int | None = None,
    average: Average = "binary",
    pos_label: int = 1,
    zero_division: ZeroDivision = "warn",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Precision, recall, F1 and support, as ``sklearn.metrics.precision_recall_fscore_support``.

    ``preds`` is labels ``[N]`` or scores ``[N, C]`` (argmax). ``average``: "binary" (the class
    ``pos_label`` of a 0/1 problem), "micro" (global counts), "macro" (unweighted mean over classes),
    "weighted" (mean weighted by support) or None (per-class ``[C]`` tensors). The support returned is
    the per-class count for ``average=None`` and the total otherwise (sklearn returns None there).
    """
    tp, pred_sum, true_sum = _counts(preds, target, num_classes, average, pos_label)
    warn_for = ("precision", "recall", "f-score")
    return _from_stats(tp, pred_sum, true_sum, average, zero_division, warn_for, pos_label)


def precision(
    preds: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    num_classes: int | None = None,
    average: Average = "binary",
    pos_label: int = 1,
    zero_division: ZeroDivision = "warn",
) -> Tensor:
    """Precision ``tp / (tp + fp)``, as ``sklearn.metrics.precision_score`` (see precision_recall_fscore)."""
    tp, pred_sum, true_sum = _counts(preds, target, num_classes, average, pos_label)
    return _from_stats(tp, pred_sum, true_sum, average, zero_division, ("precision",), pos_label)[0]


def recall(
    preds: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    num_classes: int | None = None,
    average: Average = "binary",
    pos_label: int = 1,
    zero_division: ZeroDivision = "warn",
) -> Tensor:
    """Recall ``tp / (tp + fn)``, as ``sklearn.metrics.recall_score`` (see precision_recall_fscore)."""
    tp, pred_sum, true_sum = _counts(preds, target, num_classes, average, pos_label)
    return _from_stats(tp, pred_sum, true_sum, average, zero_division, ("recall",), pos_label)[1]


def f1_score(
    preds: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    num_classes: int | None = None,
    average: Average = "binary",
    pos_label: int = 1,
    zero_division: ZeroDivision = "warn",
) -> Tensor:
    """F1 ``2 tp / (2 tp + fp + fn)``, as ``sklearn.metrics.f1_score`` (see precision_recall_fscore)."""
    tp, pred_sum, true_sum = _counts(preds, target, num_classes, average, pos_label)
    return _from_stats(tp, pred_sum, true_sum, average, zero_division, ("f-score",), pos_label)[2]


# ----------------------------------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------------------------------


def _binary_roc(
    scores: Tensor, positive: Tensor, drop_intermediate: bool, warn: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    scores = scores.double()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    hits = positive[order].double()
    n = scores.shape[0]
    # The last sample of each run of tied scores closes one threshold.
    distinct = torch.nonzero(sorted_scores[1:] != sorted_scores[:-1]).flatten()
    last = torch.tensor([n - 1], device=scores.device, dtype=distinct.dtype)
    threshold_idx = torch.cat([distinct, last])
    tps = torch.cumsum(hits, 0)[threshold_idx]
    fps = 1.0 + threshold_idx.double() - tps
    thresholds = sorted_scores[threshold_idx]
    if drop_intermediate and fps.shape[0] > 2:
        # Keep a point only where the curve bends: non-zero second differences of fps or tps.
        bend = (torch.diff(fps, n=2) != 0) | (torch.diff(tps, n=2) != 0)
        true = torch.ones(1, dtype=torch.bool, device=scores.device)
        keep = torch.cat([true, bend, true])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    zero = torch.zeros(1, dtype=torch.float64, device=scores.device)
    tps, fps = torch.cat([zero, tps]), torch.cat([zero, fps])
    thresholds = torch.cat([torch.full_like(zero, math.inf), thresholds])
    n_neg, n_pos = fps[-1], tps[-1]
    if bool(n_neg <= 0):
        if warn:
            warnings.warn(
                "No negative samples in target: the false positive rate is NaN", UndefinedMetricWarning, 3
            )
        fpr = torch.full_like(fps, math.nan)
    else:
        fpr = fps / n_neg
    if bool(n_pos <= 0):
        if warn:
            warnings.warn(
                "No positive samples in target: the true positive rate is NaN", UndefinedMetricWarning, 3
            )
        tpr = torch.full_like(tps, math.nan)
    else:
        tpr = tps / n_pos
    return fpr, tpr, thresholds


def _check_scores(scores: Tensor | Sequence, target: Tensor | Sequence) -> tuple[Tensor, Tensor]:
    scores = _as_tensor(scores, "scores")
    if scores.dim() not in (1, 2):
        raise ValueError(
            f"scores must be [N] (binary) or [N, C] (one column per class), got {tuple(scores.shape)}"
        )
    if scores.shape[0] == 0:
        raise ValueError("scores are empty: metrics need at least one sample")
    if not scores.is_floating_point():
        scores = scores.double()
    target = _check_target(target, scores.shape[0]).to(scores.device)
    return scores, target


def roc_curve(
    scores: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    pos_label: int = 1,
    drop_intermediate: bool = True,
) -> tuple[Tensor, Tensor, Tensor] | list[tuple[Tensor, Tensor, Tensor]]:
    """ROC curve ``(fpr, tpr, thresholds)``, exactly ``sklearn.metrics.roc_curve``.

    Binary: ``scores`` ``[N]`` (higher = more positive), positives are ``target == pos_label``.
    Multiclass: ``scores`` ``[N, C]`` gives a list of C one-vs-rest curves (class c against the rest).
    ``thresholds[0]`` is ``inf`` (the curve starts at (0, 0)); tied scores form one threshold;
    ``drop_intermediate`` removes the points on straight segments. A rate with no samples to divide by
    (no negatives / no positives) is NaN, with an :class:`UndefinedMetricWarning`.
    """
    scores, target = _check_scores(scores, target)
    if scores.dim() == 1:
        return _binary_roc(scores, target == pos_label, drop_intermediate)
    return [_binary_roc(scores[:, c], target == c, drop_intermediate) for c in range(scores.shape[1])]


def auc(x: Tensor, y: Tensor) -> Tensor:
    """Area under a curve by the trapezoidal rule, ``x`` monotonic (``sklearn.metrics.auc``)."""
    x, y = _as_tensor(x, "x").double(), _as_tensor(y, "y").double()
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"at least 2 points are needed to compute an area under a curve, got {x.shape[0]}")
    dx = torch.diff(x)
    if bool((dx < 0).any()):
        if bool((dx <= 0).all()):
            return -torch.trapezoid(y, x)
        raise ValueError("x is neither increasing nor decreasing")
    return torch.trapezoid(y, x)


def _binary_auc(scores: Tensor, positive: Tensor) -> Tensor:
    n_pos = positive.sum()
    if bool(n_pos == 0) or bool(n_pos == positive.shape[0]):
        warnings.warn(
            "Only one class is present in target: ROC AUC is not defined (NaN)", UndefinedMetricWarning, 3
        )
        return torch.tensor(math.nan, dtype=torch.float64, device=scores.device)
    fpr, tpr, _ = _binary_roc(scores, positive, drop_intermediate=True, warn=False)
    return torch.trapezoid(tpr, fpr)


def roc_auc_score(
    scores: Tensor | Sequence,
    target: Tensor | Sequence,
    *,
    average: Literal["micro", "macro", "weighted"] | None = "macro",
) -> Tensor:
    """Area under the ROC curve, as ``sklearn.metrics.roc_auc_score`` (``multi_class="ovr"``).

    Binary: ``scores`` ``[N]`` with ``target`` in {0, 1} (1 is positive). Multiclass: ``scores``
    ``[N, C]`` and one-vs-rest AUCs averaged by ``average``: "macro" (mean; NaN if a class is absent
    from ``target``), "weighted" (by class prevalence), "micro" (all classes pooled) or None (per class).
    Unlike sklearn, scores need not sum to 1 (logits rank the same way as probabilities per column).
    """
    scores, target = _check_scores(scores, target)
    if scores.dim() == 1:
        if bool((target > 1).any()):
            raise ValueError("binary ROC AUC needs target in {0, 1}; pass [N, C] scores for multiclass")
        return _binary_auc(scores, target == 1)
    num_classes = scores.shape[1]
    if bool((target >= num_classes).any()):
        raise ValueError(f"target labels must be < the number of score columns ({num_classes})")
    one_hot = torch.nn.functional.one_hot(target, num_classes).bool()
    if average == "micro":
        return _binary_auc(scores.flatten(), one_hot.flatten())
    if average not in ("macro", "weighted", None):
        raise ValueError(f"average must be 'micro', 'macro', 'weighted' or None, got {average!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_class = torch.stack([_binary_auc(scores[:, c], one_hot[:, c]) for c in range(num_classes)])
    if caught:
        warnings.warn(
            "Only one class is present in target for some one-vs-rest problems (a class absent or "
            "alone): their ROC AUC is NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    if average is None:
        return per_class
    if average == "macro":
        return per_class.mean()
    weights = one_hot.sum(0).double()
    per_class = torch.where(weights == 0, torch.zeros_like(per_class), per_class)
    return (per_class * weights).sum() / weights.sum()


# ----------------------------------------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClassificationReport:
    """Everything :meth:`ClassificationMetrics.compute` measures; tensors on the metric's device."""

    num_samples: int
    accuracy: float
    top_k_accuracy: dict[int, float]
    confusion_matrix: Tensor  # [C, C] int64, row = true class
    precision: Tensor  # [C] per class
    recall: Tensor
    f1: Tensor
    support: Tensor  # [C] int64
    macro: dict[str, float]  # precision / recall / f1 / auc averages
    weighted: dict[str, float]
    auc: Tensor | None = None  # [C] one-vs-rest ROC AUC (None without scores)
    roc: list[tuple[Tensor, Tensor, Tensor]] | None = None  # per class (fpr, tpr, thresholds)

    def format(self, class_names: Sequence[str] | None = None, digits: int = 4) -> str:
        """A text table in the style of ``sklearn.metrics.classification_report``."""
        num_classes = self.confusion_matrix.shape[0]
        names = (
            [str(n) for n in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
        )
        width = max(12, *(len(n) for n in names))
        head = f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'auc':>10} {'support':>8}"
        rows = [head, ""]
        auc_values = self.auc.tolist() if self.auc is not None else [math.nan] * num_classes
        for name, p, r, f, a, s in zip(
            names,
            self.precision.tolist(),
            self.recall.tolist(),
            self.f1.tolist(),
            auc_values,
            self.support.tolist(),
            strict=True,
        ):
            rows.append(
                f"{name:>{width}} {p:>10.{digits}f} {r:>10.{digits}f} {f:>10.{digits}f} "
                f"{a:>10.{digits}f} {s:>8}"
            )
        rows.append("")
        rows.append(
            f"{'accuracy':>{width}} {'':>10} {'':>10} {self.accuracy:>10.{digits}f} "
            f"{'':>10} {self.num_samples:>8}"
        )
        for label, avg in (("macro avg", self.macro), ("weighted avg", self.weighted)):
            a = avg.get("auc", math.nan)
            rows.append(
                f"{label:>{width}} {avg['precision']:>10.{digits}f} {avg['recall']:>10.{digits}f} "
                f"{avg['f1']:>10.{digits}f} {a:>10.{digits}f} {self.num_samples:>8}"
            )
        return "\n".join(rows)


class ClassificationMetrics:
    """Streaming classification metrics for evaluation loops.

    ``update(output, target)`` per batch accumulates a confusion matrix on the device (one bincount per
    batch) and top-k hit counts; when ``output`` holds scores (``[B, C]`` logits or probabilities) and
    ``keep_scores`` is True it also keeps them, since exact ROC curves need every score (``N x C``
    floats). ``compute()`` returns a :class:`ClassificationReport` equal to the one-shot functions on
    the concatenated batches. ``output`` may also be predicted labels ``[B]`` (no top-k, no ROC).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        top_k: Sequence[int] = (1,),
        keep_scores: bool = True,
        zero_division: ZeroDivision = "warn",
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if any(not isinstance(k, int) or k < 1 for k in top_k):
            raise ValueError(f"top_k must hold positive ints, got {top_k!r}")
        _zero_division_value(zero_division)
        self.num_classes = num_classes
        self.top_k = tuple(sorted(set(top_k) | {1}))
        self.keep_scores = keep_scores
        self.zero_division = zero_division
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forgets every batch seen so far."""
        self._cm: Tensor | None = None
        self._topk_hits: dict[int, Tensor] = {}
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._count = 0
        self._labels_only = False

    def update(self, output: Tensor, target: Tensor) -> None:
        """Adds one batch: ``output`` scores ``[B, C]`` or labels ``[B]``, ``target`` labels ``[B]``."""
        output = output.detach()
        target = target.detach()
        if self.device is not None:
            output, target = output.to(self.device), target.to(self.device)
        labels, target, _ = _pair(output, target, self.num_classes)
        cm = confusion_matrix(labels, target, self.num_classes)
        self._cm = cm if self._cm is None else self._cm + cm
        self._count += target.shape[0]
        if output.dim() == 2:
            for k in self.top_k:
                hits = accuracy(output, target, top_k=k) * target.shape[0]
                self._topk_hits[k] = self._topk_hits.get(k, 0) + hits
            if self.keep_scores:
                self._scores.append(output.double())
                self._targets.append(target)
        else:
            self._labels_only = True

    def compute(self) -> ClassificationReport:
        """The metrics of every batch seen since construction or :meth:`reset`."""
        if self._cm is None:
            raise ValueError("no samples: call update() with at least one batch before compute()")
        cm = self._cm
        tp, pred_sum, true_sum = cm.diagonal(), cm.sum(0), cm.sum(1)
        p, r, f, support = _from_stats(
            tp, pred_sum, true_sum, None, self.zero_division, ("precision", "recall", "f-score"), 1
        )
        macro = {k: float(_nanaverage(v, None)) for k, v in (("precision", p), ("recall", r), ("f1", f))}
        weighted = {
            k: float(_nanaverage(v, true_sum.double()))
            for k, v in (("precision", p), ("recall", r), ("f1", f))
        }
        acc = float(tp.sum().double() / cm.sum().double())
        topk = {}
        if not self._labels_only:
            topk = {k: float(hits / self._count) for k, hits in self._topk_hits.items()}
        per_class_auc = roc = None
        if self._scores and not self._labels_only:
            scores, target = torch.cat(self._scores), torch.cat(self._targets)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                per_class_auc = roc_auc_score(scores, target, average=None)
                roc = roc_curve(scores, target)
            macro["auc"] = float(per_class_auc.mean())
            weights = true_sum.double()
            weighted["auc"] = float(
                (torch.where(weights == 0, 0.0, per_class_auc) * weights).sum() / weights.sum()
            )
        return ClassificationReport(
            num_samples=self._count,
            accuracy=acc,
            top_k_accuracy=topk,
            confusion_matrix=cm,
            precision=p,
            recall=r,
            f1=f,
            support=support,
            macro=macro,
            weighted=weighted,
            auc=per_class_auc,
            roc=roc,
        )


# ----------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------


def _figure(size: tuple[float, float]):
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(
    curves: Sequence[tuple[Tensor, Tensor, Tensor]] | tuple[Tensor, Tensor, Tensor],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    aucs: Sequence[float] | Tensor | None = None,
    title: str = "ROC curve",
) -> str:
    """Writes ROC curves (a binary ``(fpr, tpr, thresholds)`` or a list of them) to a PNG at ``path``."""
    if isinstance(curves, tuple) and len(curves) == 3 and isinstance(curves[0], Tensor):
        curves = [curves]
    fig = _figure((6.0, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, (fpr, tpr, _) in enumerate(curves):
        name = labels[i] if labels is not None else (f"class {i}" if len(curves) > 1 else "ROC")
        if aucs is not None:
            name = f"{name} (AUC {float(aucs[i]):.4f})"
        ax.plot(fpr.cpu().numpy(), tpr.cpu().numpy(), lw=1.2, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)


def plot_confusion_matrix(
    cm: Tensor,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> str:
    """Writes a confusion matrix (row = true, column = predicted) as an annotated heat map PNG."""
    cm = cm.detach().cpu()
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [C, C] matrix, got shape {tuple(cm.shape)}")
    values = cm.double()
    if normalize:
        values = torch.nan_to_num(values / values.sum(1, keepdim=True), nan=0.0)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    fig = _figure((1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=names, yticklabels=names)
    ax.set(xlabel="Predicted class", ylabel="True class", title=title)
    top = float(values.max()) if values.numel() else 0.0
    for i in range(n):
        for j in range(n):
            v = float(values[i, j])
            text = f"{v:.2f}" if normalize else str(int(cm[i, j]))
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
