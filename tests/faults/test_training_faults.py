"""Faults a long run meets on a shared machine: resumed with loader workers, preempted
(SIGTERM) or interrupted (Ctrl-C) inside an epoch, a full or read-only disk under the
checkpoints. Each case checks the exit status or the one-line error, that a resumed
run ends bit for bit where an uninterrupted one does, and that nothing already written
was lost or left half-written."""

from __future__ import annotations

import csv
import errno
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sssi.checkpoint_io
from sssi.callbacks import RunInterruptedError
from sssi.errors import DataError
from sssi.train import main, run
from sssi.utils.io import atomic_writer, stale_temporaries
from tests.helpers import SMALL, FillingFile, compose_train

#: the demo game with two loader workers (the default of real runs), no pictures
GAME = [*SMALL, "data.num_workers=2", "task.image_every_n_steps=0",
        "trainer.num_sanity_val_steps=0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """The weights after 3 uninterrupted epochs (4 batches each) with 2 workers, per
    ``task.accumulate_grad_batches`` (computed once each)."""
    done: dict[int, dict[str, torch.Tensor]] = {}

    def weights(accumulate: int = 1) -> dict[str, torch.Tensor]:
        if accumulate not in done:
            out = tmp_path_factory.mktemp(f"straight{accumulate}")
            run(compose_train([*GAME, "trainer.max_epochs=3",
                               f"task.accumulate_grad_batches={accumulate}"], out, data_dir))
            done[accumulate] = _weights(out / "checkpoints" / "last.ckpt")
            shutil.rmtree(out)  # 400 MB of checkpoints; the weights are kept
        return done[accumulate]

    return weights


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_resume_with_workers_at_an_epoch_boundary_is_bit_exact(tmp_path, data_dir, straight):
    """Before the fix, the loader's workers drew the resumed epoch's windows as epoch 0's
    (the iterator is built before Lightning sets the sampler's epoch)."""
    run(compose_train([*GAME, "trainer.max_epochs=2"], tmp_path, data_dir))
    first = _weights(tmp_path / "checkpoints" / "last.ckpt")
    run(compose_train([*GAME, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path, data_dir))
    _assert_same(straight(), _weights(tmp_path / "checkpoints" / "last.ckpt"))
    assert not all(torch.equal(first[k], straight()[k]) for k in first)  # it did train on
    with open(tmp_path / "csv" / "metrics.csv", newline="") as fh:  # both legs' rows kept
        epochs = {float(r["epoch"]) for r in csv.DictReader(fh) if r.get("epoch")}
    assert epochs == {0.0, 1.0, 2.0}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "accumulate", "epoch", "step"), [
    (signal.SIGTERM, 1, 1, 7),  # stops after batch 6, the signal's own: 7 optimizer steps
    # batch 6 opens a window of 2 that ends epoch 1: the epoch ends (validation,
    # schedulers), and the stop comes after epoch 2's first step (batches 8-9)
    (signal.SIGINT, 2, 2, 5),
])
def test_a_signal_inside_an_epoch_saves_exits_128_plus_n_and_resumes_exactly(
        tmp_path, data_dir, straight, capsys, signum, accumulate, epoch, step):
    # the signal arrives as batch 6 starts (epoch 1's third)
    game = [*GAME, "trainer.max_epochs=3", f"task.accumulate_grad_batches={accumulate}"]
    signalled = [*game, "+callbacks.signal._target_=tests.helpers.SignalAt",
                 "+callbacks.signal.step=6", f"+callbacks.signal.signum={int(signum)}"]
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as stop:
        main(compose_train(signalled, tmp_path, data_dir))
    assert stop.value.code == 128 + signum
    last = tmp_path / "checkpoints" / "last.ckpt"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"interrupted by {signal.Signals(signum).name}: saved {last}; resume with "
                   f"the same command and hydra.run.dir={tmp_path} ckpt_path=last")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (epoch, step)
    assert not (tmp_path / "metrics.json").exists()  # not reported as a finished run
    # the handlers are back as they were (a shell ignores SIGINT in background jobs)
    assert {s: signal.getsignal(s) for s in before} == before
    run(compose_train([*game, "ckpt_path=last"], tmp_path, data_dir))
    _assert_same(straight(accumulate), _weights(last))


