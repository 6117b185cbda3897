"""Protected keys: the directions an update may use so that chosen keys keep their values exactly.

An update dW = Lambda D changes the value of key k by Lambda (D k). If every row of D is orthogonal
to a set of keys K_keep ``[m, d]``, those keys' values are unchanged, whatever Lambda is (for a layer
that is linear in its weight; a StyleGAN2 demodulation also depends on the whole weight, so there it
holds up to the change of the demodulation factor). :func:`free_basis` gives an orthonormal basis N
of that orthogonal complement, and ``context_directions(..., within=N)`` picks the rule's directions
inside it (AlphaEdit's null-space projection, exact rather than thresholded on a covariance).

Which keys to keep: :func:`keys_feeding` lists the keys of a key map whose values reach a region of
the value map (a conv's keys near a fit box reach into it through the kernel).
"""

from __future__ import annotations

import torch
from torch import Tensor

from olam_edit.errors import RequestError, ShapeMismatchError, explain
from olam_edit.memory.handles import LayerHandle

NULL_RTOL = 1e-10  # singular values of K_keep below this fraction of the largest count as zero


def free_basis(K_keep: Tensor, dim: int) -> Tensor | None:
    """N ``[dim, q]``: orthonormal columns spanning the complement of span(K_keep ``[m, dim]``), float64.

    None when there is nothing to keep (m = 0 or all keys zero). RequestError when the kept keys span
    the whole key space (q = 0): no update could leave them all unchanged.
    """
    if K_keep.ndim != 2 or K_keep.shape[1] != dim:
        raise ShapeMismatchError(explain("protected keys must be a [m, d] matrix of this layer's keys",
                                         got=tuple(K_keep.shape), expected=f"[m, {dim}]"))
    K = K_keep.to(torch.float64)
    if K.shape[0] == 0 or float(K.abs().max()) == 0.0:
        return None
    K = row_space(K)  # [min(m, dim), dim]: the same singular values and right singular vectors
    _, S, Vh = torch.linalg.svd(K, full_matrices=True)  # Vh [dim, dim], U at most [dim, dim]
    spanned = int((S > NULL_RTOL * S[0]).sum())
    if spanned >= dim:
        raise RequestError(explain("the protected keys span every direction of this layer's keys",
                                   got=f"{K.shape[0]} keys spanning {spanned} of {dim} directions",
                                   expected=f"fewer than {dim} directions",
                                   fix="Protect fewer seeds or edits, or edit a layer with more channels."))
    return Vh[spanned:].T.contiguous()  # [dim, q]


def row_space(K: Tensor) -> Tensor:
    """A matrix of at most ``dim`` rows with the row space and singular values of K ``[m, dim]``
    (the R of its QR when m > dim), so that no ``[m, m]`` matrix is ever formed."""
    return torch.linalg.qr(K, mode="r").R if K.shape[0] > K.shape[1] else K  # [dim, dim] or K


def keys_feeding(handle: LayerHandle, x: Tensor, mask: Tensor) -> Tensor:
    """The keys ``[m, in]`` of key map ``x`` whose values reach the region ``mask`` of the value map.

    ``x`` is ``[B, in, h, w]`` (or ``[n, in]`` for a linear layer), ``mask`` has the value map's shape
    without its channel axis. A key reaches the region when the derivative of the masked values with
    respect to it is non-zero under a strictly positive weight (so no cancellation can hide it).
    """
    x = x.detach().to(torch.float64).clone().requires_grad_(True)
    w = handle.effective_weight().detach().to(torch.float64).abs() + 1.0  # strictly positive
    with torch.enable_grad():
        v = handle.linear_op(x, w)  # value map
        m = mask.to(v)
        weighted = (v * (m[:, None] if v.ndim == 4 else m[..., None])).sum()
        (grad,) = torch.autograd.grad(weighted, x)
    if x.ndim == 2:
        return x.detach()[grad.abs().sum(1) > 0]  # [m, in]
    reach = grad.abs().sum(1) > 0  # [B, h, w]
    return x.detach().movedim(1, -1)[reach]  # [m, in]
