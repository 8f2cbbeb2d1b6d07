"""Baseline: cross-entropy on the labels only (teachers and plain students)."""
from .base import DistillMethod
from .registry import register_method


@register_method("ce", family="baseline")
class CrossEntropy(DistillMethod):
    needs_teacher = False
    taps_description = "nothing (labels only)"
