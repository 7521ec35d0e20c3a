"""Motion modules: AnimateDiff formats for SD 1.x (and, later, temporal attention for DiTs)."""

from .animatediff_format import MotionModule, detect_version, load_motion_adapter, load_motion_module, to_original_keys

__all__ = ["MotionModule", "detect_version", "load_motion_adapter", "load_motion_module", "to_original_keys"]
