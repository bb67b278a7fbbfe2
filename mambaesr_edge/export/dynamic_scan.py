"""A shape-generic form of the chunked scan's linear recurrence, used only when exporting with dynamic H/W.

Why: `scan.linear_recurrence` decides its recursion depth and the number of chunks at the top level in Python from
L, so a traced graph is only right for the L it was traced with (a dynamic-axes export of it fails or broadcasts
wrongly at any other size). Here the structure is fixed by a *capacity* instead of by L:

    levels    = number of chunking levels, fixed at trace time
    capacity  = CHUNK ** (levels + 1) tokens, the largest L the graph supports

Each level pads L up to a multiple of CHUNK with identity steps (a = 1, b = 0, which change no earlier output), scans
all chunks at once, and recurses on the chunk end states; the last level pads to exactly CHUNK and scans once.
Every pad amount and reshape is computed from the input's shape, so the traced graph is right for any
1 <= L <= capacity. Above the capacity the last level's reshape to (..., CHUNK, N) fails loudly at run time
(an element-count mismatch), never silently. The arithmetic is the same as `scan.linear_recurrence` (exp only of
non-positive numbers, products of decays in (0, 1]); tests compare the two.

`capacity_recurrence(max_tokens)` swaps this function in for the duration of an export (a context manager);
nothing else uses it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .. import scan as scan_module
from ..scan import CHUNK


def levels_for(max_tokens: int, chunk: int = CHUNK) -> int:
    """Fewest chunking levels whose capacity chunk ** (levels + 1) holds max_tokens."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    levels = 0
    while chunk ** (levels + 1) < max_tokens:
        levels += 1
    return levels


def capacity_of(levels: int, chunk: int = CHUNK) -> int:
    return chunk ** (levels + 1)


def linear_recurrence_fixed_depth(a: torch.Tensor, b: torch.Tensor, levels: int, chunk: int = CHUNK) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim -2, shapes (..., L, N), for any L <= chunk ** (levels + 1)."""
    length = a.shape[-2]
    lead = a.shape[:-2]
    n_state = a.shape[-1]
    pad = (-length) % chunk
    a = F.pad(a, (0, 0, 0, pad), value=1.0)  # (..., Lp, N)
    b = F.pad(b, (0, 0, 0, pad))  # (..., Lp, N)
    if levels == 0:  # the last level: exactly one chunk (fails loudly if L > chunk)
        a = a.reshape(*lead, chunk, n_state)  # (..., T, N)
        b = b.reshape(*lead, chunk, n_state)
        h = _scan_steps(a, b)[1]  # (..., T, N)
        return h[..., :length, :]  # (..., L, N)
    a = a.reshape(*lead, -1, chunk, n_state)  # (..., nc, T, N)
    b = b.reshape(*lead, -1, chunk, n_state)  # (..., nc, T, N)
    a_cum, h_local = _scan_steps(a, b)  # (..., nc, T, N) each
    h_end = linear_recurrence_fixed_depth(a_cum[..., -1, :], h_local[..., -1, :], levels - 1, chunk)  # (..., nc, N)
    h_in = F.pad(h_end[..., :-1, :], (0, 0, 1, 0))  # (..., nc, N) state entering each chunk
    h = h_local + a_cum * h_in.unsqueeze(-2)  # (..., nc, T, N)
    return h.reshape(*lead, -1, n_state)[..., :length, :]  # (..., L, N)


def _scan_steps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential scan over dim -2 (a constant number of steps). Returns (cumulative decay, state), both (..., T, N)."""
    a_cum, h = [a[..., 0, :]], [b[..., 0, :]]
    for t in range(1, a.shape[-2]):
        h.append(a[..., t, :] * h[-1] + b[..., t, :])
        a_cum.append(a[..., t, :] * a_cum[-1])
    return torch.stack(a_cum, dim=-2), torch.stack(h, dim=-2)


@contextlib.contextmanager
def capacity_recurrence(max_tokens: int) -> Iterator[int]:
    """Within the block, the chunked scan uses the fixed-depth recurrence sized for max_tokens; yields the capacity."""
    levels = levels_for(max_tokens)
    original = scan_module.linear_recurrence

    def patched(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
        return linear_recurrence_fixed_depth(a, b, levels, chunk)

    scan_module.linear_recurrence = functools.wraps(original)(patched)
    try:
        yield capacity_of(levels)
    finally:
        scan_module.linear_recurrence = original
