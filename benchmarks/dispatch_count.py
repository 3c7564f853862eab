"""Count the operator dispatches of one call: the device-independent proxy for GPU kernel launches.

On a GPU, small-tensor work is bound by kernel launches, not arithmetic, so "how many kernels does one forward
launch" is the number to drive down. torch.profiler gives it directly on CUDA (the ``cudaLaunchKernel``,
``cuLaunchKernel`` and ``cudaLaunchKernelExC`` runtime events). Without a GPU the same code path can be counted
on the CPU as aten operator calls, where only *compute* calls are counted:

* only the innermost calls that do work: an aten call that makes further counted calls is counted through
  them (``aten::linear`` is its ``aten::addmm``, ``aten::contiguous`` that copies is its ``aten::copy_``), so
  nothing counts twice, while a call whose only inner calls are allocations (``aten::upsample_bilinear2d``
  making its ``aten::empty`` output) counts itself;
* and not the calls that launch no kernel on a GPU: views and other metadata-only calls, allocations, and
  conversions that turned out to be no-ops (``aten::to`` / ``aten::contiguous`` without a child call). The
  names are in :data:`NON_COMPUTE_OPS`.

    from dispatch_count import count_dispatches      # with benchmarks/ on sys.path
    counts = count_dispatches(lambda: model(pixel_values), torch.device("cpu"))
    counts.aten_compute, counts.aten_total, counts.kernel_launches, counts.top(10)

One calibrated MEMatte forward at 4096 px, counted on the CPU (one cold forward and one profiled, no timed ones;
`--forward-arg NAME=VALUE` passes a forward argument, such as the execution plan to count):

    python benchmarks/inference_benchmark.py --device cpu --sizes 4096 --cases mematte-fp32 --large-repeats 0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: CUDA runtime / driver events that launch one kernel each.
KERNEL_LAUNCH_EVENTS = frozenset({"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"})

#: aten calls that never launch a kernel: views, metadata, allocations (a leaf ``to`` or ``contiguous`` is a
#: no-op; when they copy, their child ``copy_`` is what gets counted).
NON_COMPUTE_OPS = frozenset(
    "aten::" + name
    for name in (
        # views
        "view as_strided alias reshape _reshape_alias _unsafe_view view_as permute transpose t expand expand_as "
        "slice select unsqueeze squeeze split split_with_sizes unbind chunk narrow unflatten flatten movedim "
        "diagonal detach lift_fresh real imag view_as_real view_as_complex unfold numpy_T"
        # metadata and no-op conversions
        " size stride sym_size sym_stride numel dim is_contiguous contiguous to _to_copy_noop type_as item"
        " is_nonzero result_type resolve_conj resolve_neg _has_compatible_shallow_copy_type set_ retain_grad"
        # allocations (uninitialised memory: no kernel)
        " empty empty_like new_empty new_empty_strided empty_strided resize_ _empty_affine_quantized"
    ).split()
)


@dataclass
class DispatchCount:
    """What one profiled call dispatched."""

    aten_compute: int  # leaf aten calls that do work (see NON_COMPUTE_OPS)
    aten_total: int  # every aten call, nested ones and views included
    kernel_launches: int | None  # CUDA kernel launches; None when nothing ran on CUDA
    compute_by_name: Counter = field(default_factory=Counter)

    def top(self, count: int = 10) -> list[tuple[str, int]]:
        return self.compute_by_name.most_common(count)

    def as_dict(self) -> dict:
        return {
            "aten_compute": self.aten_compute,
            "aten_total": self.aten_total,
            "kernel_launches": self.kernel_launches,
            "top_compute_ops": dict(self.top(12)),
        }


def count_dispatches(function: Callable[[], object], device: torch.device | str) -> DispatchCount:
    """Run ``function()`` once under torch.profiler and count its dispatches (synchronising CUDA around it)."""
    device = torch.device(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return summarise(profiler.events(), cuda=device.type == "cuda")


def summarise(events, cuda: bool) -> DispatchCount:
    """Count a profiler's event list (``profiler.events()``)."""
    compute: Counter = Counter()
    total = launches = 0
    does_compute: dict[int, bool] = {}  # event id -> whether it or a call below it is counted
    for event in events:
        name = event.name
        if name in KERNEL_LAUNCH_EVENTS:
            launches += 1
        elif name.startswith("aten::"):
            total += 1
            if _counted(event, does_compute):
                compute[name] += 1
    return DispatchCount(
        aten_compute=sum(compute.values()),
        aten_total=total,
        kernel_launches=launches if cuda else None,
        compute_by_name=compute,
    )


def _counted(event, does_compute: dict[int, bool]) -> bool:
    """Whether ``event`` itself is counted: a compute aten call with no counted call below it."""
    below = any(_has_compute(child, does_compute) for child in event.cpu_children)
    return not below and event.name.startswith("aten::") and event.name not in NON_COMPUTE_OPS


def _has_compute(event, does_compute: dict[int, bool]) -> bool:
    """Whether ``event`` or any call below it is counted (memoised: the tree is walked once)."""
    key = id(event)
    if key not in does_compute:
        does_compute[key] = _counted(event, does_compute) or any(
            _has_compute(child, does_compute) for child in event.cpu_children
        )
    return does_compute[key]
