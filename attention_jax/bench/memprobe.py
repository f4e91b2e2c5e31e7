"""Peak memory of one benchmark step, in a process of its own (``--memory``).

``python -m attention_jax.bench.memprobe '{"name": "se", "shape": [28, 28, 64], "batch": 8,
"dtype": "float32", "framework": "jax", "mode": "fwdbwd", "seed": 0}'`` builds the case,
compiles and runs the step once to warm up, then once more, and prints one JSON line:
``peak_rss_bytes`` (the process's high-water resident set: interpreter, libraries, inputs,
parameters, compiled code and the step's buffers, i.e. what ``/usr/bin/time -v`` reports),
``rss_before_step_bytes`` (the high-water mark before the first step ran) and, on GPU/TPU,
``device_peak_bytes`` (the device allocator's peak, which in a fresh process is this step's).
A fresh process per measurement is what makes the peaks belong to one step.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

__all__ = ["main", "max_rss_bytes"]


def max_rss_bytes() -> int:
    """The process's peak resident set size in bytes (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def main(argv: list[str] | None = None) -> int:
    """Run the probe described by the JSON in ``argv[0]``; print the result as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    req: dict[str, Any] = json.loads(argv[0])

    import jax

    from attention_jax.bench.runner import jax_steps, place
    from attention_jax.bench.specs import build_specs, make_case
    from attention_jax.bench.torch_side import load_torch_side
    from attention_jax.compiler import cpu_compiler_options

    specs, _ = build_specs([req["name"]])
    torch_side = None
    if req["framework"] == "torch":
        torch_side, note = load_torch_side("auto", jax.default_backend())
        if torch_side is None:
            print(json.dumps({"error": note}))
            return 1
    case = make_case(specs[0], tuple(req["shape"]), req["batch"], req["dtype"],
                     seed=req.get("seed", 0), torch_side=torch_side)
    out: dict[str, Any] = {}
    if req["framework"] == "jax":
        device = jax.devices()[0]
        args = place(case, [device])[req["mode"]]
        options = cpu_compiler_options(req.get("cpu_convolutions", "ynnpack"))
        compiled = jax.jit(jax_steps(case)[req["mode"]], compiler_options=options).lower(
            *args).compile()
        out["rss_before_step_bytes"] = max_rss_bytes()
        for _ in range(2):
            jax.block_until_ready(compiled(*args))
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    else:
        if case.torch_fwd is None:
            print(json.dumps({"error": case.torch_note}))
            return 1
        step = torch_side.forward_step if req["mode"] == "fwd" else torch_side.fwdbwd_step
        torch_side.memory_reset()
        out["rss_before_step_bytes"] = max_rss_bytes()
        for _ in range(2):
            step(case)
        peak = torch_side.memory_peak()
        if peak is not None:
            out["device_peak_bytes"] = peak
    out["peak_rss_bytes"] = max_rss_bytes()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
