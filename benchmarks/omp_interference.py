"""Does PyTorch's OpenMP spin-wait slow the JAX timings that follow it, and what stops it?

After a parallel region, PyTorch's OpenMP threads keep spinning for a while (libgomp's default
wait policy), competing for the cores with the XLA:CPU step timed next. This script measures,
per case, the JAX step's median under several orders of timing, relative to JAX timed alone:

- ``interleaved``: torch repeat, JAX repeat, torch, JAX, ... (the harness before #15);
- ``block``: a block of torch repeats, then a block of JAX repeats (all samples kept);
- ``block+1``: the same with one untimed call after each switch;
- ``pause``: interleaved with a 20 ms sleep after each repeat;

and the same for PyTorch's side (XLA:CPU's threads spin too, and a passive wait policy can slow
PyTorch: its threads sleep between parallel regions and must be woken). The reference
("quiet") is each side timed alone after a pause and one untimed call. Each wait policy runs
in its own process, because libgomp reads ``OMP_WAIT_POLICY`` once, when torch is imported::

    python benchmarks/omp_interference.py            # default and PASSIVE, a few cases
    python benchmarks/omp_interference.py --rounds 9 --json out.json

Ratios near 1.00 mean no interference. Measure on a quiet machine: another process competing
for the cores inflates every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

CASES = (("se", (28, 28, 64), 8), ("se", (28, 28, 64), 32), ("cbam", (28, 28, 64), 8),
         ("nl", (14, 14, 128), 8), ("attention", (1, 256, 64), 8))
STRATEGIES = ("quiet", "interleaved", "block", "block+1", "pause")


def _run_strategy(strategy: str, jx, pt, per: int) -> None:
    """One strategy's samples of both timers (each timer's ``samples`` holds only these)."""
    jx.samples.clear()
    pt.samples.clear()
    if strategy == "quiet":  # each side alone, after a pause and one untimed call
        for timer in (jx, pt):
            time.sleep(0.2)
            timer.step()
            for _ in range(per):
                timer.repeat()
    elif strategy in ("interleaved", "pause"):
        for _ in range(per):
            for timer in (pt, jx):
                timer.repeat()
                if strategy == "pause":
                    time.sleep(0.02)
    else:
        for timer in (pt, jx):
            if strategy == "block+1":
                timer.step()
            for _ in range(per):
                timer.repeat()


def _measure(cases, rounds: int, per: int, min_repeat_s: float) -> list[dict]:
    import jax

    from attention_jax.bench.runner import jax_steps, place
    from attention_jax.bench.specs import build_specs, make_case
    from attention_jax.bench.timing import Timer
    from attention_jax.bench.torch_side import load_torch_side

    torch_side, note = load_torch_side("cpu", "cpu")
    if torch_side is None:
        raise SystemExit(note)
    out = []
    for name, shape, batch in cases:
        (spec,), _ = build_specs([name])
        case = make_case(spec, shape, batch, "float32", torch_side=torch_side)
        args = place(case, jax.devices()[:1])["fwd"]
        compiled = jax.jit(jax_steps(case)["fwd"]).lower(*args).compile()
        jx = Timer(lambda c=compiled, a=args: jax.block_until_ready(c(*a)),
                   min_repeat_s=min_repeat_s)
        pt = Timer(lambda c=case: torch_side.forward_step(c), min_repeat_s=min_repeat_s)
        jx.warmup(2)
        pt.warmup(2)
        samples = {(fw, st): [] for fw in ("jax", "torch") for st in STRATEGIES}
        rng = random.Random(0)
        for _ in range(rounds):
            order = list(STRATEGIES)
            rng.shuffle(order)
            for strategy in order:
                _run_strategy(strategy, jx, pt, per)
                samples[("jax", strategy)] += jx.samples
                samples[("torch", strategy)] += pt.samples
        med = {k: statistics.median(v) for k, v in samples.items() if v}
        out.append({
            "case": f"{name} {'x'.join(map(str, shape))} B{batch}",
            "jax_quiet_ms": 1e3 * med[("jax", "quiet")],
            "torch_quiet_ms": 1e3 * med[("torch", "quiet")],
            "number": {"jax": jx.number, "torch": pt.number},
            "jax_ratio": {s: med[("jax", s)] / med[("jax", "quiet")] for s in STRATEGIES},
            "torch_ratio": {s: med[("torch", s)] / med[("torch", "quiet")] for s in STRATEGIES},
        })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per", type=int, default=5, help="repeats per strategy and round")
    p.add_argument("--min-repeat-ms", type=float, default=3.0)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:  # one policy, in this process
        res = _measure(CASES, args.rounds, args.per, args.min_repeat_ms / 1e3)
        print("RESULT " + json.dumps(res))
        return 0
    results = {}
    for policy in ("default", "PASSIVE"):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        proc = subprocess.run([sys.executable, __file__, "--child", policy, "--rounds",
                               str(args.rounds), "--per", str(args.per), "--min-repeat-ms",
                               str(args.min_repeat_ms)], env=env, capture_output=True,
                              text=True, timeout=1800)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[policy] = json.loads(line[-1][7:])
    print("median time under each strategy / median of the same side timed alone (quiet)")
    print(f"{'case':<24}{'policy':<9}{'side':<6}{'quiet ms':>9}  "
          + "".join(f"{s:>12}" for s in STRATEGIES[1:]))
    for i, row in enumerate(results["default"]):
        for policy in results:
            r = results[policy][i]
            for side in ("jax", "torch"):
                print(f"{row['case']:<24}{policy:<9}{side:<6}{r[side + '_quiet_ms']:>9.3f}  "
                      + "".join(f"{r[side + '_ratio'][s]:>12.2f}" for s in STRATEGIES[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
