"""PyTorch -> ONNX (in memory) -> the converter IR.

The module is traced with the TorchScript-based ONNX exporter in eval mode. BatchNormalization
is kept as its own node (``TrainingMode.PRESERVE`` on an eval-mode module) so that the ``bn``
importance criterion sees every gamma; the converter folds it into the conv afterwards.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .ir import ConversionError

if TYPE_CHECKING:
    import onnx
    import torch

OPSET = 17


def torch_to_onnx(module: torch.nn.Module, example_input: torch.Tensor | np.ndarray) -> onnx.ModelProto:
    """Export ``module`` (temporarily in eval mode) to an ONNX ModelProto with BatchNormalization kept."""
    import onnx
    import torch

    x = torch.as_tensor(np.asarray(example_input, dtype=np.float32)) if isinstance(example_input, np.ndarray) \
        else example_input.detach().float()
    if x.dim() != 4:
        raise ConversionError(f"example_input has shape {tuple(x.shape)}; pass one NCHW batch, e.g. (1, 3, 224, 224)")
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=OPSET,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                              input_names=["input"], output_names=["output"])
    except Exception as exc:  # the exporter raises many unrelated types; keep its message
        raise ConversionError(f"torch.onnx.export failed on {type(module).__name__}: {exc}") from exc
    finally:
        module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())
