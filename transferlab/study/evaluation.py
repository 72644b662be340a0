"""The cheap part of a study: from features already in the FeatureStore to a metric.

Nothing here forwards an image. Each function takes a features handle
(``features.handle.FeatureHandle``), a task and a Setting, and returns a ResultRow.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from transferlab.analysis import intervals
from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.evaluate import evaluate_classification, evaluate_retrieval, higher_is_better
from transferlab.features.handle import FeatureHandle, Representation
from transferlab.features.postprocess import build_postprocess
from transferlab.results.rows import ResultRow
from transferlab.study.config import ProbeConfig, RetrievalConfig
from transferlab.study.plan import Job, Setting

if TYPE_CHECKING:
    from transferlab.heads.retrieval import RetrievalSettings

Features = FeatureHandle  # the name the evaluation functions' signatures use


def _view_features(features: FeatureHandle, split: str, setting: Setting, train: bool):
    """Rows for one split: 'orig', or with 'orig+flip' the flipped copies added (train) or
    averaged in (test), as the paper's augmentation does."""
    orig = features.split(split, setting.layer, setting.pooling, "orig")
    if setting.views == "orig":
        return orig, 1
    flip = features.split(split, setting.layer, setting.pooling, "flip")
    if train:
        return np.concatenate([orig, flip]), 2
    return (orig + flip) / 2.0, 1


