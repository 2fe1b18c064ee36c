"""Benchmark the pure-Python overlay: operations per second, and a conformance-style workload.

    python bench/bench_pyoverlay.py [--files N] [--programs N] [--kernel]

Builds a layer stack in a scratch directory under /tmp (three lowers, N files spread over
nested directories), then times single operations through ``adapters.posix.perform`` on
``OverlayFS``, and a workload shaped like the conformance suite: many short random programs,
each on a fresh small stack, ending with a full ``observe()``. With ``--kernel`` (root) the same
workload runs on a kernel mount for reference. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters import posix
from adapters.base import LayerDirs, Mounted, is_root
from adapters.pyoverlay.adapter import PythonMounted
from adapters.pyoverlay.fs import OverlayFS
from model import ops
from model.features import Features


def build(base: Path, files: int) -> LayerDirs:
    lowers = []
    for layer in range(3):
        root = base / f"l{layer}"
        for i in range(files):
            d = root / f"d{i % 10}" / f"e{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}-{layer}").write_bytes(b"x" * 512)
            if i % 7 == layer:
                (d / f"shared{i}").write_bytes(bytes([layer]) * 100)
        lowers.append(root)
    (base / "u").mkdir()
    (base / "w").mkdir()
    return LayerDirs(tuple(lowers), base / "u", base / "w")


def rate(name: str, count: int, fn: Callable[[int], object]) -> None:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    elapsed = time.perf_counter() - start
    print(f"  {name:<34} {count / elapsed:>10.0f} ops/s  ({elapsed * 1e6 / count:7.1f} µs/op)")


def single_ops(base: Path, files: int, repeat: int) -> None:
    layers = build(base, files)
    fs = OverlayFS(layers, Features())
    n = min(repeat, files)
    print(f"single operations ({files} files x 3 lowers, merged directories):")

    def f(i: int, layer: int) -> str:
        j = i % files
        return f"d{j % 10}/e{j % 3}/f{j}-{layer}"

    rate("stat lower file (depth 3)", repeat, lambda i: fs.stat(f(i, 2)))
    rate("stat missing name", repeat, lambda i: _errno(fs.stat, f"d{i % 10}/e0/none{i}"))
    rate("read lower file", repeat, lambda i: posix.perform(fs, ops.Read(f(i, 1))))
    rate("readdir merged dir", max(1, repeat // 10), lambda i: fs.listdir(f"d{i % 10}/e{i % 3}"))
    rate("copy-up (open O_WRONLY)", n, lambda i: fs.close(fs.open(f(i, 2), os.O_WRONLY)))
    rate("write after copy-up", n, lambda i: posix.perform(fs, ops.Write(f(i, 2), b"y")))
    rate("create (O_CREAT) in merged dir", n,
         lambda i: fs.close(fs.open(f"d{i % 10}/new{i}", os.O_CREAT | os.O_WRONLY)))  # fmt: skip
    rate("rename upper file", n, lambda i: fs.rename(f"d{i % 10}/new{i}", f"d{i % 10}/mv{i}", 0))
    rate("unlink upper file", n, lambda i: fs.unlink(f"d{i % 10}/mv{i}"))
    rate("unlink lower file (whiteout)", n, lambda i: fs.unlink(f(i, 0)))

    def mkdir_rmdir(i: int) -> None:
        fs.mkdir(f"x{i}", 0o755)
        fs.rmdir(f"x{i}")

    rate("mkdir + rmdir", n, mkdir_rmdir)
    start = time.perf_counter()
    view = posix.observe(fs)
    elapsed = time.perf_counter() - start
    print(f"  observe() whole view: {len(view)} paths in {elapsed * 1000:.1f} ms")


PROGRAM_OPS: list[Callable[[random.Random], ops.Op]] = [
    lambda r: ops.Stat(_p(r)),
    lambda r: ops.Read(_p(r)),
    lambda r: ops.Readdir(_p(r)),
    lambda r: ops.Write(_p(r), b"data", r.choice([0, 3])),
    lambda r: ops.Open(_p(r), ("O_WRONLY", "O_CREAT")),
    lambda r: ops.Chmod(_p(r), 0o600),
    lambda r: ops.SetXattr(_p(r), "user.k", b"v"),
    lambda r: ops.Mkdir(_p(r)),
    lambda r: ops.Rmdir(_p(r)),
    lambda r: ops.Unlink(_p(r)),
    lambda r: ops.Symlink("a", _p(r)),
    lambda r: ops.Link(_p(r), _p(r)),
    lambda r: ops.Rename(_p(r), _p(r)),
]


def _p(r: random.Random) -> str:
    return "/".join(r.choice("abc") for _ in range(r.choice([1, 1, 2, 3])))


def small_stack(base: Path, r: random.Random) -> LayerDirs:
    lowers = []
    for layer in range(r.choice([1, 2, 3])):
        root = base / f"l{layer}"
        root.mkdir(parents=True)
        for name in "abc":
            choice = r.random()
            if choice < 0.4:
                (root / name).write_text(f"{layer}{name}")
            elif choice < 0.8:
                (root / name).mkdir()
                for child in "abc":
                    if r.random() < 0.5:
                        (root / name / child).write_text(child)
        lowers.append(root)
    (base / "u").mkdir()
    (base / "w").mkdir()
    return LayerDirs(tuple(lowers), base / "u", base / "w")


def workload(base: Path, programs: int, make: Callable[[LayerDirs, Path], Mounted]) -> float:
    r = random.Random(1)
    start = time.perf_counter()
    for i in range(programs):
        case = base / f"case{i}"
        layers = small_stack(case, r)
        mounted = make(layers, case)
        try:
            for _ in range(20):
                mounted.perform(r.choice(PROGRAM_OPS)(r))
            mounted.observe()
        finally:
            mounted.close()
        shutil.rmtree(case)
    return time.perf_counter() - start


def _errno(fn: Callable[[str], object], path: str) -> int:
    try:
        fn(path)
    except OSError as exc:
        return exc.errno or 0
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5000)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--kernel", action="store_true", help="also time a kernel mount (root)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pyo-bench-", dir="/tmp"))
    try:
        single_ops(base / "single", args.files, args.repeat)
        print(f"conformance-style workload: {args.programs} programs x 20 ops + observe():")
        elapsed = workload(
            base / "py", args.programs, lambda layers, _: PythonMounted(layers, Features())
        )
        print(f"  python  {elapsed:6.2f} s  ({elapsed * 1000 / args.programs:6.1f} ms/program,"
              " stack building included)")  # fmt: skip
        if args.kernel and is_root():
            from adapters.kernel import KernelAdapter

            def kernel(layers: LayerDirs, case: Path) -> Mounted:
                (case / "scratch").mkdir()
                return KernelAdapter().mount(layers, Features(), case / "scratch")

            elapsed = workload(base / "k", args.programs, kernel)
            print(f"  kernel  {elapsed:6.2f} s  ({elapsed * 1000 / args.programs:6.1f} ms/program,"
                  " mount and umount included)")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
