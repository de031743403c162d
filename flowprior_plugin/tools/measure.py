"""How the CPU benchmarks measure: each case in a fresh process, its resident-set high-water mark,
and the median time of repeated runs."""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable


def rss_kib() -> int:
    """Current resident set size in KiB (Linux), else the high-water mark."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    except (OSError, ValueError):
        return maxrss_kib()


def maxrss_kib() -> int:
    """This process's RSS high-water mark (``ru_maxrss``) in KiB."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == 'darwin' else value  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> None:
    """Start a new RSS high-water mark (Linux ``clear_refs``), so a case's peak is not the one of
    building its networks."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # elsewhere the high-water mark of the whole process is reported


def peak_rss_kib() -> int:
    """RSS high-water mark (``VmHWM``) since :func:`reset_peak_rss`, else ``ru_maxrss``."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    except (OSError, StopIteration, ValueError):
        return maxrss_kib()


def median_seconds(once: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``once``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _child(conn, target, *args) -> None:
    try:
        conn.send(target(*args))
    except BaseException as error:  # report, do not hang the parent
        conn.send({'error': f'{type(error).__name__}: {error}'})
    finally:
        conn.close()


def run_in_fresh_process(*args, target: Callable[..., dict]) -> dict:
    """``target(*args)`` in a fresh process (forked where possible, so no re-import), for a clean
    memory high-water mark; its first argument names the case in an error."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child_conn, target, *args))
    process.start()
    child_conn.close()
    try:
        result = parent_conn.recv()
    except EOFError:
        result = {'error': f'process died (exit code {process.exitcode})'}
    process.join()
    if 'error' in result:
        raise RuntimeError(f'benchmark case {args[0]!r} failed: {result["error"]}')
    return result
