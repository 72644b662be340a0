"""The retrieval pipeline: post-processing -> DBA -> rank -> QE / alpha-QE -> re-rank, or spatial search.

The one way a ranking is made from descriptors: ``transferlab retrieve``, the study
(``study.evaluation.evaluate_retrieval_job``) and Python users all call ``retrieve``, with
the settings of a ``RetrievalSettings``. The steps have their own modules: ``heads.ranking``
(exact blocked ranking), ``heads.expansion`` (AQE, alpha-QE, DBA) and ``heads.spatial``
(Razavian et al.'s spatial search); their public functions are re-exported here so one
import gives the whole retrieval API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch

from transferlab.device import resolve_device
from transferlab.errors import TransferlabError
from transferlab.features.pooling import spatial_windows
from transferlab.features.postprocess import l2_normalize
from transferlab.heads.expansion import (
    alpha_query_expansion,
    average_query_expansion,
    check_alpha,
    database_augmentation,
    expand_queries,
)
from transferlab.heads.ranking import (
    METRICS,
    Metric,
    as_array,
    as_pair,
    check_metric,
    count,
    rank,
    similarities,
)
from transferlab.heads.spatial import (
    rank_by_distance,
    spatial_search_distances,
    spatial_search_rank,
    windows_pair,
)
from transferlab.results.factors import get_factor

__all__ = [
    "METRICS", "Metric", "RetrievalSettings", "Transform", "alpha_query_expansion", "average_query_expansion",
    "database_augmentation", "expand_queries", "fit_whitening", "l2_normalize", "rank", "rank_by_distance",
    "retrieve", "similarities", "spatial_search_distances", "spatial_search_rank", "spatial_windows",
]


class Transform(Protocol):
    """A fitted post-processing (``features.postprocess.Postprocess``, ``PCA``, ...): ``transform`` only."""

    def transform(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RetrievalSettings:
    """How a ranking is made from post-processed descriptors.

    ``dba``: database vectors averaged into each database vector, itself included (0 = off).
    ``qe``: top database vectors added to each query before re-ranking (0 = off).
    ``alpha``: None = plain means (AQE, DBA); a number weighs each neighbour by
    max(cos, 0) ** alpha (alpha-QE, alpha-DBA; Radenovic et al. 2018).
    ``spatial``: the inputs are sub-window descriptors (n, R, D), ranked by spatial search;
    DBA and QE apply to one descriptor per image, so they must be off.
    """

    metric: Metric = "cosine"
    dba: int = 0
    qe: int = get_factor("qe").default  # the study factor's default (results.factors): off
    alpha: float | None = None
    spatial: bool = False

    def __post_init__(self) -> None:
        check_metric(self.metric)
        count(self.dba, "dba")
        count(self.qe, "qe")
        check_alpha(self.alpha)
        if not isinstance(self.spatial, bool):
            raise TransferlabError(f"spatial must be True or False, not {self.spatial!r}")
        if self.spatial and (self.dba or self.qe):
            raise TransferlabError(
                f"spatial search ranks by sub-window distances; dba ({self.dba}) and qe ({self.qe}) "
                "expand one descriptor per image: set them to 0 for it"
            )

    def describe(self, postprocess: str = "") -> str:
        """The steps in order, for reports: ``l2 -> DBA 3 -> cosine rank -> alpha-QE 2 (alpha 3)``."""
        steps = [postprocess] if postprocess and postprocess != "none" else []
        weight = f" (alpha {self.alpha:g})" if self.alpha is not None else ""
        if self.spatial:
            return " -> ".join([*steps, "l2 per window", "spatial search"])
        if self.dba:
            steps.append(f"{'alpha-' if weight else ''}DBA {self.dba}{weight}")
        steps.append(f"{self.metric} rank")
        if self.qe:
            steps += [f"{'alpha-QE' if weight else 'AQE'} {self.qe}{weight}", "re-rank"]
        return " -> ".join(steps)


def fit_whitening(held_out: np.ndarray, dim: int) -> Any:
    """PCA-whitening to ``dim`` dims, learned on a held-out dataset (e.g. Paris for Oxford)."""
    from transferlab.features.postprocess import PCA

    pca = PCA(dim, whiten=True)
    pca.fit(as_array(held_out, "held_out", 2))
    return pca


def retrieve(
    queries: np.ndarray,
    database: np.ndarray,
    settings: RetrievalSettings | None = None,
    *,
    postprocess: str | Transform | None = None,
    fit_on: np.ndarray | None = None,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    top_k: int | None = None,
    device: str | torch.device = "auto",
    **options: Any,
) -> np.ndarray:
    """Ranking (n_q, n_db or top_k) of ``database`` for each query, best first.

    The order: ``postprocess`` (queries and database alike) -> DBA -> rank -> QE -> re-rank;
    with ``spatial``: ``postprocess`` per sub-window -> L2 per window -> spatial search.
    ``settings`` or its fields as keywords (``retrieve(q, db, qe=10, alpha=3.0)``).
    ``postprocess``: a spec (``"l2,pcaw512,l2"``, fit here on ``fit_on``, a held-out set such
    as Paris6k for Oxford5k, or on the database when None), or a fitted transform. DBA and QE
    work on L2-normalised vectors; a plain ranking uses the post-processed vectors as they are
    (cosine is scale-free; ``l2`` measures them). Masks (True = valid window) are for spatial
    search only.
    """
    settings = _settings(settings, options)
    dev = resolve_device(device)
    if settings.spatial:
        return _retrieve_spatial(queries, database, postprocess, fit_on, q_mask, db_mask, top_k, dev)
    if q_mask is not None or db_mask is not None:
        raise TransferlabError("q_mask and db_mask select sub-windows: they are for spatial search (spatial=True)")
    q, d = as_pair(queries, database)
    q, d = _postprocessed(postprocess, fit_on, q, d)
    if settings.dba or settings.qe:
        q, d = l2_normalize(q), l2_normalize(d)
    if settings.dba and len(d):
        d = database_augmentation(d, settings.dba, settings.alpha, device=dev)
    if settings.qe and len(d) and len(q):
        k = min(settings.qe, len(d))  # only the top qe of the first ranking are read
        first = rank(q, d, settings.metric, top_k=k, device=dev)
        q = expand_queries(q, d, first, k, settings.alpha, dev)
    return rank(q, d, settings.metric, top_k=top_k, device=dev)


def _settings(settings: RetrievalSettings | None, options: dict[str, Any]) -> RetrievalSettings:
    names = {f.name for f in fields(RetrievalSettings)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TransferlabError(f"retrieve: unknown setting {unknown[0]!r} (settings: {', '.join(sorted(names))})")
    if settings is None:
        return RetrievalSettings(**options)
    if not isinstance(settings, RetrievalSettings):
        raise TransferlabError(f"retrieve: settings must be a RetrievalSettings, not {type(settings).__name__}")
    return RetrievalSettings(**{**asdict(settings), **options}) if options else settings


def _postprocessed(
    postprocess: str | Transform | None, fit_on: np.ndarray | None, q: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Queries and database after the post-processing, fit on ``fit_on`` (or the database)."""
    if postprocess is None:
        if fit_on is not None:
            raise TransferlabError("fit_on is the data a postprocess spec is fit on: give postprocess too")
        return q, d
    if isinstance(postprocess, str):
        from transferlab.features.postprocess import build_postprocess

        post = build_postprocess(postprocess)
        if fit_on is None:
            d_out = post.fit_transform(d)
        else:
            held = as_array(fit_on, "fit_on", 2)
            if held.shape[1] != d.shape[1]:
                raise TransferlabError(f"fit_on has {held.shape[1]} dimensions but the database has {d.shape[1]}")
            d_out = post.fit(held).transform(d)
        return _checked(post.transform(q), q, "queries"), _checked(d_out, d, "database")
    if fit_on is not None:
        raise TransferlabError("postprocess is already fitted: fit_on is for a postprocess spec")
    return _checked(postprocess.transform(q), q, "queries"), _checked(postprocess.transform(d), d, "database")


