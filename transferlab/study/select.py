"""Model and layer selection: rank (source, layer, pooling) candidates by a transferability
score, then confirm the top few with real linear probes.

The expensive part of a probe sweep is not the forward pass (one per source covers every
layer and pooling) but the probes: one C search per candidate. A transferability score
(LogME, leave-one-out 1-NN accuracy, H-score) on the training features costs a fraction of
that, so ``select`` scores every candidate and probes only the best ``confirm`` of them
(``full=True`` probes all, to measure how well the score agrees with the probe).

Protocol: features of the task's train split (flip views not used), L2-normalised, labels as
the task stores them (multi-label tasks: LogME and H-score average over label columns; 1-NN
needs single labels). Probes are exactly the study's (``evaluate_probe_job`` with the
standard post-processing, L2, and C chosen on val), scored with the task's own metric.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferlab.analysis.transferability import FEATURE_SCORES, feature_score
from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.evaluate import higher_is_better
from transferlab.features.handle import FeatureHandle
from transferlab.study.config import ProbeConfig

SCORE_NAMES: dict[str, str] = {name: score.title for name, score in FEATURE_SCORES.items()}


def _score_function(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    return feature_score(name).function


@dataclass
class Candidate:
    """One representation: a layer of a source, pooled one way."""

    source: str
    layer: int | str  # from the top (-1, -2, ...) when known, else the module name
    layer_name: str
    pooling: str
    dim: int = 0
    score: float = math.nan
    score_seconds: float = 0.0
    probe: float | None = None  # the task's metric on test, when probed
    probe_seconds: float | None = None
    C: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.layer_name, self.pooling)


@dataclass
class Selection:
    """Candidates ranked by score (best first, NaN last) and the probes that confirmed them."""

    task: str
    metric: str
    score: str
    candidates: list[Candidate]
    seconds: dict[str, float]
    forwarded_images: int
    full: bool
    notes: list[str] = field(default_factory=list)

    @property
    def probed(self) -> list[Candidate]:
        return [c for c in self.candidates if c.probe is not None]

    @property
    def best(self) -> Candidate | None:
        """The probed candidate with the best measured metric (the recommendation; the
        metric's direction from the metric registry)."""
        scored = [(c.probe, c) for c in self.probed if c.probe is not None and math.isfinite(c.probe)]
        pick = max if higher_is_better(self.metric) else min
        return pick(scored, key=lambda pc: pc[0])[1] if scored else None

    def agreement(self) -> dict[str, Any] | None:
        """Score vs probe over the probed candidates (meaningful with ``full``)."""
        pairs = [(c.score, c.probe) for c in self.probed if c.probe is not None]
        return agreement([sc for sc, _ in pairs], [pr for _, pr in pairs], higher_is_better(self.metric))

    def to_dict(self) -> dict[str, Any]:
        probed = self.probed
        per_probe = self.seconds.get("probe", 0.0) / len(probed) if probed else None
        return {
            "task": self.task, "metric": self.metric, "score": self.score, "full": self.full,
            "candidates": [{"rank": i + 1, **asdict(c)} for i, c in enumerate(self.candidates)],
            "best": asdict(self.best) if self.best else None,
            "seconds": self.seconds,
            "estimated_full_probe_seconds": None if per_probe is None else per_probe * len(self.candidates),
            "forwarded_images": self.forwarded_images,
            "agreement": self.agreement(),
            "notes": self.notes,
        }  # fmt: skip


# --------------------------------------------------------------------------- agreement


def agreement(scores: Sequence[float], values: Sequence[float],
              values_higher_is_better: bool = True) -> dict[str, Any] | None:
    """How well ranking by ``scores`` (higher = better) reproduces ranking by ``values`` (higher
    = better unless ``values_higher_is_better`` is False: an error metric; its best is then the
    lowest, and ``spearman`` is of the scores against the values negated, so +1 still means
    "ranks like the probe").

    - ``spearman``, ``p_value``: rank correlation over the pairs with a finite score (NaN with
      fewer than 3 pairs or no variation, with ``status`` saying so).
    - ``top1_hit``: the best-scored candidate reaches the best value (ties count as hits).
    - ``top3_overlap``: how many of the 3 best-scored candidates are among the 3 best by value
      (a candidate tied with the 3rd best value counts as among them); ``top_k`` = 3, or fewer
      when there are fewer candidates.
    - ``confirmed_best``: the best value among the 3 best-scored candidates, what ``select
      --confirm 3`` recommends; ``regret`` = the best value overall minus that.
    """
    pairs = [(float(s), float(v)) for s, v in zip(scores, values, strict=True) if math.isfinite(s) and math.isfinite(v)]
    if len(pairs) < 2:
        return None
    from transferlab.analysis.correlation import spearman

    sign = 1.0 if values_higher_is_better else -1.0
    s = np.array([p[0] for p in pairs])
    v = sign * np.array([p[1] for p in pairs])  # oriented: larger is better from here on
    corr = spearman(s, v, unit="candidates", n_boot=1000)
    k = min(3, len(pairs))
    by_score = np.argsort(-s, kind="stable")[:k]
    threshold = np.sort(v)[::-1][k - 1]
    return {
        "candidates": len(pairs), "spearman": corr.rho, "p_value": corr.p_value, "low": corr.low,
        "high": corr.high, "status": corr.status, "note": corr.note,
        "top1_hit": bool(v[by_score[0]] == v.max()), "top3_overlap": int(np.sum(v[by_score] >= threshold)),
        "top_k": k, "confirmed_best": float(sign * v[by_score].max()), "regret": float(v.max() - v[by_score].max()),
    }  # fmt: skip


# --------------------------------------------------------------------------- stages


def extract_sources(
    task: TaskData, sources: Sequence[str], layers: Sequence[int | str], poolings: Sequence[str], *,
    weights: str | None = None, resolution: int | None = None, store=None, device: str = "auto",
    batch_size: int | None = None, num_workers: int | None = None, on_bad_image: str = "error", progress: bool = False,
    jpeg_draft: bool = False, compile_model: bool = False,
) -> tuple[dict[str, FeatureHandle], int, list[str]]:
    """One forward pass per source network over every split (all layers and poolings at once),
    cached in the FeatureStore; a ``concat:[a, b]`` spec gives its members side by side. Layers
    a source lacks are skipped for it, with a note."""
    from transferlab.features.export import extract_task
    from transferlab.features.handle import features_of
    from transferlab.sources.concat import load_members

    out: dict[str, FeatureHandle] = {}
    forwarded, notes = 0, list[str]()
    for spec in sources:
        members = load_members(spec, weights, resolution)
        usable = [layer for layer in layers if all(_has_layer(source, layer) for source in members)]
        notes.extend(f"source {spec} has no layer {layer}: skipped for it" for layer in layers if layer not in usable)
        if not usable:
            raise TransferlabError(
                f"source {spec} has none of the layers {', '.join(map(str, layers))} "
                f"(it has {', '.join(str(layer.index) for layer in members[0].layers)})")
        from transferlab.features.pooling import pooling_applies

        resolved = [source.resolve_layers(usable) for source in members]
        given = [p for p in poolings if all(any(pooling_applies(layer, p) for layer in r) for r in resolved)]
        for p in poolings:
            if p not in given:
                notes.append(f"source {spec}: none of its layers gives pooling {p}: skipped for it")
        if not given:
            raise TransferlabError(f"source {spec}: none of its layers {', '.join(map(str, usable))} gives any "
                                   f"of the poolings {', '.join(poolings)}")
        extracted = []
        for source in members:
            features = extract_task(source, task, usable, given, ["orig"], store=store, device=device,
                                    batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image,
                                    progress=progress, jpeg_draft=jpeg_draft, compile_model=compile_model)
            forwarded += sum(split.forwarded_images for split in features.splits.values())
            extracted.append(features)
        out[spec] = features_of(extracted)
    return out, forwarded, notes


def _has_layer(source, layer: int | str) -> bool:
    try:
        source.resolve_layers([layer])
    except TransferlabError:
        return False
    return True


def candidates_of(features: dict[str, FeatureHandle], poolings: Sequence[str]) -> tuple[list[Candidate], list[str]]:
    """Every (source, layer, pooling) that exists: spatial poolings only on spatial layers."""
    out: list[Candidate] = []
    notes: list[str] = []
    for source, handle in features.items():
        given = handle.representations()
        by_layer: dict[str, list[str]] = {}
        kinds: dict[str, str] = {}
        for r in given:
            by_layer.setdefault(r.layer_name, []).append(r.pooling)
            kinds[r.layer_name] = r.kind
        offered = {r.pooling for r in given}
        for name, have in by_layer.items():
            skipped = [p for p in poolings if p in offered and p not in have]
            if skipped:
                kind = f" ({kinds[name]})" if kinds[name] else ""
                notes.append(f"{source} layer {name}{kind} cannot give pooling {', '.join(skipped)}: skipped")
        out.extend(Candidate(source, r.layer, r.layer_name, r.pooling) for r in given if r.pooling in poolings)
    if not out:
        raise TransferlabError("no (source, layer, pooling) candidate to rank")
    return out, notes


def train_arrays(task: TaskData, features: FeatureHandle, candidate: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised train features of one candidate and the labels of the images kept."""
    from transferlab.features.postprocess import L2Normalize

    kept = features.kept("train")
    x = features.split("train", candidate.layer, candidate.pooling).reshape(len(kept), -1)
    y = task.splits["train"].labels[kept]
    return L2Normalize().transform(np.asarray(x, dtype=np.float64)), y


def score_features(x: np.ndarray, y: np.ndarray, score: str) -> tuple[float, list[str]]:
    """One score on one candidate's features: (value, warnings). Undefined input (one class,
    fewer images than classes) raises TransferlabError; features with no variance give NaN
    and a warning, so one dead layer does not stop the ranking."""
    from transferlab.analysis.transferability import TransferabilityWarning

    function = _score_function(score)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TransferabilityWarning)
        value = float(function(x, y))
    return value, [str(w.message) for w in caught if issubclass(w.category, TransferabilityWarning)]


def score_candidates(task: TaskData, features: dict[str, FeatureHandle], candidates: list[Candidate],
                     score: str) -> list[str]:
    """Fill ``score`` of every candidate (NaN with a note when the features have no variance)."""
    notes: list[str] = []
    for c in candidates:
        x, y = train_arrays(task, features[c.source], c)
        c.dim = int(x.shape[1])
        start = time.perf_counter()
        try:
            c.score, caught = score_features(x, y, score)
        except TransferlabError as exc:
            raise TransferlabError(f"task {task.name}, {c.source} layer {c.layer_name} {c.pooling}: {exc}") from None
        c.score_seconds = time.perf_counter() - start
        notes.extend(f"{c.source} layer {c.layer_name} {c.pooling}: {message}" for message in caught)
    return notes


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Best score first; NaN scores last (in their original order)."""
    return sorted(candidates, key=lambda c: (not math.isfinite(c.score), -c.score if math.isfinite(c.score) else 0))


def probe_candidates(task: TaskData, metric: str, features: dict[str, FeatureHandle], candidates: list[Candidate],
                     probe: ProbeConfig | None = None, seed: int = 0) -> None:
    """A real probe per candidate (the study's protocol); fills ``probe``, ``probe_seconds``, ``C``."""
    from transferlab.study.evaluation import evaluate_probe_job
    from transferlab.study.plan import Job, Setting

    probe = probe or ProbeConfig()
    for c in candidates:
        start = time.perf_counter()
        job = Job(c.source, task.name, Setting(layer=c.layer, pooling=c.pooling), "probe")
        row = evaluate_probe_job(job, task, features[c.source], probe, metric, seed,
                                 transferability=False)  # already scored: candidates carry it
        c.probe, c.C = float(row.value), float(row.extra["C"])
        c.probe_seconds = time.perf_counter() - start


# --------------------------------------------------------------------------- all together


def select(
    task: TaskData, metric: str, sources: Sequence[str], layers: Sequence[int | str] = (-1, -2, -3, -4),
    poolings: Sequence[str] = ("avg", "max", "grid2"), *, score: str = "logme", confirm: int = 3,
    full: bool = False, probe: ProbeConfig | None = None, seed: int = 0,
    handles: dict[str, FeatureHandle] | None = None, **extraction: Any,
) -> Selection:
    """Extract, score every candidate, rank, probe the top ``confirm`` (or all with ``full``).

    ``extraction``: keyword arguments of ``extract_sources`` (weights, store, device, ...).
    ``handles``: features already at hand (an exported folder's), by name, ranked beside the
    ``sources`` (which may then be empty).
    """
    if task.kind == "retrieval":
        raise TransferlabError(
            f"task {task.name} is a retrieval task: select ranks representations for a linear probe "
            f"on labelled images; compare retrieval settings with `transferlab retrieve`")
    if "train" not in task.splits:
        raise TransferlabError(f"task {task.name} has no train split to score")
    if not sources and not handles:
        raise TransferlabError("give at least one source")
    if "windows" in poolings:
        raise TransferlabError("pooling 'windows' is the retrieval spatial search (one vector per sub-window), "
                               "not a single representation a probe or a score can use")
    if confirm < 0:
        raise TransferlabError(f"confirm must be >= 0; got {confirm}")
    _score_function(score)  # unknown names fail before any forward pass
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    features, forwarded, notes = extract_sources(task, sources, layers, poolings, **extraction) if sources \
        else ({}, 0, [])
    features.update(handles or {})
    seconds["extract"] = time.perf_counter() - start
    candidates, more = candidates_of(features, poolings)
    notes.extend(more)
    start = time.perf_counter()
    notes.extend(score_candidates(task, features, candidates, score))
    seconds["score"] = time.perf_counter() - start
    ranked = rank(candidates)
    chosen = ranked if full else ranked[:confirm]
    start = time.perf_counter()
    probe_candidates(task, metric, features, chosen, probe, seed)
    seconds["probe"] = time.perf_counter() - start
    return Selection(task.name, metric, score, ranked, seconds, forwarded, full, notes)
