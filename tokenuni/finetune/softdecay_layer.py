"""A trainable SoftDecay layer for fine-tuning, with an exact and stable SVD backward.

Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via Singular Value Transformation",
UAI 2022 (SCIENCE.md §1). Per example, the token matrix of the real tokens X (T_real × d; padding
rows excluded) is decomposed X = U diag(s) Vᵀ and rebuilt as

    X' = U diag(h(s)) Vᵀ,   h(s) = f⁺(s) · s_max / f⁺(s_max),   f(s) = −ln(1 − α(s + α)) / α,

α < 0 a trainable scalar (initialised at −0.2 as their code). f is the formula of
:func:`tokenuni.transforms.softdecay.softdecay` (the one implementation; the post-hoc transform of
the unsupervised STS study uses it too). Choices, all documented deviations from their code:

* **Domain and sign.** f(s) is undefined where 1 − α(s + α) ≤ 0 (small s once α ≤ −1) and negative
  for s < −α. f⁺ = max(f, 0) with 0 where f is undefined (their code adds 1e-7 inside the log and
  lets f go negative). So f⁺(0) = 0 for every α < 0, which makes zero singular values — rank
  deficiency, padding — map to 0, and makes the map well defined on the odd extension used below.
* **α stays negative.** The raw parameter is used through ``min(α, −alpha_floor)`` (1e-3): an optimiser
  step past 0 would divide by zero. While clamped, α receives no gradient.
* **Rescaling** needs f⁺(s_max) > 0, i.e. s_max > −α; an example whose largest singular value is not
  (a near-zero token matrix) is passed through unchanged.
* **Padding.** The batch is processed at once: padding rows are zeroed, which adds only zero singular
  values (mapped to 0), so each example's real rows get exactly the per-example transform of their
  T_real × d matrix; padding rows of the output are the input's, untouched.
* **Their code** (``exrank_layer.py``, mode ``soft_expand``) runs ``torch.svd`` on the whole padded
  (B, max_len, d) tensor (padding included) and, in BERT's ``BertOutput``, adds the residual twice
  (``LayerNorm(SoftDecay(h + x) + x)``). We apply the layer to the LayerNorm's input once
  (``LayerNorm(SoftDecay(h + x))``) — see :mod:`tokenuni.finetune.model` for the placements.

Backward: no jitter. Autograd through ``torch.linalg.svd`` divides by s_i² − s_j², which is infinite
for repeated singular values (every rank-deficient token matrix has repeated zeros) even though the
map X ↦ U h(S) Vᵀ is itself smooth wherever h is. :class:`SpectralMap` computes its exact adjoint
with divided differences (the Daleckii–Krein formula for generalised matrix functions, via the
symmetric dilation [[0, X], [Xᵀ, 0]] whose eigenvalues are ±s_i): with A = Uᵀ Ḡ V,

    X̄ = U [Φ⁺ ∘ sym(A) + Φ⁻ ∘ skew(A)] Vᵀ + U diag(g/s) (Uᵀ Ḡ − A Vᵀ)      (T ≤ d; mirrored for T > d)
    Φ⁺_ij = (g_i − g_j)/(s_i − s_j),   Φ⁻_ij = (g_i + g_j)/(s_i + s_j),

where coincident arguments (|s_i − s_j| ≤ tol, s_i + s_j ≤ tol, s_i ≤ tol) take the limit, the
derivative g' (mean of g'_i and g'_j). Every entry is bounded by the Lipschitz constant of g, so the
backward is finite for any spectrum. The SVD runs in float64 (``svd_dtype``) and the result is cast
back to the input dtype. The rescaling factor s_max / f⁺(s_max) is differentiated by autograd through
s_max (gradient U e₁e₁ᵀVᵀ, no denominators).
"""
from __future__ import annotations

import torch

from tokenuni.transforms.softdecay import softdecay

#: relative tolerance (× s_max) under which two singular values count as equal in the divided differences
COINCIDENCE_TOL = 1e-9


