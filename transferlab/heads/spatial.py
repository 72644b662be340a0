"""The spatial search of Razavian et al. (arXiv 1412.6574) on per-image sub-window descriptors.

Distance(query, image) = mean over the query's sub-windows of the minimum Euclidean distance
to the image's sub-windows; computed per block of images so Oxford5k-sized sets run on a
laptop. The sub-window geometry is ``features.pooling.spatial_windows`` (the extractor pools
those boxes). Conventions as in ``heads.ranking``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from transferlab.device import resolve_device
from transferlab.errors import TransferlabError
from transferlab.heads.ranking import (
    BLOCK_ELEMENTS,
    as_array,
    chunk_starts,
    positive_int,
    row_sq_norms,
)


def as_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise TransferlabError(f"{name} must have shape {shape}, got {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise TransferlabError(f"{name} must be boolean (True = valid window)")
        arr = arr.astype(bool)
    return arr


def windows_pair(
    query_windows: Any, db_windows: Any, q_mask: Any, db_mask: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    qw = as_array(query_windows, "query_windows", 3)
    dw = as_array(db_windows, "db_windows", 3)
    if qw.shape[2] != dw.shape[2]:
        raise TransferlabError(
            f"query windows have {qw.shape[2]} dimensions but database windows have {dw.shape[2]}"
        )
    qm = as_mask(q_mask, qw.shape[:2], "q_mask")
    dm = as_mask(db_mask, dw.shape[:2], "db_mask")
    qm = np.ones(qw.shape[:2], dtype=bool) if qm is None else qm
    dm = np.ones(dw.shape[:2], dtype=bool) if dm is None else dm
    empty = np.flatnonzero(~qm.any(axis=1))
    if empty.size:
        raise TransferlabError(f"query {int(empty[0])} has no valid window in q_mask")
    return qw, dw, qm, dm


def spatial_search_distances(
    query_windows: np.ndarray,
    db_windows: np.ndarray,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    chunk: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Query-to-image distances (n_q, n_db), float32, of Razavian et al.'s spatial search.

    query_windows (n_q, Rq, D), db_windows (n_db, Rd, D): one descriptor per sub-window (pass
    them post-processed, e.g. L2-normalised). Distance(query, image) = mean over the query's
    valid windows of the minimum Euclidean (not squared) distance to the image's valid
    windows. Masks (True = valid) are optional; an image with no valid window is at +inf.
    ``chunk`` images are processed per block (default: a block of about 2**23 floats), so
    Oxford5k-sized sets run on a laptop.
    """
    qw, dw, qm, dm = windows_pair(query_windows, db_windows, q_mask, db_mask)
    chunk = positive_int(chunk, "chunk")
    n_q, r_q, dim = qw.shape
    n_db, r_d, _ = dw.shape
    out = np.empty((n_q, n_db), dtype=np.float32)
    if n_q == 0 or n_db == 0:
        return out
    dev = resolve_device(device)
    q_rows = max(1, min(n_q, 4096 // r_q))  # queries per block: at most ~4096 window rows
    chunk = chunk or max(1, BLOCK_ELEMENTS // (q_rows * r_q * r_d))
    db = torch.from_numpy(dw.reshape(n_db * r_d, dim)).to(dev)
    # |d|^2 with invalid windows at +inf: they can never be the minimum, at no extra pass.
    db_sq = row_sq_norms(db, "db_windows")
    db_sq = torch.where(torch.from_numpy(dm.reshape(-1)).to(dev), db_sq, float("inf"))
    for qs, qe in chunk_starts(n_q, q_rows):
        q = torch.from_numpy(qw[qs:qe].reshape(-1, dim)).to(dev)
        q_sq = row_sq_norms(q, "query_windows").view(qe - qs, r_q, 1)
        q_valid = torch.from_numpy(qm[qs:qe]).to(dev)[:, :, None]
        n_valid = q_valid.sum(dim=1).to(torch.float32)
        for ds, de in chunk_starts(n_db, chunk):
            a, b = ds * r_d, de * r_d
            # min over an image's windows of |d|^2 - 2 q.d, then + |q|^2: squared distance
            partial = torch.addmm(db_sq[None, a:b], q, db[a:b].T, alpha=-2.0)
            nearest = partial.view(qe - qs, r_q, de - ds, r_d).amin(dim=3)
            nearest = nearest.add_(q_sq).clamp_min_(0.0).sqrt_()  # (queries, Rq, images)
            nearest = torch.where(q_valid, nearest, torch.zeros((), device=dev))
            out[qs:qe, ds:de] = (nearest.sum(dim=1) / n_valid).cpu().numpy()
    return out


def rank_by_distance(distances: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Ranking (n_q, n_db or top_k) by ascending distance, ties to the lower index."""
    dist = np.asarray(distances, dtype=np.float32)
    if dist.ndim != 2 or np.isnan(dist).any():
        raise TransferlabError(f"distances must be a 2-D array without NaN, got shape {dist.shape}")
    k = positive_int(top_k, "top_k")
    order = np.argsort(dist + np.float32(0.0), axis=1, kind="stable")
    return order[:, :k] if k is not None else order


def spatial_search_rank(
    query_windows: np.ndarray,
    db_windows: np.ndarray,
    q_mask: np.ndarray | None = None,
    db_mask: np.ndarray | None = None,
    chunk: int | None = None,
    top_k: int | None = None,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Ranking by ``spatial_search_distances`` (smallest first; ties to the lower index)."""
    distances = spatial_search_distances(query_windows, db_windows, q_mask, db_mask, chunk, device)
    return rank_by_distance(distances, top_k)
