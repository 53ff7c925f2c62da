"""Low-rank math shared by merge, extract and resize.

The SVD of a product up@down (or of a sum of such products) is taken from QR decompositions of the
stacked factors and an SVD of the small r x r core, so the full out x in matrix is never formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from library.errors import ToolkitError


def svd_of_product(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of `up @ down` ([out,r] @ [r,in]) via QR of both factors; costs O((out+in)·r²)."""
    q_u, r_u = torch.linalg.qr(up)
    q_d, r_d = torch.linalg.qr(down.T)
    u_c, s, vh_c = torch.linalg.svd(r_u @ r_d.T, full_matrices=False)
    return q_u @ u_c, s, vh_c @ q_d.T


def svd_of_sum(terms: Sequence[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of Σ coef·up@down from the stacked factors [c1·up1 | c2·up2 ...] @ [down1; down2 ...]."""
    up = torch.cat([c * u for u, _, c in terms], dim=1)
    down = torch.cat([d for _, d, _ in terms], dim=0)
    return svd_of_product(up, down)


def randomized_svd(m: torch.Tensor, rank: int, oversample: int = 16, power_iters: int = 4,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD of a dense matrix by a randomized range finder with power iterations (Halko et al.)."""
    n_out, n_in = m.shape
    k = min(rank + oversample, n_out, n_in)
    if k >= min(n_out, n_in) * 0.8:  # close to full rank: the exact SVD is as cheap and exact
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    omega = torch.randn(n_in, k, dtype=m.dtype, device=m.device, generator=generator)
    q, _ = torch.linalg.qr(m @ omega)
    for _ in range(power_iters):
        q, _ = torch.linalg.qr(m.T @ q)
        q, _ = torch.linalg.qr(m @ q)
    u_b, s, vh = torch.linalg.svd(q.T @ m, full_matrices=False)
    return (q @ u_b)[:, :rank], s[:rank], vh[:rank]


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kohya convention: up = U[:, :k]·diag(S[:k]), down = Vh[:k]."""
    return u[:, :k] * s[:k], vh[:k]


def check_clamp_quantile(q: float | None) -> None:
    """`--clamp_quantile` must lie in (0, 1] (None or 1: no clamp); NaN fails the comparison too."""
    if q is not None and not 0 < q <= 1:
        raise ToolkitError(f"--clamp_quantile {q}: must be in (0, 1] (1 or omitted: no clamp)")


def quantile_abs_clamp(up: torch.Tensor, down: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp both factors to ±(q-quantile of their joined values), with no size limit (sort, not torch.quantile).

    The quantile interpolates linearly between neighbours, as `torch.quantile` (and so sd-scripts) does.
    """
    values = torch.sort(torch.cat([up.flatten(), down.flatten()]).float()).values
    pos = q * (len(values) - 1)
    lo = min(int(pos), len(values) - 1)
    hi = values[lo] + (pos - lo) * (values[min(lo + 1, len(values) - 1)] - values[lo])
    return up.clamp(-hi, hi), down.clamp(-hi, hi)


# ---------------------------------------------------------------------------------------------------------------
# Merge and extract (svd_merge_lora, extract_lora_from_models)
# ---------------------------------------------------------------------------------------------------------------

def lowrank_of_matrix(m: torch.Tensor, rank: int, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD of a dense matrix, accurate to extraction needs.

    Oversampling max(16, rank/2) with 6 power iterations keeps the rank-`rank` reconstruction error within 1%
    of the exact SVD's even for nearly flat spectra (measured down to σ_i ∝ i^-0.05); near full rank it is exact.
    """
    return randomized_svd(m, rank, oversample=max(16, rank // 2), power_iters=6, generator=generator)


def pad_rank(up: torch.Tensor, down: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 2-D factors [out,r] and [r,in] to rank k (the extra directions have singular value 0)."""
    r = down.shape[0]
    if r >= k:
        return up, down
    return (torch.cat([up, up.new_zeros(up.shape[0], k - r)], dim=1),
            torch.cat([down, down.new_zeros(k - r, down.shape[1])], dim=0))


def lowrank_of_sum(terms: Sequence[tuple[torch.Tensor, torch.Tensor, float]], k: int,
                   dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-k approximation (Eckart-Young) of Σ coef·up@down (+ `dense`) as up = U·S [out,k], down = Vh [k,in],
    and S.

    While the summed rank is below the layer's smaller side the SVD comes from the stacked factors (QR + a small
    core SVD) and the out x in matrix is never formed; otherwise (or with a `dense` part) the dense sum is
    decomposed exactly. The result is zero-padded to exactly k when the sum has lower rank.
    """
    if dense is None:
        n_out, n_in = terms[0][0].shape[0], terms[0][1].shape[1]
    else:
        n_out, n_in = dense.shape
    total = sum(d.shape[0] for _, d, _ in terms)
    if dense is None and total < min(n_out, n_in):
        u, s, vh = svd_of_sum(terms)
    else:
        for up, down, c in terms:
            part = c * (up @ down)
            dense = part if dense is None else dense + part
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    k_eff = min(k, s.shape[0])
    up, down = pad_rank(*split_factors(u, s, vh, k_eff), k)
    return up, down, s


# ---- resize_lora helpers (issue #5) ----------------------------------------------------------------------

def top_singular_value(m: torch.Tensor, steps: int = 32, seed: int = 0) -> float:
    """Spectral norm ‖m‖₂ by Golub–Kahan–Lanczos with full reorthogonalisation (exact for small matrices).

    32 steps give a relative error under 1e-3 even for flat (Gaussian-like) spectra, where power iteration
    needs hundreds of passes over the matrix; the estimate never exceeds the true value.
    """
    m = m.reshape(m.shape[0], -1)
    n_out, n_in = m.shape
    if min(n_out, n_in) <= 2 * steps:  # small: the exact SVD is cheaper than the Python loop below
        return float(torch.linalg.svdvals(m.double())[0]) if m.numel() else 0.0
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n_in, generator=g, dtype=m.dtype).to(m.device)
    v = v / v.norm()
    us = torch.zeros(steps, n_out, dtype=m.dtype, device=m.device)
    vs = torch.zeros(steps, n_in, dtype=m.dtype, device=m.device)
    alphas, betas = [], []
    tol = 100 * torch.finfo(m.dtype).eps
    for j in range(steps):
        vs[j] = v
        u = m @ v
        for _ in range(2):  # twice: one pass loses orthogonality once the Krylov space is nearly invariant
            u = u - us[:j].T @ (us[:j] @ u)
        a = u.norm()
        if a <= tol * max(alphas, default=a):
            break
        alphas.append(a)
        us[j] = u = u / a
        w = m.T @ u - a * v
        for _ in range(2):
            w = w - vs[: j + 1].T @ (vs[: j + 1] @ w)
        b = w.norm()
        if b <= tol * max(alphas):
            break
        betas.append(b)
        v = w / b
    if not alphas:
        return 0.0
    k = len(alphas)
    bidiag = torch.diag(torch.stack(alphas).double())
    if k > 1:
        bidiag += torch.diag(torch.stack(betas[: k - 1]).double(), 1)
    return float(torch.linalg.svdvals(bidiag)[0])


@dataclass
class ProductSVD:
    """`up @ down = U·diag(s)·Vh` with U and Vh left as Householder reflectors times small cores.

    Same QR-core method as `svd_of_product`, but Q is never formed: `u(idx)` / `vh(idx)` build only the
    singular vectors asked for, which halves the cost when a resize keeps a fraction of the rank.
    """

    s: torch.Tensor  # [n] descending
    up_qr: tuple[torch.Tensor, torch.Tensor]  # geqrf(up): reflectors [out, r], tau
    down_qr: tuple[torch.Tensor, torch.Tensor]  # geqrf(down.T): reflectors [in, r], tau
    u_core: torch.Tensor  # [min(out, r), n]
    v_core: torch.Tensor  # [min(in, r), n]

    def u(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Left singular vectors (columns) `idx`, [out, k]."""
        return _apply_q(*self.up_qr, self.u_core if idx is None else self.u_core[:, idx])

    def vh(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Right singular vectors (rows) `idx`, [k, in]."""
        return _apply_q(*self.down_qr, self.v_core if idx is None else self.v_core[:, idx]).T

    def to(self, device: str | torch.device) -> ProductSVD:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return ProductSVD(move(self.s), tuple(map(move, self.up_qr)), tuple(map(move, self.down_qr)),
                          move(self.u_core), move(self.v_core))


def _apply_q(reflectors: torch.Tensor, tau: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """Q @ [core; 0] for the Q of a geqrf factorisation.

    Applying the reflectors to k columns (ormqr) beats forming Q (orgqr) and multiplying only when k is well
    below the rank; LAPACK works on blocks of 32 reflectors, so small ranks always form Q.
    """
    if tau.numel() == 0 or core.shape[1] == 0:
        return core.new_zeros(reflectors.shape[0], core.shape[1])
    if tau.numel() <= 64 or 2 * core.shape[1] > tau.numel():
        return torch.linalg.householder_product(reflectors[:, : tau.numel()], tau) @ core
    other = core.new_zeros(reflectors.shape[0], core.shape[1])
    other[: core.shape[0]] = core
    return torch.ormqr(reflectors, tau, other)


def factored_svd_of_product(up: torch.Tensor, down: torch.Tensor) -> ProductSVD:
    """SVD of `up @ down` ([out,r] @ [r,in]) through QR of both factors, Q kept implicit (see ProductSVD)."""
    h_u, tau_u = torch.geqrf(up)
    h_d, tau_d = torch.geqrf(down.T)
    r_u = torch.triu(h_u[: min(up.shape)])
    r_d = torch.triu(h_d[: min(down.shape)])
    u_c, s, vh_c = torch.linalg.svd(r_u @ r_d.T, full_matrices=False)
    return ProductSVD(s, (h_u, tau_u), (h_d, tau_d), u_c, vh_c.T)