def softdecay_positive(s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """f⁺(s) = max(f(s), 0), 0 where f is undefined (1 − α(s + α) ≤ 0); differentiable in s and α."""
    f = softdecay(s, alpha)
    return torch.where(torch.isnan(f) | (f < 0), torch.zeros_like(f), f)


def _divided(numerator, denominator, limit, tol):
    coincident = denominator.abs() <= tol
    return torch.where(coincident, limit, numerator / torch.where(coincident, torch.ones_like(denominator), denominator))


class SpectralMap(torch.autograd.Function):
    """(X, α) ↦ (U diag(g(s; α)) Vᵀ, s) for X = U diag(s) Vᵀ (batched thin SVD) and g elementwise, g(0) = 0.

    ``g`` is a torch function of (s, α), elementwise in s; its derivatives are taken by autograd in the
    backward. The adjoint is exact (divided differences), see the module docstring.
    """

    @staticmethod
    def forward(ctx, x, alpha, g):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        gs = g(s, alpha)
        y = (u * gs.unsqueeze(-2)) @ vh
        ctx.g = g
        ctx.save_for_backward(u, s, vh, alpha)
        return y, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_s):
        u, s, vh, alpha = ctx.saved_tensors
        with torch.enable_grad():
            s_var = s.detach().requires_grad_(True)
            a_var = alpha.detach().requires_grad_(True)
            g_graph = ctx.g(s_var, a_var)
            (dg,) = torch.autograd.grad(g_graph.sum(), s_var, retain_graph=True)  # elementwise g'(s)
        gs = g_graph.detach()
        tol = COINCIDENCE_TOL * s.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
        grad_x = torch.zeros(u.shape[:-1] + vh.shape[-1:], dtype=u.dtype, device=u.device)
        grad_alpha = None
        if grad_y is not None:
            v, ut = vh.transpose(-1, -2), u.transpose(-1, -2)
            a = ut @ grad_y @ v
            at = a.transpose(-1, -2)
            si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
            gi, gj = gs.unsqueeze(-1), gs.unsqueeze(-2)
            mean_dg = (dg.unsqueeze(-1) + dg.unsqueeze(-2)) / 2
            pair_tol = tol.unsqueeze(-1)
            phi_plus = _divided(gi - gj, si - sj, mean_dg, pair_tol)
            phi_minus = _divided(gi + gj, si + sj, mean_dg, pair_tol)
            core = phi_plus * (a + at) / 2 + phi_minus * (a - at) / 2
            grad_x = u @ core @ vh
            ratio = _divided(gs, s, dg, tol)  # g(s)/s, → g'(s) as s → 0
            m, n = u.shape[-2], vh.shape[-1]
            if m < n:  # rows of X span less than ℝ^d: the part of Ḡ outside span(V)
                grad_x = grad_x + (u * ratio.unsqueeze(-2)) @ (ut @ grad_y - a @ vh)
            elif m > n:  # columns of X span less than ℝ^T: the part of Ḡ outside span(U)
                grad_x = grad_x + (grad_y @ v - u @ a) @ (ratio.unsqueeze(-1) * vh)
            if ctx.needs_input_grad[1]:
                (grad_alpha,) = torch.autograd.grad(g_graph, a_var, a.diagonal(dim1=-2, dim2=-1))
        if grad_s is not None:
            grad_x = grad_x + (u * grad_s.unsqueeze(-2)) @ vh
        return grad_x, grad_alpha, None


class SoftDecay(torch.nn.Module):
    """SoftDecay of each example's token matrix, with a trainable α (see the module docstring).

    ``forward(x, mask)``: ``x`` (B, T, d) or (T, d), ``mask`` (B, T) / (T,) with 1 on real tokens (None:
    all real). Returns a tensor like ``x``: real rows transformed, padding rows unchanged.
    """

    def __init__(self, alpha: float = -0.2, trainable: bool = True, alpha_floor: float = 1e-3,
                 svd_dtype: torch.dtype = torch.float64):
        super().__init__()
        if not float(alpha) < 0:
            raise ValueError(f"softdecay: alpha must be negative, got {alpha}")
        if not float(alpha_floor) > 0:
            raise ValueError(f"softdecay: alpha_floor must be positive, got {alpha_floor}")
        self.alpha = torch.nn.Parameter(torch.tensor(float(alpha)), requires_grad=bool(trainable))
        self.alpha_floor = float(alpha_floor)
        self.svd_dtype = svd_dtype

    def effective_alpha(self) -> torch.Tensor:
        """The α in use: the parameter, kept ≤ −alpha_floor."""
        return self.alpha.clamp(max=-self.alpha_floor)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha):.4g}, trainable={self.alpha.requires_grad}, svd_dtype={self.svd_dtype}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        real = (torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device) if mask is None
                else mask.to(device=x.device).bool())
        rows = real.unsqueeze(-1)
        zeroed = torch.where(rows, x, torch.zeros_like(x)).to(self.svd_dtype)
        alpha = self.effective_alpha().to(self.svd_dtype)
        decayed, s = SpectralMap.apply(zeroed, alpha, softdecay_positive)
        s_max = s[..., :1]
        f_max = softdecay_positive(s_max, alpha)
        rescalable = f_max > 0  # s_max > −α
        scale = s_max / torch.where(rescalable, f_max, torch.ones_like(f_max))  # keep the largest singular value
        out = (decayed * scale.unsqueeze(-1)).to(x.dtype)
        out = torch.where(rows & rescalable.unsqueeze(-1), out, x)
        return out.squeeze(0) if squeeze else out
