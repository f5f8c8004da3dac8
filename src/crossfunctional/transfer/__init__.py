"""Transfer a pretrained potential to a new functional (Huang et al., npj Comput.
Mater. 2025): labelled-data readers and splits, AtomRef refit (Eq. 2) and
re-referencing (Eq. 3), the source/target correlation (Fig. 2b), the four
transfer methods of Table 1 with chgnet's ``Trainer``, and the scaling law (Fig. 6).

Units throughout: eV, Å, eV/Å, eV/Å³ with ASE's sign (positive tensile), μB;
AtomRef vectors are [94] in eV/atom with element Z at index Z - 1.
"""

from crossfunctional.transfer.atomref import (
    AtomRefFit,
    CorrelationResult,
    RankDeficientError,
    composition_matrix,
    correlate,
    fit_atomref,
    get_atomref,
    read_atomref,
    rereference,
)
from crossfunctional.transfer.data import (
    KBAR_TO_EV_PER_A3,
    LabelledStructure,
    TransferDataError,
    ase_to_vasp_kbar,
    check_records,
    group_kfold,
    read_extxyz,
    read_json,
    read_labelled,
    read_vasp,
    split_records,
    stress_to_3x3,
    vasp_kbar_to_ase,
    write_extxyz,
)
from crossfunctional.transfer.finetune import METHODS, FinetuneConfig, FinetuneResult, evaluate, finetune, load_upstream
from crossfunctional.transfer.labels import label_with_model, perturb
from crossfunctional.transfer.run import ConfigError, TrainingConfig
from crossfunctional.transfer.scaling import PowerLawFit, ScalingResult, crossover, fit_power_law, scaling_law

__all__ = [
    "KBAR_TO_EV_PER_A3",
    "METHODS",
    "AtomRefFit",
    "ConfigError",
    "CorrelationResult",
    "FinetuneConfig",
    "FinetuneResult",
    "LabelledStructure",
    "PowerLawFit",
    "RankDeficientError",
    "ScalingResult",
    "TrainingConfig",
    "TransferDataError",
    "ase_to_vasp_kbar",
    "check_records",
    "composition_matrix",
    "correlate",
    "crossover",
    "evaluate",
    "finetune",
    "fit_atomref",
    "fit_power_law",
    "group_kfold",
    "get_atomref",
    "label_with_model",
    "load_upstream",
    "perturb",
    "read_atomref",
    "read_extxyz",
    "read_json",
    "read_labelled",
    "read_vasp",
    "rereference",
    "scaling_law",
    "split_records",
    "stress_to_3x3",
    "vasp_kbar_to_ase",
    "write_extxyz",
]