def test_a_signal_outside_the_training_batches_is_still_an_interruption(monkeypatch):
    """Lightning's own exits for SIGTERM (SystemExit with no code: status 0) and Ctrl-C
    become :class:`RunInterruptedError` once the callback has seen the signal."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sssi.callbacks import Preemption
    from sssi.train import _interruption

    seen = Preemption()
    trainer = SimpleNamespace(callbacks=[seen], checkpoint_callback=None)
    seen.on_exception(trainer, None, SIGTERMException())
    stop = _interruption(trainer, SIGTERMException())
    assert isinstance(stop, RunInterruptedError) and stop.signum == signal.SIGTERM
    assert str(stop) == "interrupted by SIGTERM: no checkpoint saved"
    other = ValueError("a bug")
    assert _interruption(SimpleNamespace(callbacks=[Preemption()]), other) is other


# ----------------------------------------------------------------- disks that refuse


def _failing_save(monkeypatch, fail_on_call: int, code: int) -> list[int]:
    """Checkpoint write ``fail_on_call`` (from 1) meets a disk that refuses it with
    ``code`` after 1,000 bytes, inside torch's own archive writer, as a disk that fills up
    mid-write does."""
    calls = [0]
    save = sssi.checkpoint_io.torch_save

    def filling(obj, fh) -> None:
        calls[0] += 1
        save(obj, FillingFile(fh, 1000, code) if calls[0] == fail_on_call else fh)

    monkeypatch.setattr(sssi.checkpoint_io, "torch_save", filling)
    return calls


@pytest.mark.slow
def test_a_full_disk_under_the_checkpoints_is_one_line_and_keeps_what_was_written(
        tmp_path, data_dir, monkeypatch, capsys):
    calls = _failing_save(monkeypatch, 2, errno.ENOSPC)  # epoch 0: epoch_000, then last
    cfg = compose_train([*GAME, "trainer.max_epochs=1"], tmp_path, data_dir)
    with pytest.raises(SystemExit) as stop:
        main(cfg)
    assert stop.value.code == 1 and calls[0] == 2
    folder = tmp_path / "checkpoints"
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: {folder / 'last.ckpt'}: no space left on device"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_000.ckpt"]  # no half file
    assert torch.load(folder / "epoch_000.ckpt", weights_only=False)["epoch"] == 0


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "no space left on device"),
                                              (errno.EROFS, "read-only file system"),
                                              (errno.EACCES, "permission denied")])
def test_atomic_writer_names_the_file_and_why_a_disk_refused(tmp_path, code, reason):
    target = tmp_path / "sub" / "table.csv"
    with pytest.raises(DataError) as err, atomic_writer(target) as fh:
        fh.write(b"half")
        raise OSError(code, "injected")
    assert str(err.value) == f"{target}: {reason}"
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_writer_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(DataError, match=rf"^{target}: no space left on device$"), \
            atomic_writer(target) as fh:
        fh.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert stale_temporaries(tmp_path) == []
    with pytest.raises(ValueError), atomic_writer(target) as fh:  # other errors pass through
        raise ValueError("a bug")
    assert target.read_text() == "old" and stale_temporaries(tmp_path) == []


def test_a_checkpoint_folder_loses_the_temporaries_of_a_killed_run_only(tmp_path):
    """A temporary whose writer is gone (kill -9 mid-write) is removed; one that a live
    process is writing (another run sharing the folder) is left alone."""
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".last.ckpt.{gone}-abc123.tmp"
    stale.write_bytes(b"\0" * 10)
    live = tmp_path / f".epoch_001.ckpt.{os.getppid()}-def456.tmp"
    live.write_bytes(b"\0" * 10)
    io = sssi.checkpoint_io.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3}, tmp_path / "last.ckpt")
    assert not stale.exists() and live.exists()
    assert torch.load(tmp_path / "last.ckpt", weights_only=False) == {"epoch": 3}


@pytest.mark.slow
def test_a_slurm_requeue_saves_at_a_step_end_requeues_and_resumes_exactly(
        tmp_path, data_dir, straight, monkeypatch, capsys):
    """SLURM's requeue signal (SIGUSR1) reaches Lightning's own handler at the end of
    the optimizer step (hpc_ckpt_1.ckpt, then `scontrol requeue JOB`); the SIGTERM with
    which SLURM then ends the job stops the fit there; the requeued job, run with
    ckpt_path=last, resumes from the newest checkpoint and ends where a straight run does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"  # SLURM ends the requeued job with SIGTERM
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {calls}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    for var, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
                       "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242",
                       "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(var, value)
    run_dir = tmp_path / "run"
    game = [*GAME, "trainer.max_epochs=3"]
    signalled = [*game, "+callbacks.signal._target_=tests.helpers.SignalAt",
                 "+callbacks.signal.step=6", f"+callbacks.signal.signum={int(signal.SIGUSR1)}"]
    with pytest.raises(SystemExit) as stop:
        main(compose_train(signalled, run_dir, data_dir))
    assert stop.value.code == 128 + signal.SIGTERM
    assert calls.read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert hpc["global_step"] == last["global_step"] == 7  # both at the step's end
    run(compose_train([*game, "ckpt_path=last"], run_dir, data_dir))
    _assert_same(straight(1), _weights(run_dir / "checkpoints" / "last.ckpt"))


def test_resuming_from_a_truncated_last_checkpoint_is_one_line(tmp_path, data_dir):
    """A last.ckpt cut short (copied half, or written before checkpoints were atomic)
    stops the resume at once with one line, before any training."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    with pytest.raises(DataError) as err:
        run(compose_train([*GAME, "ckpt_path=last"], tmp_path, data_dir))
    assert str(err.value) == (
        f"ckpt_path={last}: truncated or not a checkpoint; resume from an earlier one in "
        f"{last.parent} (ckpt_path=PATH), or start afresh (ckpt_path=null)")
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
