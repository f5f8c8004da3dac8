"""Multi-task CHGNet: upgrade, folding, export, training, resume, errors.

Labels come from the shipped models on perturbed WBM structures
(shipped in ``crossfunctional.data``): task "pbe" from chgnet-0.3.0, task "r2scan" from
chgnet-r2scan. Units: energy eV/atom, forces eV/Å, stress GPa, magmoms μB.
"""

from __future__ import annotations

import csv
import gzip
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from ase import units

from crossfunctional.calculators import CrossFunctionalCalculator
from crossfunctional.cli import main as cli_main
from crossfunctional.data import data_path
from crossfunctional.models import ModelError, load_model, model_metadata
from crossfunctional.transfer.data import TransferDataError, read_extxyz, write_extxyz
from crossfunctional.transfer.labels import label_with_model, perturb
from crossfunctional.transfer.finetune import load_upstream
from crossfunctional.transfer.multitask import (
    MultiTaskCHGNet,
    fold_task,
    read_bridge,
    train_multitask,
    write_bridge,
)

torch.set_num_threads(1)  # many tiny kernels: one thread is faster on a shared 2-core box
WBM = data_path("wbm_random_pbe_equilibrium.json.gz")


@lru_cache(maxsize=1)
def _wbm():
    from pymatgen.core import Structure

    with gzip.open(WBM, "rt") as fh:
        records = json.load(fh)
    return [(r["material_id"], Structure.from_dict(r["structure"])) for r in records]


def small_structures(n: int, max_atoms: int = 4, skip: int = 0):
    """The first ``n`` WBM structures (after ``skip``) with at most ``max_atoms`` atoms."""
    return [item for item in _wbm() if len(item[1]) <= max_atoms][skip : skip + n]


@pytest.fixture(scope="module")
def upstream():
    model, _ = load_upstream("chgnet-0.3.0")
    return model.eval()


def predict(model: MultiTaskCHGNet, structures, tasks):
    """Multi-task predictions of one mixed-task batch as numpy."""
    graphs = [model.graph(s) for s in structures]
    ids = [model.task_id(t) for t in tasks]
    pred = model(graphs, ids, targets="efsm")
    return {
        "e": pred["e"].detach().numpy(),
        "f": [f.detach().numpy() for f in pred["f"]],
        "s": [s.detach().numpy() for s in pred["s"]],
        "m": [m.detach().numpy().reshape(-1) for m in pred["m"]],
    }


