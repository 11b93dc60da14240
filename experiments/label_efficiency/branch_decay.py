"""Start a decayed pretext run (``dubai_scaling.sh``'s ``blocks_decay``) from the last
checkpoint of a constant-rate run of the same seed, instead of from nothing.

The two runs are the same run until the decayed one's first milestone: the same seed,
crops, holes and rate. So the decayed run can take over the constant-rate run's
``last.ckpt`` and save those epochs (40 core-minutes for issue 28's 30,720 crops). What
differs is the checkpoint's scheduler state, whose milestones a resumed run keeps over
its config's. This writes the decayed run's folder: ``last.ckpt`` with the decayed
milestones (in the scheduler state and the hyperparameters) and the checkpoint
callback's paths moved to the new folder; the budget checkpoints up to it, the CSV
logs, the band statistics and the wall times copied; and ``PROVENANCE.txt`` saying so.
A checkpoint past the first milestone, or one whose rate has already fallen, is
refused: it could not be the decayed run.

    python experiments/label_efficiency/branch_decay.py BASE_RUN DECAY_RUN --milestones 115 163

(``dubai_scaling.sh`` calls it when ``FROM=blocks`` is set for a ``blocks_decay`` run.)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sssi.errors import DataError
from sssi.utils.io import atomic_write_text, atomic_writer, torch_save

#: what the decayed run's folder takes from the constant-rate one, besides checkpoints
COPIED = ("csv", "norm_stats.json", "wall_time.tsv")


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under folder ``old`` moved under ``new``."""
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    return value


def decayed(ckpt: dict, milestones: list[int], base: Path, target: Path) -> dict:
    """The constant-rate checkpoint ``ckpt`` as the decayed run's; refuses one that the
    decayed run could not have written."""
    where = base / "checkpoints" / "last.ckpt"
    if not milestones or sorted(milestones) != list(milestones):
        raise DataError(f"--milestones {milestones}: expected increasing epochs")
    schedulers = ckpt.get("lr_schedulers") or []
    if len(schedulers) != 1 or "milestones" not in schedulers[0]:
        raise DataError(f"{where}: expected one MultiStepLR state (an inpainting baseline's "
                        f"checkpoint), found {len(schedulers)} scheduler states")
    state = schedulers[0]
    epoch = int(state["last_epoch"])  # the epochs the scheduler has stepped over
    if epoch > milestones[0]:
        raise DataError(f"{where}: {epoch} epochs in, past the first milestone "
                        f"{milestones[0]}: the decayed run's rate would already have fallen")
    if list(state["_last_lr"]) != list(state["base_lrs"]):
        raise DataError(f"{where}: its rate has already fallen ({state['_last_lr']} from "
                        f"{state['base_lrs']}): not a constant-rate run")
    out = dict(ckpt)
    # a checkpoint written just after the scheduler stepped onto the first milestone
    # (Lightning's end-of-fit save) must carry the rate that has just fallen
    fall = float(state["gamma"]) ** Counter(milestones)[epoch]
    out["lr_schedulers"] = [{**state, "milestones": Counter(milestones),
                             "_last_lr": [lr * fall for lr in state["_last_lr"]]}]
    if fall != 1.0:
        optimizer = dict(out["optimizer_states"][0])
        optimizer["param_groups"] = [{**g, "lr": g["lr"] * fall}
                                     for g in optimizer["param_groups"]]
        out["optimizer_states"] = [optimizer, *out["optimizer_states"][1:]]
    hparams = dict(out.get("hyper_parameters") or {})
    if isinstance(hparams.get("inpainter_scheduler"), dict):
        hparams["inpainter_scheduler"] = {**hparams["inpainter_scheduler"],
                                          "milestones": list(milestones)}
    out["hyper_parameters"] = hparams
    out["callbacks"] = {name: _moved(value, str(base), str(target))
                        for name, value in (ckpt.get("callbacks") or {}).items()}
    return out


def branch(base: Path, target: Path, milestones: list[int]) -> Path:
    """Write the decayed run ``target`` from the constant-rate run ``base``; return its
    ``last.ckpt``. The checkpoint is written last, so an interrupted branch leaves no
    run to resume and can simply be repeated."""
    base, target = base.resolve(), target.resolve()
    source = base / "checkpoints" / "last.ckpt"
    last = target / "checkpoints" / "last.ckpt"
    if not source.is_file():
        raise DataError(f"{source}: not found (run the constant-rate pretext first)")
    if last.exists():
        raise DataError(f"{last}: the decayed run has started already; resume it instead")
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    new = decayed(ckpt, milestones, base, target)
    crops = int((ckpt.get("game") or {}).get("inpainter_crops", 0))
    (target / "budgets").mkdir(parents=True, exist_ok=True)
    copied = []
    for budget in sorted((base / "budgets").glob("crops_*.ckpt")):
        number = re.fullmatch(r"crops_(\d+)\.ckpt", budget.name)
        if number and int(number.group(1)) <= crops:
            shutil.copy2(budget, target / "budgets" / budget.name)
            copied.append(budget.name)
    for name in COPIED:
        path = base / name
        if path.is_dir():
            shutil.copytree(path, target / name, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, target / name)
    lowered = "" if new["lr_schedulers"][0]["_last_lr"] == ckpt["lr_schedulers"][0]["_last_lr"] \
        else " (its rate lowered: it stands on the first)"
    atomic_write_text(target / "PROVENANCE.txt", (
        f"This run continues {base} from its last.ckpt at {crops:,} inpainter crops "
        f"(epoch {ckpt.get('epoch')}): the two runs are the same up to the first milestone "
        f"(epoch {milestones[0]}), so the checkpoint's MultiStepLR milestones were set to "
        f"{list(milestones)}{lowered} and its checkpoint callback's paths moved here "
        f"(experiments/label_efficiency/branch_decay.py). Copied from there: "
        f"{', '.join([*(f'budgets/{c}' for c in copied), *COPIED])}.\n"))
    last.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(last) as fh:
        torch_save(new, fh)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the constant-rate run's folder")
    parser.add_argument("target", type=Path, help="the decayed run's folder")
    parser.add_argument("--milestones", type=int, nargs="+", required=True,
                        help="the decayed run's epochs where the rate falls")
    args = parser.parse_args(argv)
    try:
        last = branch(args.base, args.target, args.milestones)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{last}: continues {args.base} with milestones {args.milestones}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
