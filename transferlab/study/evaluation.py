"""The cheap part of a study: from features already in the FeatureStore to a metric.

Nothing here forwards an image. Each function takes handles on extracted features
(``TaskFeatures``), a task and a Setting, and returns a ResultRow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.evaluate import evaluate_classification, evaluate_retrieval
from transferlab.features.export import TaskFeatures
from transferlab.features.postprocess import L2Normalize, build_postprocess
from transferlab.study.config import ProbeConfig, RetrievalConfig
from transferlab.study.plan import Job, Setting
from transferlab.study.results import ResultRow


@dataclass
class FeatureSource:
    """Features of one study source on one task: one member, or several for ``concat:``."""

    members: list[TaskFeatures]

    def _member_layer(self, member: TaskFeatures, layer: int | str):
        for candidate in member.layers:
            if str(candidate.index) == str(layer) or candidate.name == str(layer):
                return candidate
        raise TransferlabError(f"layer {layer} was not extracted")

    def layer_name(self, layer: int | str) -> str:
        return "+".join(self._member_layer(m, layer).name for m in self.members)

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        parts = []
        for member in self.members:
            handle = member.splits[name]
            array = np.asarray(handle.get(self._member_layer(member, layer), pooling, view), dtype=np.float32)
            parts.append(array)
        if len(parts) == 1:
            return parts[0]
        # concat: each member L2-normalised first, so no source dominates by scale; per vector
        # along the last axis, so spatial-search windows (n, R, D) stay windows
        return np.concatenate([_unit_last_axis(p) for p in parts], axis=-1)

    def kept(self, name: str) -> np.ndarray:
        kept = [m.splits[name].kept for m in self.members]
        common = kept[0]
        for other in kept[1:]:
            common = np.intersect1d(common, other)
        if any(len(k) != len(common) for k in kept):
            raise TransferlabError(f"concat members skipped different images in split {name}")
        return common


def _view_features(features: FeatureSource, split: str, setting: Setting, train: bool):
    """Rows for one split: 'orig', or with 'orig+flip' the flipped copies added (train) or
    averaged in (test), as the paper's augmentation does."""
    orig = features.split(split, setting.layer, setting.pooling, "orig")
    if setting.views == "orig":
        return orig, 1
    flip = features.split(split, setting.layer, setting.pooling, "flip")
    if train:
        return np.concatenate([orig, flip]), 2
    return (orig + flip) / 2.0, 1


def evaluate_probe_job(job: Job, task: TaskData, features: FeatureSource, probe: ProbeConfig,
                       metric: str, seed: int = 0, transferability: bool = True) -> ResultRow:
    """Fit the linear probe on train (C chosen on val if present), score test. With
    ``transferability`` the row also carries LogME and 1-NN of the train features (the study
    stores them; `select` has scored them already and passes False)."""
    from transferlab.heads.probe import LinearProbe

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
    model = LinearProbe(loss=probe.loss, Cs=np.asarray(probe.Cs), multilabel=multilabel,
                        class_weight=probe.class_weight, seed=seed)
    # with flipped copies, an image and its mirror share a fold when C is chosen by k-fold
    groups = np.tile(np.arange(len(X_train) // repeat), repeat) if repeat > 1 else None
    model.fit(X_train, y_train, X_val, y_val, groups=groups)
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
    return _row(job, metric, metrics, seconds, extra)


def transferability_scores(X: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """LogME and leave-one-out 1-NN accuracy of the training features, stored with each probe
    row so the analysis can check how well they predict the probe (None when undefined)."""
    import warnings

    from transferlab.analysis.transferability import knn_accuracy, logme

    out: dict[str, float | None] = {}
    for name, fn in (("logme", lambda: logme(X, y)), ("knn1", lambda: knn_accuracy(X, y, k=1))):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(fn())
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


def evaluate_retrieval_job(job: Job, task: TaskData, features: FeatureSource, config: RetrievalConfig,
                           metric: str, whiten_features: np.ndarray | None = None) -> ResultRow:
    """Rank the database for every query and score it with the task's own protocol."""
    from transferlab.heads import retrieval as R

    start = time.perf_counter()
    setting = job.setting
    db_kept = features.kept("db")
    if len(features.kept("queries")) != len(task.queries or []):
        raise TransferlabError(f"task {task.name}: a query image could not be read; queries cannot be skipped")
    db = features.split("db", setting.layer, setting.pooling)
    queries = features.split("queries", setting.layer, setting.pooling)
    fit_on = whiten_features if whiten_features is not None else db
    if setting.pooling == "windows":
        ranking = _spatial_ranking(setting, db, queries, fit_on)
    else:
        post = build_postprocess(setting.postprocess_spec(retrieval_whiten=True))
        d = post.fit_transform(db) if fit_on is db else post.fit(fit_on).transform(db)
        q = post.transform(queries)
        if setting.qe:  # only the top qe of the first ranking are read: rank just those
            first = R.rank(q, d, metric=config.metric, top_k=min(setting.qe, len(d)))
            ranking = R.average_query_expansion(q, d, first, setting.qe, metric=config.metric)
        else:
            ranking = R.rank(q, d, metric=config.metric)
    ranking = db_kept[ranking]  # back to dataset indices when unreadable images were skipped
    metrics = evaluate_retrieval(metric, ranking, task.queries, len(task.splits["db"]))
    seconds = time.perf_counter() - start
    extra = {"n_db": int(len(db_kept)), "n_queries": int(len(queries)),
             "layer_name": features.layer_name(setting.layer)}
    return _row(job, metric, metrics, seconds, extra)


def _spatial_ranking(setting: Setting, db: np.ndarray, queries: np.ndarray, fit_on: np.ndarray) -> np.ndarray:
    from transferlab.heads import retrieval as R

    whiten = None
    if setting.pca:
        flat = fit_on.reshape(-1, fit_on.shape[-1])
        whiten = R.fit_whitening(L2Normalize().transform(flat), setting.pca)
    return R.retrieve_spatial(queries, db, whiten=whiten)


def _row(job: Job, metric: str, metrics: dict, seconds: float, extra: dict) -> ResultRow:
    factors = job.factors()
    factors["layer_name"] = extra.pop("layer_name")
    return ResultRow(
        source=job.source, task=job.task, factors=factors, metric=metric,
        value=float(metrics[metric]), metrics=metrics, standard=job.standard,
        seconds={"fit": seconds}, extra=extra, job_key=job.key,
    )


def best_setting(rows: Sequence[dict], standard: Setting, higher_is_better: bool = True) -> Setting:
    """The paper's Deep Optimal: every factor at the value whose one-at-a-time row (others at
    the standard value) scored best."""
    base = standard.as_dict()
    best = dict(base)
    sign = 1.0 if higher_is_better else -1.0
    sweep_rows = [r for r in rows if r["factors"].get("sweep") == "sweep"]
    for factor in base:
        candidates = [r for r in sweep_rows
                      if all(r["factors"].get(k, base[k]) == v for k, v in base.items() if k != factor)]
        if candidates:
            winner = max(candidates, key=lambda r: sign * r["value"])
            best[factor] = winner["factors"].get(factor, base[factor])
    return Setting(**best)


def _unit_last_axis(array: np.ndarray) -> np.ndarray:
    return L2Normalize().transform(array.reshape(-1, array.shape[-1])).reshape(array.shape)
