"""Model registry, weight loading from ``chgnet`` checkpoints, TorchScript export.

Every model file is read by :mod:`crossfunctional.models.checkpoints`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from crossfunctional.io import atomic_path
from crossfunctional.models.checkpoints import ModelError, is_torchscript, read_model_dict, read_torchscript
from crossfunctional.models.chgnet import MAX_Z, CHGNet

__all__ = ["MODELS", "ModelError", "available_models", "export", "load_model", "model_metadata"]

LICENCE = "BSD-3-Clause (CHGNet weights, Copyright (c) 2023 Materials Virtual Lab / Ceder group)"
CITATION_CHGNET = (
    "B. Deng et al., CHGNet as a pretrained universal neural network potential for "
    "charge-informed atomistic modelling, Nat. Mach. Intell. 5, 1031 (2023)"
)
CITATION_R2SCAN = (
    "X. Huang et al., Cross-functional transferability in universal machine learning "
    "interatomic potentials, npj Comput. Mater. (2025)"
)

#: Registered model names -> (file inside the ``chgnet`` package, functional, citation).
MODELS: dict[str, tuple[str, str, str]] = {
    "chgnet-r2scan": (
        "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
        "r2SCAN (transferred from GGA/GGA+U, Huang et al. 2025 Method 4)",
        f"{CITATION_R2SCAN}; {CITATION_CHGNET}",
    ),
    "chgnet-0.3.0": (
        "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        "GGA/GGA+U (Materials Project, MPtrj)",
        CITATION_CHGNET,
    ),
}
DEFAULT_MODEL = "chgnet-r2scan"

#: upstream ``CHGNet.load(model_name=...)`` names -> ours
ALIASES = {"r2scan": "chgnet-r2scan", "0.3.0": "chgnet-0.3.0"}

ELEMENTS = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
    "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
    "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
    "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm",
    "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn",
    "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu",
]  # fmt: skip
assert len(ELEMENTS) == MAX_Z


def available_models() -> dict[str, str]:
    """Registered model names and the functional each reproduces."""
    return {name: functional for name, (_, functional, _) in MODELS.items()}


def _chgnet_file(relative: str) -> Path:
    import chgnet

    return Path(chgnet.__file__).parent / relative


def _check_args(args: dict[str, Any], path: Path) -> dict[str, Any]:
    """Architecture options of a chgnet checkpoint -> CHGNet kwargs; unsupported ones raise."""
    required = {
        "mlp_first": True,
        "is_intensive": True,
        "update_bond": True,
        "update_angle": True,
        "non_linearity": "silu",
        "gMLP_norm": "layer",
        "readout_norm": "layer",
        "conv_norm": None,
        "mlp_out_bias": False,
        "final_mlp": "MLP",
    }
    for key, value in required.items():
        if args.get(key, value) != value:
            raise ModelError(f"{path}: chgnet option {key}={args[key]!r} is not supported (need {value!r})")
    dims = {args.get(k, 64) for k in ("atom_fea_dim", "bond_fea_dim", "angle_fea_dim")}
    if len(dims) != 1:
        raise ModelError(f"{path}: atom, bond and angle feature widths must be equal, got {sorted(dims)}")
    hidden = {}
    for key, default in (("atom_conv_hidden_dim", 64), ("bond_conv_hidden_dim", 64), ("angle_layer_hidden_dim", 0)):
        value = args.get(key, default)
        if not isinstance(value, int):
            raise ModelError(f"{path}: {key}={value!r} must be a single integer")
        hidden[key] = value
    mlp_hidden = args.get("mlp_hidden_dims", (64, 64))
    if isinstance(mlp_hidden, int):
        mlp_hidden = [mlp_hidden]
    return {
        "dim": dims.pop(),
        "num_radial": args.get("num_radial", 9),
        "num_angular": args.get("num_angular", 9),
        "n_conv": args.get("n_conv", 4),
        "atom_hidden": hidden["atom_conv_hidden_dim"],
        "bond_hidden": hidden["bond_conv_hidden_dim"],
        "angle_hidden": hidden["angle_layer_hidden_dim"],
        "mlp_hidden": list(mlp_hidden),
        "atom_graph_cutoff": float(args.get("atom_graph_cutoff", 6)),
        "bond_graph_cutoff": float(args.get("bond_graph_cutoff", 3)),
        "cutoff_coeff": int(args.get("cutoff_coeff", 8)),
    }


def _gated_mlp_state(sd: dict[str, torch.Tensor], prefix: str, hidden: int, part_dim: int) -> dict[str, torch.Tensor]:
    """Upstream GatedMLP weights -> ours (core and gate first layers stacked, then
    split by input block of width ``part_dim``: [n_parts, 2H, part_dim])."""
    first = 0 if hidden > 0 else 1  # MLP(hidden=0) is [Dropout, Linear]
    stacked = torch.cat([sd[f"{prefix}.mlp_core.layers.{first}.weight"], sd[f"{prefix}.mlp_gate.layers.{first}.weight"]])
    n_parts = stacked.shape[1] // part_dim
    out = {
        "weight_in": stacked.reshape(stacked.shape[0], n_parts, part_dim).transpose(0, 1).contiguous(),
        "bias_in": torch.cat([sd[f"{prefix}.mlp_core.layers.{first}.bias"], sd[f"{prefix}.mlp_gate.layers.{first}.bias"]]),
        "norm_core.weight": sd[f"{prefix}.bn1.weight"],
        "norm_core.bias": sd[f"{prefix}.bn1.bias"],
        "norm_gate.weight": sd[f"{prefix}.bn2.weight"],
        "norm_gate.bias": sd[f"{prefix}.bn2.bias"],
    }
    if hidden > 0:
        out["weight_core_out"] = sd[f"{prefix}.mlp_core.layers.3.weight"]
        out["bias_core_out"] = sd[f"{prefix}.mlp_core.layers.3.bias"]
        out["weight_gate_out"] = sd[f"{prefix}.mlp_gate.layers.3.weight"]
        out["bias_gate_out"] = sd[f"{prefix}.mlp_gate.layers.3.bias"]
    return out


def convert_state_dict(sd: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map an upstream ``chgnet.model.CHGNet`` state dict onto :class:`CHGNet`'s."""
    new: dict[str, torch.Tensor] = {
        "atom_embedding.weight": sd["atom_embedding.embedding.weight"],
        "rbf_frequencies_ag": sd["bond_basis_expansion.rbf_expansion_ag.frequencies"],
        "rbf_frequencies_bg": sd["bond_basis_expansion.rbf_expansion_bg.frequencies"],
        "angle_frequencies": sd["angle_basis_expansion.fourier_expansion.frequencies"],
        "bond_embedding.weight": sd["bond_embedding.weight"],
        "bond_weights_ag.weight": sd["bond_weights_ag.weight"],
        "bond_weights_bg.weight": sd["bond_weights_bg.weight"],
        "angle_embedding.weight": sd["angle_embedding.weight"],
        "site_wise.weight": sd["site_wise.weight"],
        "site_wise.bias": sd["site_wise.bias"],
        "readout_norm.weight": sd["readout_norm.weight"],
        "readout_norm.bias": sd["readout_norm.bias"],
        "atomref": sd["composition_model.fc.weight"].reshape(-1)
        if "composition_model.fc.weight" in sd
        else torch.zeros(MAX_Z),
    }
    linear_idx = [k for k in range(32) if f"mlp.layers.{k}.weight" in sd]
    for n, k in enumerate(linear_idx):
        new[f"readout.{n}.weight"] = sd[f"mlp.layers.{k}.weight"]
        new[f"readout.{n}.bias"] = sd[f"mlp.layers.{k}.bias"]
    n_conv = kwargs["n_conv"]
    for b in range(n_conv):
        target = f"blocks.{b}.atom_conv" if b < n_conv - 1 else "last_atom_conv"
        for key, value in _gated_mlp_state(sd, f"atom_conv_layers.{b}.twoBody_atom", kwargs["atom_hidden"], kwargs["dim"]).items():
            new[f"{target}.mlp.{key}"] = value
        new[f"{target}.out.weight"] = sd[f"atom_conv_layers.{b}.mlp_out.layers.1.weight"]
    for b in range(n_conv - 1):
        for key, value in _gated_mlp_state(sd, f"bond_conv_layers.{b}.twoBody_bond", kwargs["bond_hidden"], kwargs["dim"]).items():
            new[f"blocks.{b}.bond_conv.mlp.{key}"] = value
        new[f"blocks.{b}.bond_conv.out.weight"] = sd[f"bond_conv_layers.{b}.mlp_out.layers.1.weight"]
        for key, value in _gated_mlp_state(sd, f"angle_layers.{b}.twoBody_bond", kwargs["angle_hidden"], kwargs["dim"]).items():
            new[f"blocks.{b}.angle_update.mlp.{key}"] = value
    return new


