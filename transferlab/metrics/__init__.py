"""Every benchmark's metric, computed exactly as the benchmark's own evaluation kit does.

Plain NumPy in, Python float out. Each function names the kit it reproduces; where the kit
has a quirk (floating-point thresholds, tie order, empty ground truth) the quirk is kept and
written down here, because a number that differs from the published protocol is not
comparable with published results.

Label conventions (as in ``transferlab.data.base.Split``): binary / multi-label labels are
1 = positive, -1 = negative, 0 = difficult or unknown (removed before ranking).

Ties: classification scores are ranked with a *stable* sort by descending score, so tied
images keep their input order, as MATLAB's ``sort(-scores)`` in the VOC devkit does.
Retrieval metrics take an explicit ranking, so ties never arise there.

Empty ground truth: a single AP with no positive returns ``nan``; the mean over classes or
queries skips those (as the revisited Oxford/Paris kit skips queries without positives) and
warns with ``MetricWarning``.
"""

from transferlab.metrics.checks import MetricInputError, MetricWarning, mean_leaving_out_nan
from transferlab.metrics.classification import (
    VOC07_RECALL_THRESHOLDS,
    accuracy,
    average_precision,
    mean_auc,
    mean_average_precision,
    mean_class_accuracy,
    per_class_accuracy,
    roc_auc,
    voc07_ap,
)
from transferlab.metrics.retrieval import (
    holidays_map,
    mean_over_queries,
    mean_retrieval_ap,
    retrieval_ap,
    retrieval_aps,
    revisited_aps,
    revisited_map,
    ukb_score,
)

__all__ = [
    "MetricInputError",
    "MetricWarning",
    "VOC07_RECALL_THRESHOLDS",
    "voc07_ap",
    "average_precision",
    "mean_average_precision",
    "mean_class_accuracy",
    "per_class_accuracy",
    "accuracy",
    "roc_auc",
    "mean_auc",
    "retrieval_ap",
    "retrieval_aps",
    "mean_retrieval_ap",
    "mean_over_queries",
    "revisited_aps",
    "revisited_map",
    "holidays_map",
    "ukb_score",
    "mean_leaving_out_nan",
]
