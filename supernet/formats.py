"""Deploy formats of a (fused) network or layer: ONNX, CoreML and ExecuTorch (XNNPACK), the one place each
conversion is written.
The latency backends time what these produce, `nas.export` ships it, and LUT bundles carry it to a device."""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn as nn

from supernet.errors import UserError


class ExportError(UserError):
    """An exported model is missing, or disagrees with torch beyond the tolerance."""


def onnx_bytes(
    module: nn.Module, x: torch.Tensor, input_name: str = "x", output_name: str = "y", exporter: str = "torchscript"
) -> bytes:
    """`module` (eval) exported to ONNX in memory, opset 17. The TorchScript exporter is ~30x faster per block than
    dynamo, and its graph is what the onnxruntime backend times."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (x,),
            buf,
            input_names=[input_name],
            output_names=[output_name],
            dynamo=exporter == "dynamo",
            opset_version=17 if exporter != "dynamo" else None,
        )
    return buf.getvalue()


def to_coreml(module: nn.Module, x: torch.Tensor, input_name: str = "x", output_name: str | None = None):
    """`module` (eval) traced and converted by coremltools to an ML program (iOS 16+). Converts on any OS; the
    returned model predicts only on macOS."""
    import coremltools as ct

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module.eval(), x.contiguous())
        outputs = [ct.TensorType(name=output_name)] if output_name else None
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=input_name, shape=tuple(x.shape))],
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
        )


EXECUTORCH_MISSING = (
    "ExecuTorch is not installed: it is an optional extra, pip install -e '.[executorch]' (setup.sh installs it)"
)


def executorch_available() -> bool:
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        return False
    return True


def pte_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    """`module` (eval) as an ExecuTorch program (.pte) in memory: `torch.export`, then every subgraph XNNPACK
    supports delegated to it (`XnnpackPartitioner`, fp32), the rest on ExecuTorch's portable kernels. This is the
    PyTorch-native way onto an Android or iOS CPU."""
    if not executorch_available():
        raise ExportError(EXECUTORCH_MISSING)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), (x.contiguous(),))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return lowered.to_executorch().buffer
