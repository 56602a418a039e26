"""Orthonormal Hadamard matrices and the fast Walsh-Hadamard transform (reference, plain PyTorch).

Supported orders: n = m * 2^k with m in {1, 12, 20, 28} (k >= 0); 40 * 2^k is 20 * 2^(k+1), so it is
covered too. These are the sizes Quamba2 rotates with (Mamba d_inner and d_model are such multiples).

Construction (all built here, nothing tabulated):
- 2^k: Sylvester, H_{2p} = [[H_p, H_p], [H_p, -H_p]] (symmetric).
- 12 and 20: Paley I with q = 11 and q = 19 (primes = 3 mod 4).
- 28: Paley II with q = 13 (prime = 1 mod 4).
- m * 2^k: the Kronecker product H_m (x) H_{2^k}, i.e. the last dim viewed as [m, 2^k] (m the slow index).

The normalised matrix is H / sqrt(n), so H @ H.T = I. Base matrices of order 12/20/28 are not symmetric,
so "the transform" (x @ H.T) and its inverse (x @ H) differ; both are offered.
"""
from __future__ import annotations

import functools
import math

import torch

from quamba.errors import QuambaError

# Base orders that are not powers of two, with the prime q and the Paley construction that builds them.
_PALEY_BASES = {12: (11, "I"), 20: (19, "I"), 28: (13, "II")}
_BASE_ORDERS = (1, 12, 20, 28)
_SUPPORTED_TEXT = "2^k, 12*2^k, 20*2^k, 28*2^k or 40*2^k (k >= 0)"


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _split_order(n: int) -> tuple[int, int] | None:
    """n = m * p with m a base order (1, 12, 20, 28) and p a power of two, or None if impossible."""
    if not isinstance(n, int) or n < 1:
        return None
    for m in _BASE_ORDERS:
        if n % m == 0 and _is_power_of_two(n // m):
            return m, n // m
    return None


def is_hadamard_size(n: int) -> bool:
    """True for n = 2^k or 12, 20, 28, 40 times 2^k (k >= 0)."""
    return _split_order(n) is not None


def _quadratic_character(q: int) -> list[int]:
    """chi[a] for a in 0..q-1 (q an odd prime): 0 at 0, +1 for nonzero squares, -1 otherwise."""
    squares = {(a * a) % q for a in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) mod q: [q, q] int64. Antisymmetric if q = 3 mod 4, symmetric if q = 1 mod 4."""
    chi = torch.tensor(_quadratic_character(q), dtype=torch.int64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _bordered(q_mat: torch.Tensor, first_column_sign: int) -> torch.Tensor:
    """[[0, 1^T], [sign * 1, Q]]: [q+1, q+1] int64 (a skew or symmetric conference matrix)."""
    q = q_mat.shape[0]
    c = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    c[0, 1:] = 1
    c[1:, 0] = first_column_sign
    c[1:, 1:] = q_mat
    return c


def _paley_one(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q = 3 mod 4: H = I + S with S the skew conference matrix (S S^T = q I)."""
    s = _bordered(_jacobsthal(q), first_column_sign=-1)
    return torch.eye(q + 1, dtype=torch.int64) + s


def _paley_two(q: int) -> torch.Tensor:
    """Order 2 (q + 1) for a prime q = 1 mod 4, from the symmetric conference matrix C (C C^T = q I):
    H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]."""
    c = _bordered(_jacobsthal(q), first_column_sign=1)
    a = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    b = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.int64), b)


def _sylvester(p: int) -> torch.Tensor:
    """Order p = 2^k: [p, p] int64 of +-1, symmetric."""
    h = torch.ones(1, 1, dtype=torch.int64)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=None)
def _base_matrix(m: int) -> torch.Tensor:
    """The unnormalised +-1 base matrix of order m in {1, 12, 20, 28}: [m, m] int64 (cached; do not mutate)."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.int64)
    q, kind = _PALEY_BASES[m]
    return _paley_one(q) if kind == "I" else _paley_two(q)


@functools.lru_cache(maxsize=None)
def _base_matrix_on(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The base matrix already converted and on ``device``: no host-to-device copy per call (CUDA graphs)."""
    return _base_matrix(m).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _unnormalised_matrix(n: int) -> torch.Tensor:
    """H_m (x) H_{2^k}: [n, n] int8 of +-1 (cached; callers get converted copies)."""
    split = _split_order(n)
    if split is None:
        raise QuambaError(f"no Hadamard matrix of order {n!r}: supported orders are {_SUPPORTED_TEXT}")
    m, p = split
    return torch.kron(_base_matrix(m), _sylvester(p)).to(torch.int8)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The orthonormal Hadamard matrix of order n: [n, n] in ``dtype`` with entries +-1/sqrt(n), H @ H.T = I.

    Deterministic (same matrix every call, cached as +-1 int8). Raises QuambaError for unsupported n.
    """
    h = _unnormalised_matrix(n).to(torch.float64) / math.sqrt(n)
    return h.to(dtype=dtype, device=device)


def _walsh_hadamard_last_dim(y: torch.Tensor) -> torch.Tensor:
    """Unnormalised Sylvester transform over the last dim p = 2^k by log2(p) butterfly stages.

    Each stage applies [[1, 1], [1, -1]] along one bit of the index; the product of all stages is the
    Sylvester matrix (symmetric, so no transpose question arises).
    """
    p = y.shape[-1]
    lead = y.shape[:-1]
    h = 1
    while h < p:
        y = y.reshape(*lead, p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(*lead, p)


def hadamard_transform_ref(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """y = x @ H_n.T over the last dim (n = x.shape[-1]); with ``transpose``, y = x @ H_n (the inverse).

    x: [..., n] floating, n a supported order. Computed in fp32 (fp64 inputs stay fp64) without forming
    the n x n matrix: the last dim is viewed as [m, 2^k]; a butterfly handles the 2^k factor and an
    m x m matmul the 12/20/28 factor. Returns y in x's dtype, same shape.
    """
    if not x.is_floating_point():
        raise QuambaError(f"hadamard_transform_ref needs a floating tensor, got {x.dtype}; cast it first")
    n = x.shape[-1]
    split = _split_order(n)
    if split is None:
        raise QuambaError(f"no Hadamard matrix of order {n}: supported orders are {_SUPPORTED_TEXT}")
    m, p = split
    compute = torch.promote_types(x.dtype, torch.float32)
    y = x.to(compute).reshape(x.numel() // n, m, p)
    y = _walsh_hadamard_last_dim(y)
    if m > 1:
        hm = _base_matrix_on(m, compute, x.device)
        hm = hm.T if transpose else hm
        y = torch.einsum("ij,bjp->bip", hm, y)  # y[:, i, :] = sum_j H_m[i, j] y[:, j, :]
    y = y * (1.0 / math.sqrt(n))
    return y.reshape(x.shape).to(x.dtype)