def randomised(model: MultiTaskCHGNet, seed: int = 0) -> MultiTaskCHGNet:
    """Non-zero task biases and a different AtomRef per task (a trained model's shape)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.task_bias:
            b.copy_(0.5 * torch.randn(b.shape, generator=gen))
        model.atomref[1] += 0.3 * torch.randn(model.atomref.shape[1], generator=gen).to(model.atomref.dtype)
    return model


# ---------------------------------------------------------------------- upgrade, folding
def test_upgrade_keeps_predictions_of_every_task(upstream):
    structures = [s for _, s in small_structures(4, max_atoms=8, skip=3)]
    model = MultiTaskCHGNet.upgrade(upstream, ["pbe", "r2scan"]).eval()
    assert model.source_task == "pbe" and model.bias_norms() == {"pbe": 0.0, "r2scan": 0.0}
    assert len(model.task_bias) == 10  # 4 atom + 3 bond + 3 angle gated MLPs
    assert [tuple(b.shape) for b in model.task_bias[:1]] == [(2, 128)]  # core 64 + gate 64 per task
    got = predict(model, structures, ["pbe", "r2scan", "r2scan", "pbe"])  # mixed-task batch
    for k, s in enumerate(structures):
        ref = upstream.predict_structure(s, task="efsm")
        assert abs(got["e"][k] - ref["e"]) < 1e-6  # eV/atom
        assert np.abs(got["f"][k] - ref["f"]).max() < 1e-5  # eV/Å
        assert np.abs(got["s"][k] - ref["s"]).max() < 1e-4  # GPa
        assert np.abs(got["m"][k] - ref["m"]).max() < 1e-5  # μB


def test_folded_task_matches_multitask_model_in_float64(upstream, tmp_path):
    structures = perturb([s for _, s in small_structures(3, max_atoms=8, skip=10)], seed=2)  # non-zero forces
    model = randomised(MultiTaskCHGNet.upgrade(upstream, ["pbe", "r2scan"])).double().eval()
    path = model.save(tmp_path / "mt.pth.tar")
    from pymatgen.io.ase import AseAtomsAdaptor

    for task in ("pbe", "r2scan"):
        ref = predict(model, structures, [task] * len(structures))
        calc = CrossFunctionalCalculator(model=str(path), task=task, dtype="float64")
        assert calc.metadata["task"] == task and calc.metadata["tasks"] == ["pbe", "r2scan"]
        for k, s in enumerate(structures):
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            assert abs(atoms.get_potential_energy() / len(atoms) - ref["e"][k]) < 1e-6  # eV/atom
            assert np.abs(atoms.get_forces() - ref["f"][k]).max() < 1e-6  # eV/Å
            # upstream's BatchedGraph keeps the cell volume in float32: 1e-7 relative
            assert np.abs(atoms.get_stress(voigt=False) / units.GPa - ref["s"][k]).max() < 1e-5  # GPa
            assert np.abs(atoms.get_magnetic_moments() - ref["m"][k]).max() < 1e-8  # μB
    # the two channels really differ (the check above is not vacuous)
    a, b = (predict(model, structures[:1], [t]) for t in ("pbe", "r2scan"))
    assert abs(a["e"][0] - b["e"][0]) > 0.05 and np.abs(a["f"][0] - b["f"][0]).max() > 1e-3

    # a mixed batch gives each structure its own task's numbers
    mixed = predict(model, structures, ["r2scan", "pbe", "r2scan"])
    for k, task in enumerate(["r2scan", "pbe", "r2scan"]):
        single = predict(model, structures[k : k + 1], [task])
        assert abs(mixed["e"][k] - single["e"][0]) < 1e-10
        assert np.abs(mixed["f"][k] - single["f"][0]).max() < 1e-10

    # export through the CLI: a plain TorchScript model with the same numbers
    out = tmp_path / "r2scan.pt"
    assert cli_main(["export", str(path), "--task", "r2scan", "--dtype", "float64", "-o", str(out)]) == 0
    exported = load_model(out)
    assert model_metadata(exported)["task"] == "r2scan"
    calc = CrossFunctionalCalculator(model=str(out), task="r2scan")  # its own task is accepted
    ref = predict(model, structures[:1], ["r2scan"])
    atoms = AseAtomsAdaptor.get_atoms(structures[0])
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() / len(atoms) - ref["e"][0]) < 1e-6
    assert np.abs(atoms.get_forces() - ref["f"][0]).max() < 1e-6

    # folding written out: biases land in the first layers, AtomRef in the composition model
    folded = fold_task(torch.load(path, weights_only=True), "r2scan")
    sd = folded["state_dict"]
    h = 64
    bias = model.task_bias[0][1].detach()
    base_sd = model.base.state_dict()
    key = "atom_conv_layers.0.twoBody_atom.mlp_core.layers.0.bias"
    assert torch.allclose(sd[key], base_sd[key] + bias[:h])
    key = "atom_conv_layers.0.twoBody_atom.mlp_gate.layers.0.bias"
    assert torch.allclose(sd[key], base_sd[key] + bias[h:])
    key = "angle_layers.0.twoBody_bond.mlp_core.layers.1.bias"  # no hidden layer: Dropout first
    assert torch.allclose(sd[key], base_sd[key] + model.task_bias[model.bias_prefixes.index("angle_layers.0.twoBody_bond")][1, :h])
    assert torch.equal(sd["composition_model.fc.weight"].reshape(-1), model.atomref[1].detach())


# ---------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Six WBM structures with <= 4 atoms, perturbed, in files:
    pbe: 3 training structures; r2scan: 2; bridge: 1 structure with both labels;
    validation: other perturbations of training structures (2 per task)."""
    items = small_structures(6)
    ids = [m for m, _ in items]
    structs = perturb([s for _, s in items], rattle=0.05, strain=0.02, seed=0)
    val_structs = perturb([s for _, s in items], rattle=0.05, strain=0.02, seed=1)
    pbe = label_with_model(structs, "chgnet-0.3.0", material_ids=ids)
    scan = label_with_model(structs, "chgnet-r2scan", material_ids=ids)
    vpbe = label_with_model(val_structs[:2], "chgnet-0.3.0", material_ids=ids[:2])
    vscan = label_with_model(val_structs[3:5], "chgnet-r2scan", material_ids=ids[3:5])
    d = tmp_path_factory.mktemp("tiny")
    files = {
        "pbe": write_extxyz(pbe[:3], d / "pbe.extxyz"),
        "r2scan": write_extxyz(scan[3:5], d / "r2scan.extxyz"),
        "val_pbe": write_extxyz(vpbe, d / "val_pbe.extxyz"),
        "val_r2scan": write_extxyz(vscan, d / "val_r2scan.extxyz"),
        "bridge": write_bridge({"pbe": pbe[5:], "r2scan": scan[5:]}, d / "bridge.extxyz"),
    }
    train = {"pbe": read_extxyz(files["pbe"]), "r2scan": read_extxyz(files["r2scan"])}
    val = {"pbe": read_extxyz(files["val_pbe"]), "r2scan": read_extxyz(files["val_r2scan"])}
    bridge = read_bridge(files["bridge"], ["pbe", "r2scan"])
    return {"files": files, "train": train, "val": val, "bridge": bridge, "pbe": pbe, "scan": scan}


