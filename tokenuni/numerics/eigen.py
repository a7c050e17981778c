"""Eigenpairs of a symmetric matrix in descending order with one sign convention: :func:`descending_eigh`,
:func:`canonical_signs`."""
from __future__ import annotations


def descending_eigh(matrix):
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix, with a canonical sign.

    ``torch.linalg.eigh`` of the symmetrised matrix, reordered; each eigenvector is signed by
    :func:`canonical_signs`, so repeated decompositions of nearly equal matrices give nearly equal bases.
    """
    import torch

    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    values, vectors = values.flip(0), vectors.flip(1)
    return values, canonical_signs(vectors)


def canonical_signs(vectors):
    """Columns multiplied by ±1 so that each column's entry of largest magnitude is positive (the first on ties)."""
    import torch

    if vectors.numel() == 0:
        return vectors
    pivot = torch.argmax(vectors.abs(), dim=0)
    signs = torch.sign(vectors.gather(0, pivot[None, :])[0])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors * signs[None, :]
