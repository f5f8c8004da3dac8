"""ASE calculators of crossfunctional (installed as ``crossfunctional.calculators``)."""

from crossfunctional.calculators.calculator import CrossFunctionalCalculator

__all__ = ["CrossFunctionalCalculator"]
