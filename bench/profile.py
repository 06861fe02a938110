"""Summarise py-spy's raw (collapsed) stacks: where the daemon's CPU goes.

``python -m bench run --profile DIR`` attaches ``py-spy record --format raw`` to the
daemon for each phase; ``python -m bench.profile DIR/request.txt [TOP]`` prints, per
function (file:function, line numbers dropped), its share of all samples *inclusive*
(anywhere on the stack) and *self* (the innermost frame), plus a coarse split by
module.  Each line of a raw file is ``frame;frame;...;frame COUNT``, outermost first.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

__all__ = ["callees", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _key(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{match.group('func')}"


def _area(key: str) -> str:
    path = key.split(":", 1)[0]
    if path.startswith("gateway/"):
        return "/".join(path.split("/")[:2])
    return path.split("/", 1)[0].removesuffix(".py")


def summarise(path: Path, top: int = 30) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_key(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        for key in set(frames):
            inclusive[key] += count
        own[frames[-1]] += count
        areas[_area(frames[-1])] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples"]
    out.append("  self time by area (innermost frame's module):")
    for area, n in areas.most_common(14):
        out.append(f"    {n / total * 100:5.1f}%  {area}")
    out.append(f"  top {top} inclusive (gateway and library functions):")
    for key, n in inclusive.most_common(top * 3)[:top]:
        out.append(f"    {n / total * 100:5.1f}%  {key}")
    out.append(f"  top {top} self:")
    for key, n in own.most_common(top):
        out.append(f"    {n / total * 100:5.1f}%  {key}")
    return "\n".join(out)


def callees(path: Path, target: str, top: int = 15) -> str:
    """Inclusive share of each direct callee of functions whose key contains ``target``."""
    below: Counter[str] = Counter()
    total = within = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_key(f) for f in stack.split(";") if f.strip()]
        total += count
        idx = [i for i, f in enumerate(frames) if target in f]
        if not idx:
            continue
        within += count
        i = idx[-1]
        below[frames[i + 1] if i + 1 < len(frames) else "(self)"] += count
    out = [f"{target}: {within / max(1, total) * 100:.1f}% of all samples; callees:"]
    for key, n in below.most_common(top):
        out.append(f"    {n / max(1, total) * 100:5.1f}%  {key}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.profile RAW_FILE [TOP]", file=sys.stderr)
        return 2
    if len(args) > 2 and args[1] == "--callees":
        for target in args[2:]:
            print(callees(Path(args[0]), target))
        return 0
    print(summarise(Path(args[0]), int(args[1]) if len(args) > 1 else 30))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
