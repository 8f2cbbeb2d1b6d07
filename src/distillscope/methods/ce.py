"""Baseline: cross-entropy on the labels only (teachers and plain students)."""
from .base import DistillMethod
from .registry import register_method


@register_method("ce")
class CrossEntropy(DistillMethod):
    needs_teacher = False
