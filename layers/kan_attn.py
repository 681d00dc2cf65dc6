"""Fourier Kolmogorov-Arnold attention (Fourier-KArAt, the modular low-rank form of KArAt).

Layout: q, k, v are (B, heads, N, d); N tokens including any class token. The operator's parameters are per
head and per key position, so N is fixed when they are built.

The row-wise softmax of the scores A = scale * q k^T (B, heads, N, N) is replaced, per head and per query row
a = A[k, :] (length N), by a KAN layer N -> r with Fourier units followed by a linear map r -> N:

    h_p      = sum_q  w_b[p, q] * b(a_q)  +  w_s[p, q] * f_pq(a_q),     p = 1..r
    f_pq(x)  = sum_{m=1..G} (c[p, q, m - 1] cos(m x) + c[p, q, G + m - 1] sin(m x))   (0-based c)
    sigma(a) = W h                         (W: N x r, no bias)
    out[k]   = sum_j sigma(a)_j v_j        (no normalisation: weights may be negative and need not sum to one)

Parameters per head: `coef` c (r, N, 2G) (cos harmonics 1..G, then sin harmonics 1..G), `base_weight` w_b (r, N),
`scale_weight` w_s (r, N), `proj_weight` W (N, r): r * N * (2G + 3) numbers. The base activation b is 'zero'
(the published Fourier-KArAt), 'silu' or 'identity'.

Implementations:
- `reference`: the literal formula, one query row at a time (an explicit loop over the N rows), every unit
  phi_pq evaluated on its own, then the N x N weight matrix times v.
- `vectorized`: all rows at once. The unit scale is folded into the coefficients (w_s * c), and the sum over
  units and harmonics becomes, per harmonic m, two (N x N) @ (N x r) matmuls on cos(m A) and sin(m A), so the
  N x N x 2G basis tensor is never materialised. The r -> N map is applied by associativity: sigma(A) v =
  H (W^T v), (N x r) @ (r x d), so the N x N weight matrix is not formed either (it is when attention dropout
  is active). With b = 'zero' the base term is identically zero and is not evaluated; w_b still enters the
  graph (times zero) so it receives its zero gradient exactly as in the reference.
- `dense`: all rows at once, literally: the N x N x 2G basis tensor, one matmul with the (N 2G, r) coefficient
  table, then the N x N weight matrix, then weights @ v. The plain vectorisation, kept as the countable form.

FLOPs (`kernel_impl('flops')` selects `dense`: the reference's per-row loop counts the same, but tracing it N times
per block is far slower; docs/operators.md, Fourier-KArAt): per head N^2 r (2G + 1) for the operator (+ N^2 r for a
non-zero base activation) plus N^2 d for the weights times v, the definition's work; sin/cos and elementwise
products are not counted (fvcore's convention). `vectorized` does less: it never forms the N x N weights (2 N r d
instead of N^2 (r + d)).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, resolve_impl

__all__ = [
    'FourierKArAt', 'KArAtAttention', 'fourier_kan_attention', 'fourier_kan_attention_dense',
    'fourier_kan_attention_reference', 'fourier_kan_attention_vectorized',
]

BASE_ACTS = ('zero', 'silu', 'identity')


def _base_act(x: torch.Tensor, base_act: str) -> torch.Tensor:
    if base_act == 'zero':
        return torch.zeros_like(x)
    if base_act == 'silu':
        return F.silu(x)
    if base_act == 'identity':
        return x
    raise ValueError(f'base_act must be one of {BASE_ACTS}, got {base_act!r}')


def _check_args(q, k, v, coef, base_weight, scale_weight, proj_weight) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'fourier_kan_attention expects q, k, v of shape (B, heads, N, d), got '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    heads, n = q.shape[1], q.shape[2]
    if coef.ndim != 4 or coef.shape[-1] % 2:
        raise ValueError(f'coef must be (heads, r, N, 2G), got {tuple(coef.shape)}')
    h_c, r, n_c, _ = coef.shape
    if (h_c, n_c) != (heads, n):
        raise ValueError(f'the KArAt operator was built for {h_c} heads and N={n_c} tokens, got {heads} heads and '
                         f'N={n} tokens (its units are per key position, so N is fixed)')
    if base_weight.shape != (h_c, r, n_c) or scale_weight.shape != (h_c, r, n_c) or proj_weight.shape != (h_c, n_c, r):
        raise ValueError(f'expected base_weight and scale_weight ({h_c}, {r}, {n_c}) and proj_weight '
                         f'({h_c}, {n_c}, {r}), got {tuple(base_weight.shape)}, {tuple(scale_weight.shape)}, '
                         f'{tuple(proj_weight.shape)}')


def fourier_kan_attention_reference(q, k, v, coef, base_weight, scale_weight, proj_weight, scale: float,
                                    base_act: str = 'zero', dropout_p: float = 0.) -> torch.Tensor:
    """The literal Fourier-KArAt formula (module docstring), one query row at a time.

    Args:
        q, k, v: (B, heads, N, d).
        coef: (heads, r, N, 2G) Fourier coefficients, cos harmonics 1..G then sin harmonics 1..G.
        base_weight, scale_weight: (heads, r, N). proj_weight: (heads, N, r).
        scale: score scale (d ** -0.5). base_act: 'zero', 'silu' or 'identity'.
        dropout_p: dropout on the N x N weights (training only; 0 in eval).

    Returns:
        (B, heads, N, d).
    """
    _check_args(q, k, v, coef, base_weight, scale_weight, proj_weight)
    grid = coef.shape[-1] // 2
    harmonics = torch.arange(1, grid + 1, device=q.device, dtype=q.dtype)
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    rows = []
    for i in range(scores.shape[-2]):
        a = scores[:, :, i, :]  # query row i: (B, h, N) over the keys
        angles = a[..., None] * harmonics  # (B, h, N, G)
        basis = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, h, N, 2G)
        # every unit phi_pq(a_q): (B, h, r, N)
        fourier = torch.einsum('bhqg,hpqg->bhpq', basis, coef)
        units = scale_weight * fourier + base_weight * _base_act(a, base_act)[:, :, None, :]
        hidden = units.sum(dim=-1)  # (B, h, r)
        rows.append(torch.einsum('hjp,bhp->bhj', proj_weight, hidden))  # (B, h, N)
    weights = torch.stack(rows, dim=2)  # (B, h, N, N)
    if dropout_p > 0.:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def fourier_kan_attention_vectorized(q, k, v, coef, base_weight, scale_weight, proj_weight, scale: float,
                                     base_act: str = 'zero', dropout_p: float = 0.) -> torch.Tensor:
    """Same result as the reference for all rows at once: per-harmonic matmuls and W applied to v first."""
    _check_args(q, k, v, coef, base_weight, scale_weight, proj_weight)
    if base_act not in BASE_ACTS:
        raise ValueError(f'base_act must be one of {BASE_ACTS}, got {base_act!r}')
    grid = coef.shape[-1] // 2
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    # (h, 2G, N, r): unit scale folded in, one contiguous (N, r) matrix per harmonic for the matmuls
    table = (coef * scale_weight[..., None]).permute(0, 3, 2, 1).contiguous()
    hidden = None
    for m in range(grid):
        angles = scores * (m + 1) if m else scores
        term = angles.cos() @ table[:, m] + angles.sin() @ table[:, grid + m]  # (B, h, N, r)
        hidden = term if hidden is None else hidden + term
    if base_act == 'zero':
        # b == 0: the base term is exactly zero; keep w_b in the graph so it gets its (zero) gradient
        hidden = hidden + (base_weight.sum(dim=-1) * 0.)[:, None, :]
    else:
        hidden = hidden + _base_act(scores, base_act) @ base_weight.transpose(-2, -1)
    if dropout_p > 0.:
        return F.dropout(hidden @ proj_weight.transpose(-2, -1), dropout_p) @ v
    return hidden @ (proj_weight.transpose(-2, -1) @ v)  # (B, h, N, r) @ (B, h, r, d)


def fourier_kan_attention_dense(q, k, v, coef, base_weight, scale_weight, proj_weight, scale: float,
                                base_act: str = 'zero', dropout_p: float = 0.) -> torch.Tensor:
    """Same result as the reference, plainly vectorised: basis tensor, coefficient matmul, N x N weights."""
    _check_args(q, k, v, coef, base_weight, scale_weight, proj_weight)
    if base_act not in BASE_ACTS:
        raise ValueError(f'base_act must be one of {BASE_ACTS}, got {base_act!r}')
    B, heads, n, _ = q.shape
    grid = coef.shape[-1] // 2
    harmonics = torch.arange(1, grid + 1, device=q.device, dtype=q.dtype)
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    angles = scores[..., None] * harmonics  # (B, h, N, N, G)
    basis = torch.cat([angles.cos(), angles.sin()], dim=-1).reshape(B, heads, n, n * 2 * grid)
    table = (coef * scale_weight[..., None]).reshape(heads, -1, n * 2 * grid).transpose(-2, -1)  # (h, N 2G, r)
    hidden = basis @ table  # (B, h, N, r)
    if base_act == 'zero':
        hidden = hidden + (base_weight.sum(dim=-1) * 0.)[:, None, :]
    else:
        hidden = hidden + _base_act(scores, base_act) @ base_weight.transpose(-2, -1)
    weights = hidden @ proj_weight.transpose(-2, -1)  # (B, h, N, N)
    if dropout_p > 0.:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


_IMPLS: ImplTable = {
    'vectorized': (fourier_kan_attention_vectorized, None),
    'dense': (fourier_kan_attention_dense, None),
    'reference': (fourier_kan_attention_reference, None),
}


def fourier_kan_attention(q, k, v, coef, base_weight, scale_weight, proj_weight, scale: float,
                          base_act: str = 'zero', dropout_p: float = 0., impl: Optional[str] = None) -> torch.Tensor:
    """Fourier-KArAt attention (see the module docstring); `impl` selects the kernel."""
    fn = resolve_impl('fourier_kan_attention', _IMPLS, impl, q, k, v, flops_impl='dense')
    return fn(q, k, v, coef, base_weight, scale_weight, proj_weight, scale, base_act, dropout_p)


class FourierKArAt(nn.Module):
    """The learnable row activation of every head of one attention layer (or of all layers, when shared).

    Holds, stacked over heads, the KAN layer N -> r (`coef`, `base_weight`, `scale_weight`) and the linear map
    r -> N (`proj_weight`): num_heads * r * N * (2G + 3) parameters.

    Args:
        num_heads: heads. num_tokens: N, tokens per image including the class token.
        rank: r, the hidden width of the low-rank form (12 in the paper).
        grid_size: G, the number of Fourier harmonics.
        base_act: base activation b of every unit: 'zero' (published), 'silu' or 'identity'.
        kernel_impl: implementation (None: process-wide setting, see layers.config).

    Init (the paper's is not recoverable; see backbones/karat.py): coefficients N(0, 1 / (N G)) so each hidden
    unit starts with unit variance, w_s = 1, w_b ~ U(+-1/sqrt(N)), W ~ N(0, 1 / (r N)) so that a row of
    weights times v starts at the magnitude of v, as a softmax row does.
    """

    def __init__(self, num_heads: int, num_tokens: int, rank: int = 12, grid_size: int = 3, base_act: str = 'zero',
                 kernel_impl: Optional[str] = None):
        super().__init__()
        if base_act not in BASE_ACTS:
            raise ValueError(f'base_act must be one of {BASE_ACTS}, got {base_act!r}')
        if min(num_heads, num_tokens, rank, grid_size) < 1:
            raise ValueError(f'num_heads, num_tokens, rank and grid_size must be >= 1, got '
                             f'{num_heads}, {num_tokens}, {rank}, {grid_size}')
        self.num_heads, self.num_tokens, self.rank, self.grid_size = num_heads, num_tokens, rank, grid_size
        self.base_act = base_act
        self.kernel_impl = kernel_impl
        self.coef = nn.Parameter(torch.empty(num_heads, rank, num_tokens, 2 * grid_size))
        self.base_weight = nn.Parameter(torch.empty(num_heads, rank, num_tokens))
        self.scale_weight = nn.Parameter(torch.empty(num_heads, rank, num_tokens))
        self.proj_weight = nn.Parameter(torch.empty(num_heads, num_tokens, rank))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        n, r, g = self.num_tokens, self.rank, self.grid_size
        nn.init.normal_(self.coef, std=(n * g) ** -0.5)
        nn.init.uniform_(self.base_weight, -n ** -0.5, n ** -0.5)
        nn.init.ones_(self.scale_weight)
        nn.init.normal_(self.proj_weight, std=(r * n) ** -0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                dropout_p: float = 0.) -> torch.Tensor:
        """q, k, v (B, heads, N, d) -> (B, heads, N, d)."""
        return fourier_kan_attention(q, k, v, self.coef, self.base_weight, self.scale_weight, self.proj_weight,
                                     scale, self.base_act, dropout_p, impl=self.kernel_impl)

    def extra_repr(self) -> str:
        return (f'heads={self.num_heads}, tokens={self.num_tokens}, rank={self.rank}, grid_size={self.grid_size}, '
                f'base_act={self.base_act}')


class KArAtAttention(nn.Module):
    """Multi-head self-attention whose row softmax is a Fourier-KArAt operator (timm ViT parameter names).

    Args:
        dim: channels. num_heads: heads. num_tokens: N (fixed by the operator).
        rank, grid_size, base_act: the operator (see `FourierKArAt`).
        shared: the operator is owned elsewhere (universal sharing) and passed to `forward`; this module then
            holds only qkv and proj.
        qkv_bias, attn_drop, proj_drop: as timm's Attention.
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int, rank: int = 12, grid_size: int = 3,
                 base_act: str = 'zero', shared: bool = False, qkv_bias: bool = True, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop_p = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.act = None if shared else FourierKArAt(num_heads, num_tokens, rank, grid_size, base_act)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, act: Optional[FourierKArAt] = None) -> torch.Tensor:
        """x (B, N, C); `act` is the shared operator (universal mode), None when this layer owns its own."""
        if (act is None) == (self.act is None):
            raise ValueError('KArAtAttention needs exactly one operator: its own (blockwise) or a shared one '
                             '(universal) passed to forward')
        act = self.act if act is None else act
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = act(q, k, v, self.scale, self.attn_drop_p if self.training else 0.)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