def evaluate_probe_job(job: Job, task: TaskData, features: FeatureHandle, probe: ProbeConfig,
                       metric: str, seed: int = 0, transferability: bool = True) -> ResultRow:
    """Fit the linear probe on train (C chosen on val if present), score test. With
    ``transferability`` the row also carries LogME and 1-NN of the train features (the study
    stores them; `select` has scored them already and passes False)."""

    start = time.perf_counter()
    setting = job.setting
    multilabel = task.kind in ("multilabel", "attributes")
    X_train, repeat = _view_features(features, "train", setting, train=True)
    y_train = np.concatenate([task.splits["train"].labels[features.kept("train")]] * repeat)
    X_test, _ = _view_features(features, "test", setting, train=False)
    y_test = task.splits["test"].labels[features.kept("test")]
    post = build_postprocess(setting.postprocess_spec())
    X_train = post.fit_transform(X_train)
    X_test = post.transform(X_test)
    X_val = y_val = None
    if "val" in task.splits:
        X_val, _ = _view_features(features, "val", setting, train=False)
        X_val = post.transform(X_val)
        y_val = task.splits["val"].labels[features.kept("val")]
    # with flipped copies, an image and its mirror share a fold when C is chosen by k-fold
    groups = np.tile(np.arange(len(X_train) // repeat), repeat) if repeat > 1 else None
    model, val_value, selection = _fit_and_select(task, probe, metric, multilabel, seed, X_train, y_train,
                                                  X_val, y_val, groups)
    scores = model.decision_function(X_test)
    if not multilabel:
        scores = _all_class_scores(scores, model.classes_, len(task.classes))
    metrics = evaluate_classification(metric, y_test, scores)
    seconds = time.perf_counter() - start
    extra = {"C": float(model.C_), "n_train": int(len(X_train)), "n_test": int(len(X_test)),
             "dim": int(X_train.shape[1]), "layer_name": features.layer_name(setting.layer)}
    if transferability and not multilabel and repeat == 1 and setting.pca == 0:
        # the analysis compares scores across layers/poolings/sources at one post-processing
        extra.update(transferability_scores(X_train, y_train))
    started = time.perf_counter()
    items = intervals.item_data(metric, y_test, scores)
    row = _row(job, metric, metrics, seconds, extra, val_value, selection, items, seed)
    row.seconds["interval"] = time.perf_counter() - started
    return row


def _task_scoring(metric: str, multilabel: bool, n_classes: int, model, oriented: bool = True):
    """The probe's selection score in the task's own metric (per fold, or on val). ``oriented``:
    negated for a lower-is-better metric (the metric registry says), since the probe picks the
    C of the largest score."""
    sign = 1.0 if not oriented or higher_is_better(metric) else -1.0

    def score(y_true: np.ndarray, block: np.ndarray) -> float:
        full = block if multilabel else _all_class_scores(block, model.classes_, n_classes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return sign * float(evaluate_classification(metric, y_true, full)[metric])
        except TransferlabError:
            return float("nan")

    return score


def _fit_and_select(task: TaskData, probe: ProbeConfig, metric: str, multilabel: bool, seed: int,
                    X_train, y_train, X_val, y_val, groups):
    """Fit the probe with C chosen on validation data; return (model, validation score, protocol).

    The validation score is the task's metric at the chosen C: on the val split, or the mean
    over the k folds of train. A train split too small for k-fold, or a val split with no
    positives for a label, gives no score (selection "none: why"): such a row is never Deep
    Optimal."""
    from transferlab.heads.probe import LinearProbe, stack_validation

    Cs = np.asarray(probe.Cs)
    n_classes = len(task.classes)
    problem = ""
    if X_val is not None and multilabel:
        empty = [task.classes[k] for k in range(y_val.shape[1]) if not (y_val[:, k] == 1).any()]
        if empty:
            problem = (f"task {task.name}: the validation split has no positives for label(s) "
                       f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}: no selection")
    X_fit, y_fit, selection = X_train, y_train, {}
    if X_val is not None:  # C chosen on the val rows, then refit on train + val
        X_fit, y_fit, selection["cv"] = stack_validation(X_train, y_train, X_val, y_val)
    model = LinearProbe(loss=probe.loss, Cs=Cs, multilabel=multilabel, class_weight=probe.class_weight, seed=seed,
                        **selection)
    model.scoring = _task_scoring(metric, multilabel, n_classes, model)
    try:
        model.fit(X_fit, y_fit, groups=None if X_val is not None else groups)
    except TransferlabError as exc:
        if X_val is not None or not ("cannot be split" in str(exc) or "undefined for every C" in str(exc)):
            raise
        fixed = float(Cs[len(Cs) // 2])
        model = LinearProbe(loss=probe.loss, Cs=[fixed], multilabel=multilabel, class_weight=probe.class_weight,
                            seed=seed).fit(X_train, y_train)
        n_images = len(X_train) if groups is None else len(np.unique(groups))
        return model, None, (f"none: task {task.name}: the training split ({n_images} images) is too small for "
                             f"{model.cv}-fold selection; C fixed at {fixed:g}")
    if problem:
        return model, None, f"none: {problem}"
    if model.selection_ == "none":  # a single C: score it on validation data all the same
        value = _single_c_score(model, metric, multilabel, n_classes, X_train, y_train, X_val, y_val, groups, seed)
        protocol = "val" if X_val is not None else f"{model.cv}-fold"
        if value is None:
            return model, None, f"none: task {task.name}: the validation metric is undefined"
        return model, value, protocol
    scores = np.asarray(model.cv_scores_, dtype=np.float64)
    if not np.isfinite(scores).any():
        return model, None, f"none: task {task.name}: the validation metric is undefined"
    sign = 1.0 if higher_is_better(metric) else -1.0  # cv_scores_ are oriented (_task_scoring)
    return model, sign * float(np.nanmax(scores)), model.selection_


def _single_c_score(model, metric, multilabel, n_classes, X_train, y_train, X_val, y_val, groups, seed):
    from transferlab.heads.probe import LinearProbe

    params = {"loss": model.loss, "Cs": list(model.Cs), "multilabel": multilabel,
              "class_weight": model.class_weight, "seed": seed}
    if X_val is not None:
        held = LinearProbe(**params).fit(X_train, y_train)
        return _finite_or_none(_task_scoring(metric, multilabel, n_classes, held, oriented=False)(
            y_val, held.decision_function(X_val)))
    ids = np.arange(len(X_train)) if groups is None else np.asarray(groups)
    unique = np.unique(ids)
    if len(unique) < model.cv:
        return None
    fold_of_id = np.random.default_rng(seed).permutation(len(unique)) % model.cv
    fold = fold_of_id[np.searchsorted(unique, ids)]
    values = []
    for k in range(model.cv):
        try:
            held = LinearProbe(**params).fit(X_train[fold != k], y_train[fold != k])
        except TransferlabError:
            continue
        values.append(_task_scoring(metric, multilabel, n_classes, held, oriented=False)(y_train[fold == k],
                                                                         held.decision_function(X_train[fold == k])))
    return _finite_or_none(float(np.nanmean(values))) if values and np.isfinite(values).any() else None


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def transferability_scores(X: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """LogME and leave-one-out 1-NN accuracy of the training features, stored with each probe
    row so the analysis can check how well they predict the probe (None when undefined)."""
    import warnings

    from transferlab.analysis.transferability import FEATURE_SCORES, stored_scores

    out: dict[str, float | None] = {}
    for name in stored_scores():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(FEATURE_SCORES[name].function(X, y))
            out[name] = value if np.isfinite(value) else None
        except TransferlabError:
            out[name] = None
    return out


def _all_class_scores(scores: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns for every task class; a class never seen in training can never win."""
    if scores.shape[1] == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return scores
    full = np.full((len(scores), n_classes), scores.min() - 1.0, dtype=np.float32)
    full[:, np.asarray(classes, dtype=np.int64)] = scores
    return full


def evaluate_retrieval_job(job: Job, task: TaskData, features: Features, config: RetrievalConfig,
                           metric: str, whiten_features: np.ndarray | None = None, seed: int = 0) -> ResultRow:
    """Rank the database for every query with the retrieval pipeline (``heads.retrieval``) and
    score it with the task's own protocol."""
    from transferlab.heads.retrieval import retrieve

    start = time.perf_counter()
    setting = job.setting
    db_kept = features.kept("db")
    if len(features.kept("queries")) != len(task.queries or []):
        raise TransferlabError(f"task {task.name}: a query image could not be read; queries cannot be skipped")
    db = features.split("db", setting.layer, setting.pooling)
    queries = features.split("queries", setting.layer, setting.pooling)
    settings = retrieval_settings(setting, config)
    postprocess = setting.postprocess_spec(retrieval_whiten=True)
    ranking = retrieve(queries, db, settings, postprocess=postprocess, fit_on=whiten_features)
    ranking = db_kept[ranking]  # back to dataset indices when unreadable images were skipped
    metrics = evaluate_retrieval(metric, ranking, task.queries or [], len(task.splits["db"]))
    seconds = time.perf_counter() - start
    started = time.perf_counter()
    per_query = np.asarray(metrics["per_query"], dtype=np.float64)
    chosen = selection_queries(len(per_query), config.selection_queries, task.name, seed)
    reported = per_query[~chosen]
    metrics["official"] = metrics[metric]  # the benchmark's own number, over every query
    metrics["reported"] = _nanmean_or_nan(reported)
    extra = {"n_db": int(len(db_kept)), "n_queries": int(len(queries)), "n_reported_queries": int((~chosen).sum()),
             "dba": settings.dba, "alpha": settings.alpha, "pipeline": settings.describe(postprocess),
             "layer_name": features.layer_name(setting.layer)}
    val_value = _finite_or_none(_nanmean_or_nan(per_query[chosen]))
    selection = f"queries {config.selection_queries:.0%}" if val_value is not None else \
        f"none: task {task.name}: no held-out query has a positive"
    items = intervals.item_data(metric, None, per_query=reported)
    row = _row(job, metric, metrics, seconds, extra, val_value, selection, items, seed,
               value=metrics["reported"])
    row.seconds["interval"] = time.perf_counter() - started
    return row


def retrieval_settings(setting: Setting, config: RetrievalConfig) -> RetrievalSettings:
    """The ``heads.retrieval.RetrievalSettings`` of a study job: the ``qe`` factor, and
    ``retrieval.metric``/``dba``/``alpha``; pooling ``windows`` is spatial search (no DBA, no QE)."""
    from transferlab.heads.retrieval import RetrievalSettings

    spatial = setting.pooling == "windows"
    return RetrievalSettings(metric=config.metric, qe=setting.qe, alpha=config.alpha, spatial=spatial,
                             dba=0 if spatial else config.dba)


def selection_queries(n_queries: int, fraction: float, task: str, seed: int = 0) -> np.ndarray:
    """Boolean mask of the queries held out for selection: a seeded draw of ``fraction`` of
    them (at least one, and at least one left to report when there are two or more)."""
    if n_queries < 2:
        return np.zeros(n_queries, dtype=bool)
    count = min(n_queries - 1, max(1, round(fraction * n_queries)))
    rng = np.random.default_rng(intervals.resample_seed(f"queries:{task}", n_queries, seed))
    mask = np.zeros(n_queries, dtype=bool)
    mask[rng.choice(n_queries, count, replace=False)] = True
    return mask


def _nanmean_or_nan(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _row(job: Job, metric: str, metrics: dict, seconds: float, extra: dict, val_value: float | None,
         selection: str, items: dict, seed: int, value: float | None = None) -> ResultRow:
    """The row with its validation score, and its test interval from bootstrap resamples of
    the per-item data (stored with the row, so the report never recomputes features)."""
    factors = job.factors()
    factors["layer_name"] = extra.pop("layer_name")
    value = float(metrics[metric]) if value is None else float(value)
    interval = intervals.row_interval(metric, items, _resample_task(job), seed)
    if job.split:
        extra["split"] = job.split
    stored = {**items, "replicates": interval.replicates, "resample_seed": np.int64(interval.seed)}
    return ResultRow(
        source=job.source, task=job.task, factors=factors, metric=metric,
        value=value, metrics=metrics, standard=job.standard,
        seconds={"fit": seconds}, extra=extra, job_key=job.key,
        val_value=val_value, selection=selection, low=interval.low, high=interval.high,
        identity=job.identity, items=stored,
    )


def _resample_task(job: Job) -> str:
    """Rows of one task and split share their resamples (paired differences)."""
    return f"{job.task}#{job.split}" if job.split else job.task


def best_setting(rows: Sequence[dict], standard: Setting, metric: str) -> Setting:
    """The paper's combined best-per-factor setting: every factor at the value whose
    one-at-a-time row (others at the standard value) has the best *validation* score in
    ``metric`` (its direction from the metric registry; ties: the standard value). Rows
    without a validation score never win; the test metric is never looked at."""
    base = standard.as_dict()
    best = dict(base)
    sign = 1.0 if higher_is_better(metric) else -1.0
    sweep_rows = [r for r in rows if r["factors"].get("sweep") == "sweep"]
    for factor in base:
        candidates = [r for r in sweep_rows if _has_val(r)
                      and all(r["factors"].get(k, base[k]) == v for k, v in base.items() if k != factor)]
        if candidates:
            top = max(sign * r["val_value"] for r in candidates)
            winners = [r for r in candidates if sign * r["val_value"] == top]
            values = [r["factors"].get(factor, base[factor]) for r in winners]
            best[factor] = base[factor] if base[factor] in values else values[0]
    return Setting(**best)


def _has_val(row: dict) -> bool:
    value = row.get("val_value")
    return value is not None and bool(np.isfinite(value)) and not str(row.get("selection", "")).startswith("none")


CLASSIFICATION_SPLITS = ("train", "val", "test")


class ResplitFeatures:
    """The features of a re-split task (execution.repeats): the images of train, val and test
    pooled and dealt out again, seeded, with each split's size (and, single-label, each
    split's count per class) kept. No image is forwarded again."""

    def __init__(self, base: FeatureHandle, assignment: dict[str, np.ndarray]):
        self.base = base
        self.assignment = assignment
        self.names = [s for s in CLASSIFICATION_SPLITS if s in assignment]

    def layer_name(self, layer: int | str) -> str:
        return self.base.layer_name(layer)

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        pooled = np.concatenate([self.base.split(s, layer, pooling, view) for s in self.names])
        return pooled[self.assignment[name]]

    def kept(self, name: str) -> np.ndarray:
        return np.arange(len(self.assignment[name]))

    def representations(self) -> list[Representation]:
        return self.base.representations()


class PartitionFeatures:
    """The features of an official alternative partition (SUN397's ``train_p02``...) under the
    names the evaluation asks for (``train``, ``test``)."""

    def __init__(self, base: FeatureHandle, names: dict[str, str]):
        self.base = base
        self.names = names

    def layer_name(self, layer: int | str) -> str:
        return self.base.layer_name(layer)

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        return self.base.split(self.names.get(name, name), layer, pooling, view)

    def kept(self, name: str) -> np.ndarray:
        return self.base.kept(self.names.get(name, name))

    def representations(self) -> list[Representation]:
        return self.base.representations()


def partition_repeat(task: TaskData, features: FeatureHandle, split: int) -> tuple[TaskData, PartitionFeatures]:
    """Repeat ``split`` of a task read with extra partitions: its ``split``-th extra partition
    (splits ``train_pNN``/``test_pNN`` in reading order) as ``train``/``test``."""
    from dataclasses import replace as dc_replace

    extra = [name[len("train_"):] for name in task.splits if name.startswith("train_p")]
    if split > len(extra):
        raise TransferlabError(f"task {task.name}: repeat {split} needs {split} extra partitions, "
                               f"the task was read with {len(extra)}")
    suffix = extra[split - 1]
    names = {"train": f"train_{suffix}", "test": f"test_{suffix}"}
    splits = {name: dc_replace(task.splits[names[name]], name=name) for name in names}
    return dc_replace(task, splits=splits), PartitionFeatures(features, names)


def repeat_split(task: TaskData, features: FeatureHandle, split: int, seed: int = 0) -> tuple[TaskData, FeatureHandle]:
    """The data of repeat ``split`` (> 0): the next official partition where the task was read
    with them, a seeded re-deal of its images otherwise."""
    if any(name.startswith("train_p") for name in task.splits):
        return partition_repeat(task, features, split)
    return resplit(task, features, split, seed)


def resplit(task: TaskData, features: FeatureHandle, split: int, seed: int = 0) -> tuple[TaskData, ResplitFeatures]:
    """The ``split``-th seeded re-split of a classification task (split 0 is the task's own)."""
    from dataclasses import replace as dc_replace

    from transferlab.data.base import Split

    names = [s for s in CLASSIFICATION_SPLITS if s in task.splits]
    paths: list[str] = []
    labels = []
    sizes = {}
    for name in names:
        kept = features.kept(name)
        paths.extend(task.splits[name].paths[i] for i in kept)
        labels.append(task.splits[name].labels[kept])
        sizes[name] = len(kept)
    pooled = np.concatenate(labels)
    origin = np.repeat(np.arange(len(names)), [sizes[n] for n in names])
    rng = np.random.default_rng(intervals.resample_seed(f"resplit:{task.name}", split, seed))
    assignment: dict[str, list[int]] = {n: [] for n in names}
    if pooled.ndim == 1:  # stratified: each split keeps its count of every class
        for c in np.unique(pooled):
            members = rng.permutation(np.flatnonzero(pooled == c))
            start = 0
            for k, name in enumerate(names):
                count = int(((pooled == c) & (origin == k)).sum())
                assignment[name].extend(members[start:start + count].tolist())
                start += count
    else:
        order = rng.permutation(len(pooled))
        start = 0
        for name in names:
            assignment[name] = order[start:start + sizes[name]].tolist()
            start += sizes[name]
    index = {n: np.sort(np.asarray(v, dtype=np.int64)) for n, v in assignment.items()}
    splits = dict(task.splits)
    for name in names:
        splits[name] = Split(name, [paths[i] for i in index[name]], pooled[index[name]])
    return dc_replace(task, splits=splits), ResplitFeatures(features, index)