def test_bridge_file_keeps_labels_of_both_tasks(tiny_data):
    bridge = tiny_data["bridge"]
    assert sorted(bridge) == ["pbe", "r2scan"] and len(bridge["pbe"]) == len(bridge["r2scan"]) == 1
    for task, ref in (("pbe", tiny_data["pbe"][5]), ("r2scan", tiny_data["scan"][5])):
        got = bridge[task][0]
        assert got.material_id == ref.material_id
        assert abs(got.energy - ref.energy) < 1e-6  # eV
        assert np.abs(got.forces - ref.forces).max() < 1e-6  # eV/Å
        assert np.abs(got.stress - ref.stress).max() < 1e-8  # eV/Å³, ASE sign
    # the two functionals' labels differ by eV-scale energies on the same structure
    assert abs(bridge["pbe"][0].energy - bridge["r2scan"][0].energy) > 1.0


def test_two_task_training_lowers_the_loss_resumes_and_exports(tiny_data, tmp_path):
    files = tiny_data["files"]
    settings = ["--epochs", "2", "--batch-size", "3", "--seed", "0", "--no-progress"]
    # run A: the command line, uninterrupted
    rc = cli_main(["transfer", "multitask", "--task", f"pbe={files['pbe']}", "--task", f"r2scan={files['r2scan']}",
                   "--val", f"pbe={files['val_pbe']}", "--val", f"r2scan={files['val_r2scan']}",
                   "--bridge", str(files["bridge"]), "--base", "chgnet-0.3.0", "-o", str(tmp_path / "a"), *settings])
    assert rc == 0
    # run B: the Python API, stopped after epoch 1 and resumed
    kwargs = dict(base="chgnet-0.3.0", epochs=2, batch_size=3, seed=0, progress=False)
    first = train_multitask(tiny_data["train"], tiny_data["val"], tiny_data["bridge"], output_dir=tmp_path / "b",
                            callback=lambda epoch, row: epoch == 1, **kwargs)
    assert first.status == "stopped" and [r["epoch"] for r in first.history] == [0, 1]
    res = train_multitask(tiny_data["train"], tiny_data["val"], tiny_data["bridge"], output_dir=tmp_path / "b", **kwargs)
    assert res.status == "complete" and res.resumed_from_epoch == 1
    assert [r["epoch"] for r in res.history] == [0, 1, 2]

    # resuming reproduces the uninterrupted run exactly (batch order, Adam and LR state restored)
    a = MultiTaskCHGNet.load(tmp_path / "a" / "checkpoints" / "last.pth.tar").state()
    b = MultiTaskCHGNet.load(res.last_checkpoint).state()
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-6), key
    for key, value in a["task_bias"].items():
        assert torch.allclose(value, b["task_bias"][key], atol=1e-6), key
    with open(tmp_path / "a" / "history.csv", newline="") as fh:
        rows_a = list(csv.DictReader(fh))
    assert float(rows_a[-1]["val_score"]) == pytest.approx(res.history[-1]["val_score"], rel=1e-5)

    # training lowered the loss and the r2scan channel's validation force and stress errors
    # (measured: 0.029 -> 0.019 eV/Å, 0.26 -> 0.22 GPa)
    h = res.history
    assert h[2]["train_loss"] < h[1]["train_loss"]
    assert h[0]["val_r2scan_f"] > 0.02  # the GGA start is off for the r2scan task
    assert h[-1]["val_r2scan_f"] < 0.9 * h[0]["val_r2scan_f"]
    assert h[-1]["val_r2scan_s"] < h[0]["val_r2scan_s"]
    # the pbe channel starts exact (its labels are the base model's), so its error can only grow:
    # the best (lowest validation score) checkpoint may be epoch 0
    assert h[0]["val_pbe_e"] < 1e-6 and h[0]["val_pbe_f"] < 1e-5
    assert res.best_epoch == min(h, key=lambda r: r["val_score"])["epoch"]
    # the task biases learn at 300 x the shared rate (norm 17.8 after 6 steps; ~0.03 at the shared rate)
    assert h[-1]["bias_norm_r2scan"] > 5.0 and h[-1]["learning_rate"] == pytest.approx(1e-5)
    assert "r2scan" in res.atomref_notes and (tmp_path / "b" / "atomref_r2scan.json").is_file()
    for name in ("best_model.pth.tar", "history.csv", "training_curves.png", "metrics.json", "run.json"):
        assert (tmp_path / "b" / name).is_file(), name
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "complete"
    # a finished run is returned as is
    again = train_multitask(tiny_data["train"], tiny_data["val"], tiny_data["bridge"], output_dir=tmp_path / "b", **kwargs)
    assert again.best_epoch == res.best_epoch and again.metrics == res.metrics

    # the best checkpoint runs in the calculator per task, with the multi-task model's numbers
    best = MultiTaskCHGNet.load(res.best_checkpoint).eval()
    structure = tiny_data["val"]["r2scan"][0].structure
    ref = predict(best, [structure], ["r2scan"])
    atoms = tiny_data["val"]["r2scan"][0].atoms()
    atoms.calc = CrossFunctionalCalculator(model=str(res.best_checkpoint), task="r2scan")
    assert abs(atoms.get_potential_energy() / len(atoms) - ref["e"][0]) < 2e-5  # float32
    assert np.abs(atoms.get_forces() - ref["f"][0]).max() < 2e-4


