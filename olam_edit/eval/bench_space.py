"""``olam-edit bench --space``: the Space's latency under load, as ratios to one visitor alone.

Visitors are ``gradio_client`` clients in threads of this process, each with its own session, talking
to a real Gradio server (the caller starts it and passes its URL: this layer never imports the Space
or Gradio). Every visitor loads one of the curated example rules, rewrites once untimed (the first
rewrite of a layer collects its key statistics), then repeats ``rounds`` times: press *Rewrite*
(a smoothness of its own each round, so every solve is new) and move *Strength* (a value of its own,
so every render is new). The time of one press is the wall time of ``Client.predict`` in the
visitor's thread: queueing, the handler and the answer with the images' URLs (the images themselves
are not downloaded).

The numbers: p50 and p95 of each action with one visitor, then with ``N`` at once, and
``space_<action>_p50_ratio`` = p50 with N / p50 alone (target: at most 2). These are ratios on the
same machine and process; the seconds depend on the machine.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

ACTIONS = ("rewrite", "strength")
CLIENTS = (1, 8)
ROUNDS = 5
EXAMPLES = ("add_sunglasses", "close_mouth")  # visitor i loads EXAMPLES[i % 2]
TARGETS = {f"space_{a}_p50_ratio": 2.0 for a in ACTIONS}
OK_MARK = "✓"  # the Space's status line starts with it when a handler succeeded

Timings = dict[str, list[float]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated (numpy's default)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def make_client(url: str, context: ssl.SSLContext) -> Any:
    """A fresh visitor (its own session). ``context`` is shared: gradio_client opens an httpx client,
    which by default builds an SSL context and loads the CA bundle, for every request; on loopback
    that cost would be the clients', not the Space's."""
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, ssl_verify=context)


def _checked(answer: Any, what: str) -> Any:
    status = answer[-1] if isinstance(answer, tuple | list) else answer
    if not (isinstance(status, str) and status.startswith(OK_MARK)):
        raise RuntimeError(f"the Space refused {what}: {status!r}")
    return answer


class Visitor:
    """One visitor of the Space: an example rule in its session, then timed rewrites and strengths."""

    def __init__(self, url: str, index: int, context: ssl.SSLContext) -> None:
        self.index, self.client = index, make_client(url, context)
        example = EXAMPLES[index % len(EXAMPLES)]
        layer, rank, smoothness, ridge, *_ = _checked(self.client.predict(example, api_name="/example"), example)
        self.settings = {"layer": layer, "rank": rank, "ridge": ridge}
        self.smoothness = float(smoothness)

    def rewrite(self, step: int) -> None:
        smoothness = self.smoothness * (1 + 0.01 * step + 0.001 * self.index)  # a new solve every time
        _checked(self.client.predict(**self.settings, smoothness=smoothness, api_name="/rewrite"), "a rewrite")

    def strength(self, step: int) -> None:
        _checked(self.client.predict(0.5 + 0.05 * step + 0.002 * self.index, api_name="/strength"), "a strength")

    def run(self, rounds: int, start: threading.Barrier | None = None) -> Timings:
        """One untimed rewrite, then ``rounds`` timed (rewrite, strength) pairs."""
        self.rewrite(0)
        if start is not None:
            start.wait()  # every visitor is warm before any is timed
        times: Timings = {a: [] for a in ACTIONS}
        for step in range(1, rounds + 1):
            for action in ACTIONS:
                t0 = time.perf_counter()
                getattr(self, action)(step)
                times[action].append(time.perf_counter() - t0)
        return times


def visit(url: str, clients: int, rounds: int, context: ssl.SSLContext | None = None) -> Timings:
    """Seconds of every timed press of ``clients`` visitors at once, by action; ``"cpu"`` holds the process's
    CPU seconds (every thread: server and visitors) and the wall seconds of the whole visit."""
    context = context or ssl.create_default_context()
    start = threading.Barrier(clients)

    def one(i: int) -> Timings:
        return Visitor(url, i, context).run(rounds, start)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(one, range(clients)))
    usage = [time.process_time() - cpu0, time.perf_counter() - wall0]
    return {**{a: [t for r in runs for t in r[a]] for a in ACTIONS}, "cpu": usage}


def summarize(by_clients: dict[int, Timings]) -> dict[str, float]:
    """p50 / p95 of each action at each client count, and the p50 ratios to the fewest clients."""
    base = min(by_clients)
    out: dict[str, float] = {}
    for n, times in sorted(by_clients.items()):
        for a in ACTIONS:
            out[f"{a}_p50_{n}"], out[f"{a}_p95_{n}"] = percentile(times[a], 50), percentile(times[a], 95)
        if "cpu" in times:  # how busy the process was: CPU seconds per press, and cores kept busy
            cpu, wall = times["cpu"]
            presses = n * (2 + len(ACTIONS) * len(times[ACTIONS[0]]) // n)  # + the example and warm-up of each
            out[f"cpu_per_press_{n}"], out[f"cores_busy_{n}"] = cpu / presses, cpu / wall
    most = max(by_clients)
    for a in ACTIONS:
        out[f"space_{a}_p50_ratio"] = out[f"{a}_p50_{most}"] / out[f"{a}_p50_{base}"]
        out[f"space_{a}_p95_ratio"] = out[f"{a}_p95_{most}"] / out[f"{a}_p95_{base}"]
    return out


def run_space_bench(url: str, clients: Sequence[int] = CLIENTS, rounds: int = ROUNDS,
                    progress: bool = True) -> tuple[dict[str, float], dict[int, Timings]]:
    """Visit the Space at ``url`` with each number of ``clients`` in turn (one visitor warms it up first).

    Returns the summary (:func:`summarize`) and every timing by client count.
    """
    context = ssl.create_default_context()
    say: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    say("bench --space: warming up (the first rewrite collects the layer's key statistics)")
    for i in range(len(EXAMPLES)):  # every example's layer, so no timed press collects statistics
        Visitor(url, i, context).rewrite(0)
    by_clients: dict[int, Timings] = {}
    for n in clients:
        t0 = time.perf_counter()
        say(f"bench --space: {n} visitor(s) at once, {rounds} round(s) each ...")
        by_clients[n] = visit(url, n, rounds, context)
        say(f"bench --space: {n} visitor(s) done in {time.perf_counter() - t0:.1f} s")
    return summarize(by_clients), by_clients


def format_space_table(results: dict[str, float], clients: Sequence[int] = CLIENTS) -> str:
    """The table ``olam-edit bench --space`` prints: seconds per action and client count, then the ratios."""
    head = "".join(f"{f'p50 {n}':>10}{f'p95 {n}':>10}" for n in clients)
    lines = [f"{'seconds':<10}{head}", "-" * (10 + 20 * len(clients))]
    for a in ACTIONS:
        lines.append(f"{a:<10}" + "".join(f"{results[f'{a}_p50_{n}']:>10.3f}{results[f'{a}_p95_{n}']:>10.3f}"
                                          for n in clients))
    lines += ["", f"{'ratio (p50, most / fewest clients)':<40}{'value':>8}{'target':>10}  met"]
    for key, target in TARGETS.items():
        met = "yes" if results[key] <= target else "NO"
        lines.append(f"{key:<40}{results[key]:>8.3f}{'<= ' + str(target):>10}  {met}")
    lines += [f"{k:<40}{results[k]:>8.3f}{'none':>10}  -" for k in results if k.endswith("_p95_ratio")]
    busy = [f"{n} visitor(s): {results[f'cpu_per_press_{n}']:.3f} CPU s per press, {results[f'cores_busy_{n}']:.2f} "
            f"cores busy" for n in clients if f"cpu_per_press_{n}" in results]
    return "\n".join([*lines, *(["", "process (server and visitors): " + "; ".join(busy)] if busy else [])])


def space_record(results: dict[str, float], timings: dict[int, Timings], *, command: str | None,
                 rounds: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``bench --space --json-out`` writes: the ratios, the percentiles, every timing, and how."""
    ratios = {k: v for k, v in results.items() if k.endswith("_ratio")}
    return {"ratios": ratios, "targets": TARGETS,
            "details": {k: v for k, v in results.items() if k not in ratios},
            "timings": {str(n): {a: t[a] for a in ACTIONS} for n, t in timings.items()},
            "_meta": {"command": command, "clients": sorted(timings), "rounds": rounds, "examples": list(EXAMPLES),
                      **(meta or {})}}

