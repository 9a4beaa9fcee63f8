"""Callers of the served models: a CLI, the main job's demo, and the privacy evaluation."""