# ---------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(tiny_data, upstream, tmp_path, capsys):
    path = MultiTaskCHGNet.upgrade(upstream, ["pbe", "r2scan"]).save(tmp_path / "mt.pth.tar")
    # unknown task at inference and export: the message names the tasks
    with pytest.raises(ModelError, match=r"unknown task 'hse'.*available tasks: pbe, r2scan"):
        CrossFunctionalCalculator(model=str(path), task="hse")
    assert cli_main(["export", str(path), "--task", "hse", "-o", str(tmp_path / "x.pt")]) == 2
    assert "available tasks: pbe, r2scan" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    # a multi-task file needs a task; a single-task model takes none
    with pytest.raises(ModelError, match=r"multi-task checkpoint \(tasks: pbe, r2scan\); choose one with task="):
        load_model(path)
    with pytest.raises(ModelError, match="single-task model; task='r2scan' applies only to multi-task"):
        CrossFunctionalCalculator(model="chgnet-0.3.0", task="r2scan")
    with pytest.raises(ModelError, match="unknown task 'hse'"):
        MultiTaskCHGNet.load(path).task_id("hse")

    train, val, bridge = tiny_data["train"], tiny_data["val"], tiny_data["bridge"]
    kwargs = dict(base="chgnet-0.3.0", epochs=1, progress=False)
    # a data set without a task
    with pytest.raises(TransferDataError, match="must be given per task.*without a task name"):
        train_multitask(train["pbe"] + train["r2scan"], val, output_dir=tmp_path / "r1", **kwargs)
    assert cli_main(["transfer", "multitask", "--task", str(tiny_data["files"]["pbe"]), "-o", str(tmp_path / "r2")]) == 2
    assert "a data set without a task" in capsys.readouterr().err
    # a task with no data
    with pytest.raises(TransferDataError, match="task\\(s\\) r2scan have no data"):
        train_multitask({"pbe": train["pbe"], "r2scan": []}, val, output_dir=tmp_path / "r3", **kwargs)
    with pytest.raises(TransferDataError, match="r2scan have no validation data"):
        train_multitask(train, {"pbe": val["pbe"]}, output_dir=tmp_path / "r4", **kwargs)
    # bridge data: one task only, or a task that is not trained
    with pytest.raises(TransferDataError, match="carry labels of one task only"):
        train_multitask(train, val, {"pbe": bridge["pbe"]}, output_dir=tmp_path / "r5", **kwargs)
    with pytest.raises(TransferDataError, match="data for unknown task 'hse'"):
        train_multitask(train, val, {"pbe": bridge["pbe"], "hse": bridge["r2scan"]}, output_dir=tmp_path / "r6", **kwargs)
    with pytest.raises(TransferDataError, match="labels of unknown task\\(s\\) r2scan"):
        read_bridge(tiny_data["files"]["bridge"], ["pbe", "hse"])
    with pytest.raises(TransferDataError, match="at least two tasks"):
        read_bridge(tiny_data["files"]["pbe"], ["pbe", "r2scan"])
    # bad task names and settings, all before training
    with pytest.raises(ModelError, match="bad task name"):
        train_multitask({"pbe": train["pbe"], "r2 scan": train["r2scan"]}, None, output_dir=tmp_path / "r7", **kwargs)
    with pytest.raises(ValueError, match="task_weights for unknown task"):
        train_multitask(train, val, output_dir=tmp_path / "r8", task_weights={"hse": 2.0}, **kwargs)
    with pytest.raises(ValueError, match="task_lr_factor must be > 0"):
        train_multitask(train, val, output_dir=tmp_path / "r9", task_lr_factor=0.0, **kwargs)
    assert not any((tmp_path / f"r{k}").exists() for k in range(1, 10))