def _checked(out: Any, x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(out)
    if arr.ndim != 2 or arr.shape[0] != x.shape[0]:
        raise TransferlabError(f"post-processing turned {name} {x.shape} into {arr.shape}")
    return as_array(arr, f"post-processed {name}", 2)


def _retrieve_spatial(
    query_windows: Any, db_windows: Any, postprocess: str | Transform | None, fit_on: np.ndarray | None,
    q_mask: Any, db_mask: Any, top_k: int | None, device: torch.device,
) -> np.ndarray:
    """Spatial search with the post-processing per window: postprocess -> L2 -> search."""
    qw, dw, _, valid = windows_pair(query_windows, db_windows, q_mask, db_mask)
    flat_q, flat_d = qw.reshape(-1, qw.shape[2]), dw.reshape(-1, dw.shape[2])
    held = None
    if fit_on is not None:  # held-out windows (n, R, D) or vectors (n, D)
        held = np.asarray(fit_on)
        held = held.reshape(-1, held.shape[-1]) if held.ndim == 3 else held
    elif isinstance(postprocess, str) and not valid.all():
        held = flat_d[valid.reshape(-1)]  # a spec is fit on the database's valid windows only
    flat_q, flat_d = _postprocessed(postprocess, held, flat_q, flat_d)
    qw, dw = flat_q.reshape(*qw.shape[:2], -1), flat_d.reshape(*dw.shape[:2], -1)
    return spatial_search_rank(l2_normalize(qw), l2_normalize(dw), q_mask, db_mask, top_k=top_k, device=device)
