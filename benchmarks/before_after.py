"""Run benchmarks on an earlier revision and on the work tree, interleaved, in one run.

For a change that must not slow anything down (a refactor): every ratio a benchmark prints
(``label: 1.23x``) is collected from each side, round after round (before, after, then after,
before, ...), and the median of the rounds is compared.

    python3 benchmarks/before_after.py --before HEAD~3 --rounds 3
    python3 benchmarks/before_after.py --before v0.1.0 --only cfind_rate anonymize_rate
    python3 benchmarks/before_after.py --before HEAD~3 --after HEAD   # ignore uncommitted edits

The earlier revision (and ``--after``, when given) is checked out into a temporary git
worktree and run with ``PYTHONPATH`` pointing at it, and with a ``pacsman`` on ``PATH`` that
runs its code, so each side runs its own revision's benchmark scripts against fresh peers.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each benchmark with the arguments that make one round (its own repeat is 1).
BENCHMARKS: dict[str, list[str]] = {
    "cfind_rate": ["--queries", "500", "--repeat", "1"],
    "retrieve_throughput": ["--repeat", "1"],
    "anonymize_rate": ["--files", "2000", "--repeat", "1", "--no-others"],
    "push_e2e": [],
}
_RATIO = re.compile(r"^\s*(?P<label>.+):\s*(?P<ratio>[0-9]+\.[0-9]+)x\b", re.MULTILINE)


def _shim(tree: Path, directory: Path) -> Path:
    """A ``pacsman`` command that runs ``tree``'s code."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "pacsman"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pacsman "$@"\n')
    script.chmod(0o755)
    return directory


def _run(name: str, tree: Path, shim: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), PATH=f"{shim}:{os.environ['PATH']}")
    command = [sys.executable, str(tree / "benchmarks" / f"{name}.py"), *BENCHMARKS[name]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"{name} failed in {tree} (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    ratios = {m["label"].strip(): float(m["ratio"]) for m in _RATIO.finditer(done.stdout)}
    print(f"  {name} @ {tree.name}: {time.perf_counter() - started:.0f} s, {ratios}", flush=True)
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--after", help="git revision to compare (default: the work tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--instances", type=int, help="instances for retrieve_throughput and push_e2e"
    )
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    if args.instances:
        BENCHMARKS["retrieve_throughput"] += ["--instances", str(args.instances)]
        BENCHMARKS["push_e2e"] += ["--instances", str(args.instances)]
        BENCHMARKS["push_e2e"] += ["--studies", str(max(1, args.instances // 100))]
    with tempfile.TemporaryDirectory(prefix="pacsman-before-after-") as tmp:
        revisions = {"before": args.before, "after": args.after}
        sides = {side: Path(tmp) / side if rev else ROOT for side, rev in revisions.items()}
        try:
            for side, rev in revisions.items():
                if rev:
                    subprocess.run(
                        ["git", "worktree", "add", "--detach", str(sides[side]), rev],
                        cwd=ROOT,
                        check=True,
                        capture_output=True,
                    )
            shims = {side: _shim(tree, Path(tmp) / f"bin-{side}") for side, tree in sides.items()}
            for name in args.only:
                _compare(name, sides, shims, args.rounds)
        finally:
            for side, rev in revisions.items():
                if rev:
                    subprocess.run(["git", "worktree", "remove", "--force", str(sides[side])])
    return 0


def _compare(name: str, sides: dict[str, Path], shims: dict[str, Path], rounds: int) -> None:
    seen: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for index in range(rounds):
        order = ("before", "after") if index % 2 == 0 else ("after", "before")
        for side in order:
            for label, ratio in _run(name, sides[side], shims[side]).items():
                seen[side].setdefault(label, []).append(ratio)
    print(f"\n{name}: median of {rounds} rounds, before -> after")
    for label, values in seen["before"].items():
        after = seen["after"].get(label)
        if not after:
            print(f"  {label}: {statistics.median(values):.2f}x -> (not printed after)")
            continue
        a, b = statistics.median(values), statistics.median(after)
        print(f"  {label}: {a:.2f}x -> {b:.2f}x ({(b - a) / a * 100:+.1f} %)")
    print(flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
