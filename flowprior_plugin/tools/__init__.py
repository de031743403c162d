"""Tooling around the library: the offline demo and its report, and the CPU benchmarks.

Run as ``python -m flowprior_plugin.tools.demo`` and ``python -m flowprior_plugin.tools.benchmark``.
The importable core (networks, layers, losses, metrics, models, data, the CLI, tiling, inference)
never imports this package.
"""
