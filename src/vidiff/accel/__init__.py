"""Accelerators that follow diffusers' hook pattern: Config, State, Hook, apply_*, remove_*."""
