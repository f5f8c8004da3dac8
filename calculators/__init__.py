"""ASE calculators of crossfunctional (installed as ``crossfunctional.calculators``)."""

from crossfunctional.calculators.calculator import CrossFunctionalCalculator, predict_batch, predict_structure

__all__ = ["CrossFunctionalCalculator", "predict_batch", "predict_structure"]
