"""Static sub-networks written to files: ``torch.export`` programs and ONNX (one depth per file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..adaptive import AdaptiveNet, Pattern
from ..errors import AdnifyError
from ..io.files import check_writable

__all__ = ["export_file"]


def export_file(net: AdaptiveNet, pattern: Pattern, path: str | os.PathLike, *, format: str = "pt",
                input_size: Sequence[int] | None = None, batch_size: int = 1, force: bool = False) -> Path:
    """Write sub-network ``pattern`` of ``net`` to ``path`` as ``pt`` (torch.export) or ``onnx``."""
    path = check_writable(path, force=force)
    try:
        static = net.export(pattern).eval()
    except ValueError as e:
        raise AdnifyError(str(e)) from None
    example = torch.randn(batch_size, *net.input_size(input_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix or ".pt2", dir=path.parent)
    os.close(fd)
    try:
        if format == "pt":
            program = torch.export.export(static, (example,))
            torch.export.save(program, tmp)
        elif format == "onnx":
            _export_onnx(static, example, tmp)
        else:
            raise AdnifyError(f"unknown export format {format!r}: use pt or onnx")
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise AdnifyError('ONNX export needs the onnx extra: pip install "adnify[onnx]"') from None
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(path)