def _fill_unused_out_layers(model: CHGNet, new: dict[str, torch.Tensor]) -> None:
    """Gated MLPs without a hidden layer keep their (unused) output weights."""
    for name, tensor in model.state_dict().items():
        new.setdefault(name, tensor)


def from_checkpoint(path: str | os.PathLike, name: str | None = None, task: str | None = None) -> CHGNet:
    """Build :class:`CHGNet` from a ``chgnet`` checkpoint (``.pth.tar``), read
    with ``weights_only=True``; for a multi-task checkpoint, the channel
    ``task`` with its biases and AtomRef folded in.

    Raises:
        ModelError: the file is missing, needs full unpickling, or describes an
            architecture this implementation does not cover; ``task`` missing
            for a multi-task checkpoint, unknown (the message names the
            available tasks), or given for a single-task one.
    """
    path = Path(path)
    ckpt = read_model_dict(path, task)
    task_meta = {} if task is None else {"task": task, "tasks": list(ckpt["tasks"]), "source_task": ckpt.get("source_task")}
    return from_model_dict(
        ckpt, name=name or (path.name if task is None else f"{path.name}[{task}]"), source=path.name, **task_meta
    )


def from_model_dict(ckpt: dict[str, Any], name: str, source: str = "", **metadata: Any) -> CHGNet:
    """Build :class:`CHGNet` from an upstream model dict ``{"state_dict",
    "model_args"}`` (a checkpoint's ``"model"`` entry, or a loaded
    ``chgnet.model.CHGNet``'s ``state_dict()`` and ``model_args``).

    Raises:
        ModelError: an architecture this implementation does not cover.
    """
    where = Path(source or name)
    kwargs = _check_args(dict(ckpt["model_args"]), where)
    model = CHGNet(**kwargs)
    new = convert_state_dict(ckpt["state_dict"], kwargs)
    _fill_unused_out_layers(model, new)
    try:
        model.load_state_dict(new, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{where}: weights do not fit the CHGNet architecture: {exc}") from None
    model.metadata_json = json.dumps(
        {
            "model_name": name,
            "architecture": "CHGNet",
            "version": str(ckpt["model_args"].get("version", "")),
            "source": str(source),
            "config": kwargs,
            "cutoff": kwargs["atom_graph_cutoff"],
            "bond_graph_cutoff": kwargs["bond_graph_cutoff"],
            "elements": ELEMENTS,
            "atomref": {el: float(v) for el, v in zip(ELEMENTS, model.atomref.tolist())},
            "licence": LICENCE,
            "citation": MODELS.get(name, ("", "", CITATION_CHGNET))[2],
            **metadata,
        }
    )
    return model.requires_grad_(False).eval()


def is_upstream_chgnet(obj: Any) -> bool:
    """Whether ``obj`` is a loaded ``chgnet.model.CHGNet``."""
    return type(obj).__name__ == "CHGNet" and type(obj).__module__.startswith("chgnet.") and hasattr(obj, "model_args")


def model_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """Metadata of a loaded model (eager or TorchScript): name, cutoffs,
    elements, AtomRef (eV/atom), licence, citation."""
    return json.loads(model.metadata_json)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device the models run on: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ModelError: any other name (``"gpu"``, ``"mps"``, ``"meta"``, a typo),
            a CUDA device on a machine without CUDA, or a CUDA index that does
            not exist; the message names the valid choices.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text != "cpu" and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
            raise ModelError(f"device {str(device)!r} is not supported; choose cpu, cuda or cuda:N")
        dev = torch.device(text)
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"device {str(dev)!r} is not supported; choose cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {str(dev)!r} requested but CUDA is not available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {str(dev)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    task: str | None = None,
) -> torch.nn.Module:
    """Load a model by registered name (or upstream's ``"r2scan"``/``"0.3.0"``),
    ``chgnet`` checkpoint path, exported TorchScript file (``.pt``), or a
    loaded ``chgnet.model.CHGNet`` (converted once, the same numbers), on ``device`` in ``dtype`` (float32 or float64;
    None keeps the precision stored in the file). ``task`` picks the channel of
    a multi-task checkpoint (folded into a plain model, single-task speed); an
    export of one task accepts its own task name.

    Returns:
        A module with the forward contract of :meth:`CHGNet.forward` and the
        attributes ``atom_graph_cutoff`` (Å) and ``metadata_json``.

    Raises:
        ModelError: unknown name, missing or unreadable file; a multi-task
            checkpoint without ``task``, an unknown task, or ``task`` for a
            single-task model.
    """
    device = resolve_device(device)
    if is_upstream_chgnet(name_or_path):  # a loaded chgnet.model.CHGNet: converted once, same numbers
        if task is not None:
            raise ModelError("task= applies only to multi-task checkpoints, not to a chgnet.model.CHGNet")
        upstream = {"state_dict": name_or_path.state_dict(), "model_args": name_or_path.model_args}
        model = from_model_dict(upstream, name="chgnet.model.CHGNet", source="chgnet.model.CHGNet object")
        model = model.to(dtype=next(name_or_path.parameters()).dtype)
        return _finish(model, device, dtype)
    key = ALIASES.get(str(name_or_path), str(name_or_path))
    if key in MODELS:
        if task is not None:
            raise ModelError(f"{key} is a single-task model; task={task!r} applies only to multi-task checkpoints")
        model: torch.nn.Module = from_checkpoint(_chgnet_file(MODELS[key][0]), name=key)
    else:
        path = Path(key)
        if not path.exists():
            known = ", ".join(MODELS)
            raise ModelError(f"unknown model {key!r}: not a registered name ({known}) nor an existing file")
        if is_torchscript(path):
            model = read_torchscript(path, task=task)
        else:
            model = from_checkpoint(path, task=task)
    return _finish(model, device, dtype)


