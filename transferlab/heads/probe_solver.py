"""The probe's solver: all one-vs-rest heads at once by batched truncated Newton in torch.

Newton directions from preconditioned conjugate gradient on the (generalised) Hessian, an
exact line search, heads stopping one by one (see ``heads/probe.py``'s docstring for the
objectives and the preconditioners). Only ``heads/probe.py`` calls it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Rotate into the eigenbasis of X~^T X~ (and precondition there) when d is at most this.
ROTATE_MAX_DIM = 2048
# With fewer rows than dimensions and the bias regularised (squared hinge), the rotated basis
# comes from the n x n kernel X~ X~^T instead, when n is at most this: one Gram product and one
# eigh replace the QR, the d-side Gram and the rotation (2500 x 4096: 1.2 s instead of 2.1 s,
# and the rotated preconditioner cuts CG steps 3x against the diagonal one beyond 2048).
KERNEL_ROTATE_MAX_ROWS = 3072
# Size of the leading eigen-block whose Hessian is inverted exactly in the preconditioner.
_BLOCK = 64
# Products with at most this many head columns read A^T from a contiguous copy (``margins``).
_THIN = 16
# ``BlockSchedule``: a block costing at most this many CG steps is always built; otherwise the
# block starts at the first C whose diagonal-only solve averaged more CG steps per Newton step
# than ``_DIAGONAL_CG_STEPS`` (500 x 192 x 10: 3.8 at C = 0.2, 6.8 at C = 1, 12 at C = 4.6).
_CHEAP_BLOCK = 2
_DIAGONAL_CG_STEPS = 5


class Design:
    """The feature side shared by all heads: X~ = [X, 1], possibly rotated, and the regulariser.

    Plain form: parameters V are (d + 1, H), ``[w; b]``. Rotated form (moderate d): the solver
    works on A = X~ Q, with Q the eigenvectors of X~^T X~ (largest first), and parameters
    U = Q^T V. The problem is the same (Q is orthogonal), but in that basis a diagonal plus a
    small leading block approximates every head's Hessian well, so CG needs few iterations.
    ``reg_bias`` is 1 when the bias is regularised like a feature (LinearSVC), 0 when it is free.
    """

    def __init__(self, X: torch.Tensor, reg_bias: float, rotate: bool, span: bool = False):
        self.reg_bias = reg_bias
        self.rotated = rotate
        self.n = X.shape[0]
        # Row-space reduction (n < d): every optimal w lies in the span of the training rows
        # (the gradient of the loss is X^T dz, the regulariser is ||w||^2), so with the thin
        # factorisation X^T = P R (P orthonormal, d x n) the problem in u = P^T w on the
        # features X P = R^T is the same problem, of size n instead of d.
        self.span_basis: torch.Tensor | None = None
        self._kernel: tuple[torch.Tensor, torch.Tensor] | None = None
        if span and rotate and reg_bias == 1.0:
            self._rotate_by_kernel(X)
            return
        if span:
            P, R = torch.linalg.qr(X.T)
            self.span_basis = P
            X = R.T.contiguous()
        if rotate:
            Xt = torch.cat([X, torch.ones(self.n, 1, device=X.device, dtype=X.dtype)], 1)
            _, Q = torch.linalg.eigh((Xt.T @ Xt).double())
            self.Q = Q.flip(1).to(X.dtype).contiguous()
            self.A = Xt @ self.Q
            del Xt
            self.q = self.Q[-1].clone()  # the bias, seen in rotated coordinates
        else:
            self.A = X
        self._A2: torch.Tensor | None = None
        self._AT: torch.Tensor | None = None

    def _rotate_by_kernel(self, X: torch.Tensor) -> None:
        """A = U S from the eigendecomposition X~ X~^T = U S^2 U^T (n < d, bias regularised).

        [w; b] is regularised as a whole, so it lies in the row space of X~: with P = X~^T U S^-1
        (orthonormal columns) the problem in u = P^T [w; b] on the features X~ P = U S is the
        same problem, already in the eigenbasis the rotated preconditioner wants. Directions
        with s below 1e-6 s_max (float32 cannot see them in the margins) are dropped.
        """
        self.rotated = True
        Xt = torch.cat([X, torch.ones(self.n, 1, device=X.device, dtype=X.dtype)], 1)
        evals, U = torch.linalg.eigh((Xt @ Xt.T).double())
        evals, U = evals.flip(0), U.flip(1)
        keep = evals > 1e-12 * evals[0].clamp(min=1e-300)
        s = evals[keep].sqrt()
        U = U[:, keep]
        self.A = (U * s).to(X.dtype).contiguous()
        self.q = (U.sum(0) / s).to(X.dtype)  # the bias, seen in these coordinates (unused: reg_bias 1)
        self._kernel = (Xt, (U / s).to(X.dtype))  # [w; b] = X~^T (U S^-1 u)
        self._A2, self._AT = None, None

    @property
    def A2(self) -> torch.Tensor:
        if self._A2 is None:
            self._A2 = self.A * self.A
        return self._A2

    def zeros(self, n_heads: int) -> torch.Tensor:
        return torch.zeros(self.A.shape[1] + (0 if self.rotated else 1), n_heads, device=self.A.device)

    @property
    def AT(self) -> torch.Tensor:
        """A^T, contiguous (built on first use)."""
        if self._AT is None:
            self._AT = self.A.T.contiguous()
        return self._AT

    def margins(self, V: torch.Tensor) -> torch.Tensor:
        """X~ V, shape (n, H)."""
        return self.margins_rows(V.t()).t()

    def margins_rows(self, VT: torch.Tensor) -> torch.Tensor:
        """(X~ V)^T from V^T (H, dim): shape (H, n).

        Heads as rows: V^T A^T is about twice as fast as A V for thin V on CPU BLAS. For 2-7
        heads (CG and Newton drop finished heads, so many late products are that thin) BLAS
        is 4-8x slower on the transposed view of A than on a contiguous copy of A^T, so up to
        ``_THIN`` heads read the copy (benchmarks/bench_probe.py --matmul).
        """
        W = VT if self.rotated else VT[:, :-1]
        AT = self.AT if VT.shape[0] <= _THIN else self.A.T
        return W @ AT if self.rotated else torch.addmm(VT[:, -1:], W, AT)

    def back(self, U: torch.Tensor, A: torch.Tensor | None = None) -> torch.Tensor:
        """X~^T U for U of shape (n, H)."""
        return self.back_rows(U.t(), A).t()

    def back_rows(self, UT: torch.Tensor, A: torch.Tensor | None = None) -> torch.Tensor:
        """(X~^T U)^T from U^T (H, n): shape (H, dim). U^T A is several times faster than A^T U
        for thin U on CPU BLAS."""
        out = UT @ (self.A if A is None else A)
        return out if self.rotated else torch.cat([out, UT.sum(1, keepdim=True)], 1)

    def reg(self, V: torch.Tensor) -> torch.Tensor:
        """R V, where R is the identity except (1 - reg_bias) removed along the bias."""
        return V if self.reg_bias == 1.0 else self.reg_rows(V.t()).t()

    def reg_rows(self, VT: torch.Tensor) -> torch.Tensor:
        """(R V)^T from V^T (H, dim)."""
        if self.reg_bias == 1.0:
            return VT
        if self.rotated:
            return VT - (1.0 - self.reg_bias) * (VT @ self.q)[:, None] * self.q[None, :]
        out = VT.clone()
        out[:, -1] *= self.reg_bias
        return out

    def hessian_rows(self, DT: torch.Tensor, C: float, curv_rows: torch.Tensor) -> torch.Tensor:
        """((R + C X~^T D X~) d)^T for every head's d (rows of DT, (H, dim)); curvatures as rows (H, n).

        With R the identity in the rotated basis (squared hinge, the common case) the
        regulariser and the loss part are one fused matmul-add.
        """
        U = curv_rows * self.margins_rows(DT)
        if self.reg_bias == 1.0 and self.rotated:
            return torch.addmm(DT, U, self.A, alpha=C)
        return torch.add(self.reg_rows(DT), self.back_rows(U), alpha=C)

    def reg_diag(self) -> torch.Tensor:
        diag = torch.ones(self.zeros(1).shape[0], device=self.A.device)
        if self.rotated:
            return diag - (1.0 - self.reg_bias) * self.q * self.q
        diag[-1] = self.reg_bias
        return diag

    def to_original(self, V: torch.Tensor) -> torch.Tensor:
        """[w; b] of shape (d + 1, H)."""
        if self._kernel is not None:
            Xt, coef = self._kernel
            return Xt.T @ (coef @ V)
        V = self.Q @ V if self.rotated else V
        if self.span_basis is not None:
            V = torch.cat([self.span_basis @ V[:-1], V[-1:]])
        return V

    def preconditioner(self, C: float, curv_rows: torch.Tensor, block: torch.Tensor | None = None) -> Preconditioner:
        """M^-1 for every head: diag of its Hessian, plus (rotated) the exact leading block ``block``.

        Curvatures as rows (H, n). ``block``: the inverse leading blocks built earlier for these
        heads at this C (``block_inverse`` of an older iterate's curvature): still a symmetric
        positive definite preconditioner, so CG stays exact, and the block's n r^2 cost per
        head is paid once per C, not once per Newton step. None: the diagonal only.
        """
        diag = torch.add(self.reg_diag()[None, :], self.back_rows(curv_rows, self.A2), alpha=C)
        if not self.rotated:
            # LIBLINEAR's mixed preconditioner (Hsia, Chiang & Lin 2018): robust in any basis.
            return Preconditioner((0.99 + 0.01 * diag).clamp_(min=1e-12))
        diag = diag.clamp_(min=1e-12)
        return Preconditioner(diag, block)

    def block_inverse(self, C: float, curv_rows: torch.Tensor) -> torch.Tensor | None:
        """Every head's inverse leading r x r Hessian block (H, r, r), rotated basis only.

        The inverse is formed once from the block's Cholesky factor, in float64: CG applies it
        several times per Newton step, and one batched matmul is about twice as fast as a
        triangular solve pair at these sizes. None when a block is numerically indefinite
        (the preconditioner keeps the diagonal only).
        """
        if not self.rotated:
            return None
        r = min(_BLOCK, self.A.shape[1])
        Ar = self.A[:, :r]
        reg_block = torch.eye(r, device=Ar.device)
        if self.reg_bias != 1.0:
            qr = self.q[:r]
            reg_block = reg_block - (1.0 - self.reg_bias) * torch.outer(qr, qr)
        blocks = torch.empty(curv_rows.shape[0], r, r, device=Ar.device)
        for h0 in range(0, curv_rows.shape[0], 16):
            cw = curv_rows[h0 : h0 + 16]  # (h, n)
            blocks[h0 : h0 + 16] = torch.matmul(Ar.T[None] * cw[:, None, :], Ar[None])
        blocks = reg_block[None] + C * blocks
        chol, info = torch.linalg.cholesky_ex(blocks)
        if bool((info != 0).any()):
            return None
        return torch.cholesky_inverse(chol.double()).to(chol.dtype)


class BlockSchedule:
    """Which Cs of one design's ascending C path get the leading-block preconditioner.

    A block costs ~n r^2 per head, about r^2 / (2 dim) CG steps. Where that is more than
    ``_CHEAP_BLOCK`` steps (small dims: 12 at 500 x 192), the path starts with the diagonal
    alone: at small C the rotated Hessian is close to its diagonal and CG converges in a few
    steps without it (500 x 192 x 10: 3-4 CG steps per Newton step at C <= 0.2). The first
    diagonal-only solve that averages more than ``_DIAGONAL_CG_STEPS`` CG steps per Newton
    step switches the block on for its C and every larger one (the Hessian's conditioning
    grows with C), the refit included.
    """

    def __init__(self, design: Design):
        cheap = _BLOCK * _BLOCK <= _CHEAP_BLOCK * 2 * design.A.shape[1]
        self.from_C = 0.0 if cheap else math.inf

    def wants(self, C: float) -> bool:
        return C >= self.from_C

    def record(self, C: float, newton_steps: int, cg_steps: int, used_block: bool) -> None:
        if not used_block and cg_steps > _DIAGONAL_CG_STEPS * newton_steps:
            self.from_C = min(self.from_C, C)


class Preconditioner:
    """Applies M^-1 to every head's vector (the rows of R, (H, dim)): a diagonal, with an
    optional exact leading block (its inverse, symmetric)."""

    def __init__(self, diag: torch.Tensor, inverse: torch.Tensor | None = None):
        self.diag, self.inverse = diag, inverse

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        out = R / self.diag
        if self.inverse is not None:
            r = self.inverse.shape[-1]
            # r^T M^-1 = (M^-1 r)^T, M^-1 symmetric: row vectors times the blocks are about
            # twice as fast as the blocks times column vectors (bmm) at 10-100 heads
            out[:, :r] = torch.matmul(R[:, None, :r], self.inverse).squeeze(1)
        return out

    def subset(self, rows: torch.Tensor) -> Preconditioner:
        """The preconditioner of the heads ``rows`` only."""
        return Preconditioner(self.diag[rows], None if self.inverse is None else self.inverse[rows])


class Heads:
    """A batch of binary problems sharing one design: +-1 targets and sample weights (n, H).

    Head h trains on the rows where ``S[:, h] > 0``, with labels ``Y[:, h]``. Weights carry class
    balancing, difficult (0) labels and fold membership.
    """

    def __init__(self, design: Design, Y: torch.Tensor, S: torch.Tensor, loss: str):
        self.design, self.Y, self.S, self.loss = design, Y, S, loss

    def loss_terms(self, z: torch.Tensor, Y: torch.Tensor, S: torch.Tensor, need_curv: bool = True,
                   need_total: bool = True):
        """Per-head loss sums (float64; None unless ``need_total``), d loss / d z and the curvature weights D."""
        total = None
        if self.loss == "squared_hinge":
            m = torch.addcmul(torch.ones_like(z), Y, z, value=-1.0).clamp_(min=0.0)
            sm = S * m
            if need_total:
                total = (sm * m).sum(0, dtype=torch.float64)
            dz = (-2.0 * Y).mul_(sm)
            curv = (2.0 * S).mul_(m > 0) if need_curv else None
        else:
            yz = Y * z
            if need_total:
                total = (S * torch.nn.functional.softplus(-yz)).sum(0, dtype=torch.float64)
            sig = torch.sigmoid(-yz)
            dz = -Y * S * sig
            curv = S * sig * (1.0 - sig) if need_curv else None
        return total, dz, curv

    def g0_norm(self) -> torch.Tensor:
        """Gradient norm of each head at V = 0, divided by C (the scale of the stopping test)."""
        _, dz, _ = self.loss_terms(torch.zeros_like(self.Y), self.Y, self.S, need_curv=False, need_total=False)
        return torch.linalg.vector_norm(self.design.back(dz), dim=0)


def _objective(heads: Heads, V: torch.Tensor, z: torch.Tensor, C: float, Y: torch.Tensor, S: torch.Tensor):
    total, dz, curv = heads.loss_terms(z, Y, S)
    reg = heads.design.reg(V)
    f = 0.5 * (V.double() * reg.double()).sum(0) + C * total
    g = torch.add(reg, heads.design.back(dz), alpha=C)
    return f, g, curv


def newton(
    heads: Heads,
    C: float,
    V: torch.Tensor,
    g0_norm: torch.Tensor,
    tol: float,
    max_iter: int,
    max_cg: int = 500,
    cg_tol: float = 0.1,
    stats: dict | None = None,
    schedule: BlockSchedule | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Minimise every head's objective from the start point V.

    The loop works on the heads still running: when some finish, the working state is
    written back and the rest gathered once (not at every step). ``schedule``: whether this C
    gets the leading-block preconditioner (rotated designs; None: always). Returns the
    solution, the number of Newton iterations, and how many heads hit max_iter.
    """
    design = heads.design
    V = V.clone()
    cols: torch.Tensor | None = None  # the working heads' columns of V; None: all of them
    Y, S, threshold = heads.Y, heads.S, tol * C * g0_norm
    Vw = V
    z = design.margins(Vw)
    f, g, curv = _objective(heads, Vw, z, C, Y, S)
    stalled: torch.Tensor | None = None
    block: torch.Tensor | None = None  # every head's inverse leading block, built at the first step
    use_block = design.rotated and (schedule is None or schedule.wants(C))
    cg_steps = steps = unconverged = 0
    for it in range(1, max_iter + 2):
        live = torch.linalg.vector_norm(g, dim=0) > threshold
        if stalled is not None:
            live &= ~stalled
        n_live = int(live.sum())
        if n_live == 0 or it > max_iter:
            steps, unconverged = it - 1, n_live
            break
        if n_live < live.shape[0]:  # heads finished: write back, keep the running ones
            if cols is None:
                V = Vw
            else:
                V[:, cols] = Vw
            keep = torch.nonzero(live).squeeze(1)
            cols = keep if cols is None else cols[keep]
            Y, S, threshold = heads.Y[:, cols], heads.S[:, cols], threshold[keep]
            Vw, z, f, g, curv = Vw[:, keep], z[:, keep], f[keep], g[:, keep], curv[:, keep]
            block = None if block is None else block[keep]
        if use_block and block is None:
            block = design.block_inverse(C, curv.t())
        step, n_cg = _pcg(design, C, g, curv, max_cg, cg_tol, block)
        cg_steps += n_cg
        if stats is not None:
            stats["cg"] = stats.get("cg", 0) + n_cg
            stats["newton"] = stats.get("newton", 0) + 1
        Xp = design.margins(step)
        t = _line_search(heads, C, Vw, z, g, step, Xp, Y, S)
        V_new = Vw + t * step
        z_new = z + t * Xp
        f_new, g_new, curv_new = _objective(heads, V_new, z_new, C, Y, S)
        # A step that does not decrease the objective, or gains almost nothing relative to it,
        # means the head has reached what float32 arithmetic can resolve.
        decreased = f_new < f
        stalled = ~decreased | ((f - f_new) <= tol * f_new.abs())
        if bool(decreased.all()):  # the usual case: no selects
            Vw, z, f, g, curv = V_new, z_new, f_new, g_new, curv_new
        else:
            Vw, z, f, g, curv = (torch.where(decreased, new, old) for new, old in
                                 ((V_new, Vw), (z_new, z), (f_new, f), (g_new, g), (curv_new, curv)))
    if cols is None:
        V = Vw
    else:
        V[:, cols] = Vw
    if schedule is not None:
        schedule.record(C, steps, cg_steps, use_block)
    return V, steps, unconverged


def _pcg(
    design: Design, C: float, g: torch.Tensor, curv: torch.Tensor, max_cg: int, rel_tol: float,
    block: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Solve (R + C X~^T D X~) p = -g for every column at once by preconditioned CG.

    Truncated (LIBLINEAR's rule): a column stops once its residual is ``rel_tol`` of ``|g|``.
    Finished columns are dropped from the matmuls once a quarter of them are done. Inside,
    heads are rows (every vector op reads contiguous memory). While every head is live and R
    is the identity (squared hinge), d^T H d >= |d|^2 > 0 and r^T M^-1 r > 0, so the steps
    need no masks: a step of a 500 x 192 problem is ~20 short ops, and each op saved counts.
    """
    curv_all = curv.t().contiguous()
    precond = design.preconditioner(C, curv_all, block)
    r = g.t().neg().contiguous()
    p = torch.zeros_like(r)
    rows = torch.arange(r.shape[0], device=r.device)
    zr = precond(r)
    d = zr.clone()
    rz = torch.linalg.vecdot(r, zr, dim=1)
    stop = rel_tol * torch.linalg.vector_norm(r, dim=1)
    curv_c = curv_all
    p_c = p  # the step restricted to the live heads (written back when heads drop)
    unmasked = design.reg_bias == 1.0
    k = 0
    for k in range(max_cg):  # noqa: B007 - the count is returned
        live = torch.linalg.vector_norm(r, dim=1) > stop
        n_live = int(live.sum())
        if n_live == 0:
            break
        if n_live < 0.75 * len(rows):
            if p_c is not p:
                p[rows] = p_c
            keep = torch.nonzero(live).squeeze(1)
            rows, r, d, rz, stop, live = rows[keep], r[keep], d[keep], rz[keep], stop[keep], live[keep]
            p_c, curv_c, precond = p[rows], curv_all[rows], precond.subset(keep)
        all_live = unmasked and n_live == len(rows)
        Hd = design.hessian_rows(d, C, curv_c)
        dHd = torch.linalg.vecdot(d, Hd, dim=1)
        alpha = (rz / dHd if all_live else torch.where(live & (dHd > 0), rz / dHd, 0.0)).unsqueeze(1)
        p_c.addcmul_(d, alpha)
        r.addcmul_(Hd, alpha, value=-1.0)
        zr = precond(r)
        rz_new = torch.linalg.vecdot(r, zr, dim=1)
        beta = rz_new / rz if all_live else torch.where(live, rz_new / rz, 0.0)
        d = torch.addcmul(zr, d, beta.unsqueeze(1))
        rz = rz_new
    if p_c is not p:
        p[rows] = p_c
    return p.t(), k


def _line_search(heads, C, V, z, g, step, Xp, Y, S, max_steps: int = 20):
    """Exact line search per head: safeguarded 1-D Newton on phi'(t), O(n H) per trial.

    The objective along ``V + t p`` is convex in t; its derivatives only need ``z + t X p``,
    so no matmul is repeated, and the per-row factors that do not depend on t are formed once
    (``_restriction``). The 1-D bookkeeping (brackets, safeguards) runs on the host in numpy
    float64: a score of ops on H numbers each trial, several times cheaper there than as
    torch ops (the search was a quarter of a small fit).
    """
    reg = heads.design.reg
    vp, pp, slope0 = (torch.stack([reg(V), reg(step), g]).double() * step.double()).sum(1).cpu().numpy()
    loss_derivatives = _restriction(heads.loss, z, Xp, Y, S)
    t = np.ones_like(vp)
    lo = np.zeros_like(vp)
    hi = np.full_like(vp, np.inf)
    done = slope0 >= 0  # not a descent direction (numerical noise): t is irrelevant
    flat = 1e-4 * np.abs(slope0)
    for _ in range(max_steps):
        l1, l2 = loss_derivatives(torch.from_numpy(t).to(device=z.device, dtype=z.dtype)).cpu().numpy()
        d1 = vp + t * pp + C * l1
        d2 = pp + C * l2
        done |= np.abs(d1) <= flat
        if done.all():
            break
        lo = np.where(d1 < 0, t, lo)
        hi = np.where(d1 >= 0, t, hi)
        t_new = t - d1 / np.maximum(d2, 1e-300)
        outside = (t_new <= lo) | (t_new >= hi)
        fallback = np.where(np.isinf(hi), 2 * t, 0.5 * (lo + hi))
        t = np.where(done, t, np.where(outside, fallback, t_new))
    return torch.from_numpy(t).to(device=V.device, dtype=V.dtype)


def _restriction(loss: str, z: torch.Tensor, Xp: torch.Tensor, Y: torch.Tensor, S: torch.Tensor):
    """t -> [sum_i dL/dt; sum_i d2L/dt2] (2, H) in float64, for the loss at margins z + t Xp.

    Uses Y^2 = 1 (targets are +-1): with a = Y Xp, y_i (z_i + t Xp_i) = Y z + t a and
    Xp^2 = a^2.
    """
    a = Y * Xp
    Sa = S * a
    if loss == "squared_hinge":
        base = torch.addcmul(torch.ones_like(z), Y, z, value=-1.0)  # 1 - y z
        weights = torch.stack([-2.0 * Sa, 2.0 * Sa * a])  # d/dt and d2/dt2 per unit of [m, m > 0]

        def hinge(t: torch.Tensor):
            m = torch.addcmul(base, a, t, value=-1.0).clamp_(min=0.0)  # max(0, 1 - y (z + t Xp))
            return (weights * torch.stack([m, m.sign()])).sum(1, dtype=torch.float64)  # sign: m >= 0
        return hinge
    Sa2 = Sa * a
    yz = Y * z

    def logistic(t: torch.Tensor):
        sig = torch.sigmoid(torch.addcmul(yz, a, t).neg_())  # sigma(-y (z + t Xp))
        return torch.stack([(Sa * sig).sum(0, dtype=torch.float64).neg_(),
                            (Sa2 * sig * (1.0 - sig)).sum(0, dtype=torch.float64)])
    return logistic
