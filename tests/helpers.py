"""Shared by the tests: the CLI's exit code, and the option sets the pipeline tests start from."""

from __future__ import annotations

from vidiff.cli import main

LATENT = dict(height=64, width=64, progress=False, output_type="latent")  # pipeline calls that stop at latents


def cli(*args) -> int:
    """The CLI's exit code (argparse errors exit through SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code