def _finish(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | str | None) -> torch.nn.Module:
    for param in model.parameters():  # inference module: autograd tracks only the edge vectors
        param.requires_grad_(False)
    if dtype is None:  # the file's own precision (float32 for the shipped weights)
        return model.to(device=device).eval()
    return model.to(device=device, dtype=_as_dtype(dtype)).eval()


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ModelError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32, "double": torch.float64}
    if dtype not in table:
        raise ModelError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return table[dtype]


def export(model: torch.nn.Module | str, path: str | os.PathLike, dtype: torch.dtype | str = torch.float32) -> Path:
    """Write ``model`` (a module or a name/path for :func:`load_model`) as a
    TorchScript file for LAMMPS and the calculator.

    The file carries its metadata (cutoffs, element list, AtomRef, model name,
    version, licence, citation) as the string attribute ``metadata_json`` and as
    the extra file ``metadata.json``. It is written to a temporary name and
    renamed, so a failed export leaves nothing behind.
    """
    dtype = _as_dtype(dtype)
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, dtype=dtype)
    elif next(iter(model.parameters())).dtype != dtype:
        model = copy.deepcopy(model).to(dtype=dtype)  # leave the caller's module as it is
    scripted = model.eval() if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model.eval())
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": scripted.metadata_json})
    return path
