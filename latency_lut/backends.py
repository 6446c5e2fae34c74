"""Measurement backends. Each turns a deploy-mode module and an example input into a `runner()` that executes
it once, and times runners. Backends: torch (CPU eager), onnxruntime (CPU), executorch (XNNPACK), cuda (captured
CUDA graphs, CUDA events), coreml.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn as nn

from latency_lut.bundle_measure import device_name, et_method, et_version, ort_session, time_runs
from supernet.errors import UserError
from supernet.formats import EXECUTORCH_MISSING, executorch_available, onnx_bytes, pte_bytes, to_coreml

BACKENDS = ("torch", "onnxruntime", "executorch", "cuda", "coreml")
CPU_BACKENDS = ("torch", "onnxruntime", "executorch")  # those that run on this machine's cores
Runner = Callable[[], object]


class BackendError(UserError):
    """A backend is unavailable here or cannot run a block."""


class Backend:
    name = "torch"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self) -> None:
        if self.threads > 0:
            torch.set_num_threads(self.threads)

    @property
    def device(self) -> str:
        return device_name()  # the same name a device bundle's standalone measure.py records

    @property
    def versions(self) -> str:
        return f"torch={torch.__version__}"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Runner:
        module = module.eval()

        def run():
            with torch.inference_mode():
                return module(x)

        return run

    def time(self, runner: Runner, n: int) -> list[float]:
        """n back-to-back calls, each timed on its own, in ms."""
        return time_runs(runner, n)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, threads: int = 1, exporter: str = "torchscript"):
        super().__init__(threads)
        self.exporter = exporter

    @property
    def versions(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime={ort.__version__};torch={torch.__version__}"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Runner:
        sess = ort_session(onnx_bytes(module, x, exporter=self.exporter), self.threads)
        feed = {"x": x.contiguous().numpy()}
        return lambda: sess.run(None, feed)


class ExecuTorchBackend(Backend):
    """ExecuTorch with the XNNPACK delegate (fp32): each module lowered to a .pte in memory and run by ExecuTorch's
    Python runtime, the C++ runtime and kernels a phone runs (`supernet.formats.pte_bytes`)."""

    name = "executorch"

    def setup(self) -> None:
        if not executorch_available():
            raise BackendError(f"backend=executorch: {EXECUTORCH_MISSING}")
        super().setup()

    @property
    def versions(self) -> str:
        return f"{et_version()};torch={torch.__version__}"

    def __init__(self, threads: int = 1):
        super().__init__(threads)
        self._programs: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Runner:
        # Lowering takes seconds per model; the same architecture at the same input shape (a calibration network's
        # visits, a validation's reference networks) is lowered once. Its timing does not depend on the weights.
        key = (repr(module), tuple(x.shape))
        if key not in self._programs:
            self._programs[key] = pte_bytes(module, x)
        method = et_method(self._programs[key], self.threads)
        inputs = [x.contiguous()]
        return lambda: method.execute(inputs)


class CudaBackend(Backend):
    """A CUDA GPU, each module run as a captured CUDA graph (one launch replays every kernel, as a latency-critical
    GPU deployment runs it; eager launches of blocks this small measure the CPU's launch overhead, not the GPU),
    timed with CUDA events around each replay."""

    name = "cuda"

    def setup(self) -> None:
        if not torch.cuda.is_available():
            raise BackendError("backend=cuda: no CUDA device is available on this machine")

    @property
    def device(self) -> str:
        return torch.cuda.get_device_name()

    @property
    def versions(self) -> str:
        return f"torch={torch.__version__};cuda={torch.version.cuda};cuda_graphs"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Runner:
        return cuda_graph(module.cuda().eval(), x.cuda())

    def time(self, runner: Runner, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            runner()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        return out


def cuda_graph(module: nn.Module, x: torch.Tensor, warmup: int = 3) -> Runner:
    """`module(x)` captured as a CUDA graph; the runner replays it (same input buffer, same output buffer). Warmed
    up on a side stream first, as torch's CUDA-graph recipe requires (lazy initialisation, cuDNN autotuning)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            module(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = module(static_x)

    def run():
        graph.replay()
        return static_out

    return run


class CoreMLBackend(Backend):
    """Converts each block with coremltools (mlprogram). `MLModel.predict` exists only on macOS, so on other
    systems only `convert_only` works: a CoreML compatibility check of every block."""

    name = "coreml"

    def __init__(self, threads: int = 1, convert_only: bool = False):
        super().__init__(threads)
        self.convert_only = convert_only

    def setup(self) -> None:
        if sys.platform != "darwin" and not self.convert_only:
            raise BackendError(
                "backend=coreml: timing needs macOS (coremltools can convert on Linux but MLModel.predict runs only "
                "on macOS); measure on a Mac, or run with convert_only=true for a CoreML compatibility check"
            )

    @property
    def device(self) -> str:
        return device_name()

    @property
    def versions(self) -> str:
        import coremltools as ct

        return f"coremltools={ct.__version__};torch={torch.__version__}"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Runner:
        mlmodel = to_coreml(module, x)
        feed = {"x": x.contiguous().numpy()}
        return lambda: mlmodel.predict(feed)


def make_backend(name: str, threads: int = 1, convert_only: bool = False) -> Backend:
    if name == "torch":
        return Backend(threads)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(threads)
    if name == "executorch":
        return ExecuTorchBackend(threads)
    if name == "cuda":
        return CudaBackend(threads)
    if name == "coreml":
        return CoreMLBackend(threads, convert_only)
    raise BackendError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}")
