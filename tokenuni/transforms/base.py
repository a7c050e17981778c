"""Post-hoc transforms of representation vectors, fit on one set of vectors and applied to any other.

Every transform follows the same scikit-learn style protocol, with streamed fitting::

    transform = make_transform("whitening", {"k": 256}, device="cpu")
    for chunk in fit_vectors:            # (n, d) torch tensors or numpy arrays
        transform.partial_fit(chunk)     # accumulates sufficient statistics (sums, Gram, a seeded sample)
    transform.finalize()                 # statistics -> the fitted map
    transform.fitted_on = "pool:stsb-test"
    y = transform.transform(x)           # torch in -> torch out, numpy in -> numpy out (float64)
    transform.save("whitening.npz")      # fitted arrays + JSON name/params/fitted_on, written atomically

``fit(x)`` is ``reset() + partial_fit(x) + finalize()``. What a transform is fit on is the caller's
choice: the papers fit on the evaluation pool itself (all sentences to be scored), and a separate
corpus works the same way, since fitting and transforming are separate calls; record the choice in
:attr:`Transform.fitted_on` (free text, e.g. ``"pool:stsb-test"`` or ``"corpus:wikitext"``), which is
saved and loaded with the transform.

Accumulation (:class:`tokenuni.numerics.MomentSums` for moments) and all maths are float64 torch on the
transform's ``device`` (CUDA or CPU: the same numbers to rounding). Results are float64 whatever the input
dtype; a torch result lives on the device the input came from.

Saved files are ``.npz`` archives (no pickles) holding the fitted arrays and one JSON string
(``__meta__``: format, name, params, fitted_on, n_fit, dim, and scalar state). Only the fitted map is
saved, not the streaming statistics: a loaded transform transforms, but cannot ``partial_fit`` more
data until :meth:`Transform.reset` (or ``fit``) starts a new fit.
"""
from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path

FORMAT = "tokenuni.transform"
FORMAT_VERSION = 1
_META_KEY = "__meta__"


class TransformError(TokenuniError, ValueError):
    """A transform used out of order, on the wrong shape, or a file that is not a saved transform."""


def integer_option(transform: str, option: str, value, minimum: int = 0, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None when allowed), else a :class:`TransformError` naming the option."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or int(value) != value or int(value) < minimum:
        expected = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise TransformError(f"transform {transform}: option {option} must be {expected}, got {value!r}")
    return int(value)


