"""ASE calculators of crossfunctional (installed as ``crossfunctional.calculators``)."""

from crossfunctional.calculators.calculator import CrossFunctionalCalculator, predict_batch

__all__ = ["CrossFunctionalCalculator", "predict_batch"]
