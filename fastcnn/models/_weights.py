"""Loading state_dicts (from a file or a mapping) into fastcnn models."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

#: What the model builders accept as ``weights``: a path to a file written by ``torch.save`` (a
#: state_dict, or a checkpoint dict holding one under "state_dict" or "model"), or a state_dict itself.
Weights = str | os.PathLike | Mapping[str, Tensor]

__all__ = ["Weights", "load_weights", "read_state_dict"]


def read_state_dict(weights: Weights) -> dict[str, Tensor]:
    """The state_dict in ``weights`` (a path or a mapping), unwrapped from a checkpoint dict if needed
    and with a ``module.`` prefix (left by DataParallel/DistributedDataParallel) removed."""
    if isinstance(weights, (str, os.PathLike)):
        state = torch.load(os.fspath(weights), map_location="cpu", weights_only=True)
    elif isinstance(weights, Mapping):
        state = weights
    else:
        raise TypeError(f"weights must be a path or a state_dict mapping, got {type(weights).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, weights: Weights | None, *, strict: bool = True) -> nn.Module:
    """Loads ``weights`` into ``model`` (``load_state_dict``, strict by default) and returns the model.

    A classifier of another size gives an error that says how to adapt it: build the model with the
    checkpoint's ``num_classes`` and then call :func:`fastcnn.transfer.replace_head`.
    """
    if weights is None:
        return model
    state = read_state_dict(weights)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise RuntimeError(
                f"{exc}\nIf only the classifier differs, build the model with the checkpoint's "
                "num_classes and call fastcnn.transfer.replace_head(model, num_classes) afterwards."
            ) from exc
        raise
    return model