def float_option(transform: str, option: str, value, minimum: float | None = None, below: float | None = None) -> float:
    """``value`` as a finite float (>= ``minimum``, < ``below`` when given), else a :class:`TransformError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (minimum is not None and value < minimum) or (below is not None and value >= below):
        bounds = "".join([f" >= {minimum}" if minimum is not None else "", f" < {below}" if below is not None else ""])
        raise TransformError(f"transform {transform}: option {option} must be a finite number{bounds}, got {value!r}")
    return float(value)


class Transform(ABC):
    """Base class of the post-hoc transforms (see the module docstring for the protocol).

    Subclasses set :attr:`name`, pass their constructor options to ``super().__init__`` (they become
    :meth:`params`) and implement ``_reset_statistics``, ``_accumulate``, ``_finalize``, ``_apply``,
    ``_state`` / ``_load_state`` and ``summary``.
    """

    #: the transform's name in the config (``tokenuni/transforms/<name>.py``)
    name: str = ""
    #: names of the fitted arrays (attributes; keys of :meth:`_state` and of the saved file)
    _state_names: tuple[str, ...] = ()

    def __init__(self, device="cpu", **params):
        import torch

        self.device = torch.device(device)
        self._params = dict(params)
        #: free text naming the set the transform was fit on (``"pool:stsb-test"``, ``"corpus:wikitext"``)
        self.fitted_on: str = ""
        self.reset()

    # -- the protocol ---------------------------------------------------------------------------

    def reset(self) -> Transform:
        """Forget the statistics and the fitted map."""
        self.n_fit = 0  # vectors accumulated so far (after finalize: the vectors the map was fit on)
        self.dim: int | None = None  # input dimension d
        self._fitted = False
        self._has_statistics = True
        self._reset_statistics()
        return self

    def partial_fit(self, x) -> Transform:
        """Accumulate the statistics of the rows of ``x`` ((n, d) torch tensor or numpy array)."""
        if not self._has_statistics:
            raise TransformError(f"transform {self.name}: it was loaded from a file, which holds the fitted map "
                                 "but not the streaming statistics; call reset() or fit() to start a new fit")
        t = self._as_tensor(x, "partial_fit")
        if self.dim is None:
            self.dim = int(t.shape[1])
        elif t.shape[1] != self.dim:
            raise TransformError(f"transform {self.name}: partial_fit got vectors of dimension {t.shape[1]}, "
                                 f"earlier batches had {self.dim}")
        self._fitted = False  # the map must be recomputed from the grown statistics
        if t.shape[0]:
            self._accumulate(t)
            self.n_fit += int(t.shape[0])
        return self

    def finalize(self) -> Transform:
        """Turn the accumulated statistics into the fitted map."""
        if not self._has_statistics:
            raise TransformError(f"transform {self.name}: loaded transforms are already final; call fit() to refit")
        if self.n_fit == 0:
            raise TransformError(f"transform {self.name}: finalize() without data; call partial_fit() with at least one vector first")
        self._finalize()
        self._fitted = True
        return self

    def fit(self, x) -> Transform:
        return self.reset().partial_fit(x).finalize()

    def transform(self, x):
        """The fitted map applied to the rows of ``x``; same container type as ``x`` (float64)."""
        import torch

        if not self._fitted:
            hint = "call finalize() after partial_fit()" if self.n_fit else "call fit() or partial_fit() + finalize() first"
            raise TransformError(f"transform {self.name} is not fitted: {hint}")
        t = self._as_tensor(x, "transform")
        if t.shape[1] != self.dim:
            raise TransformError(f"transform {self.name} was fit on vectors of dimension {self.dim}, "
                                 f"got vectors of dimension {t.shape[1]}")
        out = self._apply(t)
        if isinstance(x, torch.Tensor):
            return out.to(x.device)
        return out.cpu().numpy()

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    @property
    def fitted(self) -> bool:
        return self._fitted

    def params(self) -> dict:
        """The constructor options (JSON-serialisable), e.g. for MLflow params."""
        return dict(self._params)

    @abstractmethod
    def summary(self) -> dict:
        """A few numbers describing the fitted map (for MLflow metrics)."""

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write the fitted map to ``path`` (an ``.npz`` archive, no pickles), atomically."""
        if not self._fitted:
            raise TransformError(f"transform {self.name}: cannot save {path}: not fitted")
        arrays = {key: value.detach().cpu().numpy() for key, value in self._state().items()}
        if _META_KEY in arrays:
            raise TransformError(f"transform {self.name}: state key {_META_KEY!r} is reserved")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "params": self.params(),
                "fitted_on": self.fitted_on, "n_fit": self.n_fit, "dim": self.dim, "extra": self._extra_meta()}
        arrays[_META_KEY] = np.array(json.dumps(meta))
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path, device="cpu") -> Transform:
        """Read a transform written by :meth:`save`. On the base class, returns the class named in the file."""
        from tokenuni.transforms import TRANSFORMS

        path = Path(path)
        if not path.exists():
            raise TransformError(f"transform file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise TransformError(f"{path} is not a saved transform (.npz): {error}") from None
        if _META_KEY not in arrays:
            raise TransformError(f"{path} is not a saved transform: no {_META_KEY!r} entry")
        meta = json.loads(str(arrays.pop(_META_KEY)))
        if meta.get("format") != FORMAT:
            raise TransformError(f"{path} is not a saved transform (format {meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise TransformError(f"{path}: transform file version {meta.get('version')} is not supported "
                                 f"(this tokenuni reads version {FORMAT_VERSION})")
        name = meta["name"]
        if name not in TRANSFORMS:
            raise TransformError(f"{path} holds an unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
        target = TRANSFORMS[name]
        if cls is not Transform and cls is not target:
            raise TransformError(f"{path} holds a {name!r} transform, not {cls.name!r}")
        transform = target(device=device, **meta["params"])
        import torch

        state = {key: torch.from_numpy(value).to(transform.device) for key, value in arrays.items()}
        missing = [key for key in transform._state_keys() if key not in state]
        if missing:
            raise TransformError(f"{path}: {name} transform file lacks the arrays {', '.join(missing)}")
        transform._load_state(state, meta.get("extra", {}))
        transform.n_fit, transform.dim = int(meta["n_fit"]), int(meta["dim"])
        transform.fitted_on = meta.get("fitted_on", "")
        transform._fitted, transform._has_statistics = True, False
        return transform

    # -- helpers --------------------------------------------------------------------------------

    def _as_tensor(self, x, where: str):
        import torch

        if isinstance(x, torch.Tensor):
            t = x.detach().to(device=self.device, dtype=torch.float64)
        else:
            try:
                array = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise TransformError(f"transform {self.name}: {where} needs an (n, d) array of numbers: {error}") from None
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if t.ndim != 2:
            raise TransformError(f"transform {self.name}: {where} needs an (n, d) matrix of row vectors, got shape {tuple(t.shape)}")
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise TransformError(f"transform {self.name}: {where} got NaN or Inf values")
        return t

    def _state_keys(self) -> tuple[str, ...]:
        return tuple(self._state_names)

    def _extra_meta(self) -> dict:
        """Scalar fitted state saved in the JSON part (JSON-serialisable)."""
        return {}

    def _state(self) -> dict:
        return {key: getattr(self, key) for key in self._state_names}

    def _load_state(self, state: dict, extra: dict) -> None:
        for key in self._state_names:
            setattr(self, key, state[key])

    @abstractmethod
    def _reset_statistics(self) -> None: ...

    @abstractmethod
    def _accumulate(self, x) -> None: ...

    @abstractmethod
    def _finalize(self) -> None: ...

    @abstractmethod
    def _apply(self, x): ...

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        state = f"fitted on {self.n_fit} vectors of dimension {self.dim}" if self._fitted else "not fitted"
        return f"<{type(self).__name__} {self.name}({options}): {state}>"
