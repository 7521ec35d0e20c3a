"""The embedded demo: synthetic moving-shape clips, their evaluator, and the shipped tiny model."""
