"""Motion modules: AnimateDiff formats for SD 1.x (and, later, temporal attention for DiTs)."""

from .animatediff_format import detect_version, load_motion_adapter, to_original_keys

__all__ = ["detect_version", "load_motion_adapter", "to_original_keys"]
