"""crossfunctional: ASE and LAMMPS plugin for universal interatomic potentials
transferred from GGA/GGA+U to r2SCAN (Huang et al., npj Comput. Mater. 2025)."""

__version__ = "0.1.0"
