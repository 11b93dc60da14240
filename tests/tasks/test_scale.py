"""Scaling: global batch and lr rule, the game's gradient accumulation, torch.compile,
SLURM trainer and sweep launcher configs. (bf16 and CPU DDP runs: tests/tasks/test_pretrain.py.)"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from sssi.errors import ConfigError
from sssi.game.schedule import step_seed
from sssi.scaling import (
    BatchPlan,
    compile_options,
    global_batch_size,
    is_compiled,
    lr_scale_factor,
    per_device_batch_size,
)
from sssi.train import connect, run
from tests.helpers import compose_train, poison_reconstruction_loss


class TinyEncoder(nn.Module):
    """Four stride-2 conv layers (8-16 channels, reduction 16): the game's players in
    kilobytes, so that whole fits and resumes take seconds on two CPU cores."""

    def __init__(self, in_channels: int = 3, **_: object) -> None:
        super().__init__()
        widths = [8, 16, 16, 16]
        self.out_channels, self.reductions = widths, [2, 4, 8, 16]
        self.stages = nn.ModuleList()
        for w in widths:
            self.stages.append(nn.Sequential(nn.Conv2d(in_channels, w, 3, 2, 1, bias=False),
                                             nn.BatchNorm2d(w), nn.ReLU()))
            in_channels = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


# the demo game, tiny: tiny players, 3 tiles of 256 px, 64 px crops, 4 batches of 4 per
# epoch, no validation; 1 warm-up epoch, then 1 instructor epoch, then 1 inpainter epoch
TINY = f"{__name__}.TinyEncoder"
GAME = [
    "+experiment=demo_pretrain", "data.synthetic.size=256", "data.synthetic.tiles=3",
    "data.batch_size=4", "data.samples_per_epoch=16", "data.num_workers=0",
    "+trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "logger=csv",
    "trainer.enable_progress_bar=false", "task.image_every_n_steps=0",
    f"backbone._target_={TINY}", f"mask_policy.instructor.backbone._target_={TINY}",
    "task.decoder_channels=[16,8]", "task.schedule.warmup_epochs=1",
    "task.schedule.instructor_epochs=1", "task.schedule.inpainter_epochs=1",
    "task.inpainter_scheduler.milestones=[1]",
]


_compose = compose_train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)


# ----------------------------------------------------------------------- the rule


def test_global_batch_and_lr_scale_rule():
    assert global_batch_size(16, world_size=4, accumulation=2) == 128
    assert per_device_batch_size(512, world_size=8, accumulation=2) == 32
    with pytest.raises(ConfigError, match=r"data.global_batch_size=100 .* 8: use a multiple"):
        per_device_batch_size(100, world_size=4, accumulation=2)
    with pytest.raises(ConfigError, match=r"data.global_batch_size"):
        per_device_batch_size(2, world_size=4)
    assert lr_scale_factor(1024, 128) == 8.0
    assert lr_scale_factor(64, 128) == 0.5
    assert math.isclose(lr_scale_factor(1024, 128, "sqrt"), math.sqrt(8))
    with pytest.raises(ConfigError, match=r"task.scale_lr.base_batch_size"):
        lr_scale_factor(64, 0)
    with pytest.raises(ConfigError, match=r"task.scale_lr.rule"):
        lr_scale_factor(64, 16, "cubic")
    assert compile_options(False) is None and compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(ConfigError, match=r"task.compile"):
        compile_options({"modee": "x"})


def test_micro_batches_of_a_step_draw_different_masks():
    assert step_seed(3, 17) == 3 * 1_000_003 + 17  # unchanged without accumulation
    seeds = {step_seed(s, t, m) for s in range(3) for t in range(50) for m in range(4)}
    assert len(seeds) == 3 * 50 * 4


def test_scale_lr_multiplies_both_players_rates_by_global_over_base(caplog):
    cfg = _compose(["+experiment=demo_pretrain", "task.accumulate_grad_batches=2",
                    "task.scale_lr.enabled=true", "task.scale_lr.base_batch_size=32",
                    "data.batch_size=8"])
    task = instantiate(cfg.task)
    with pytest.raises(ConfigError, match=r"task.scale_lr.enabled=true needs the run's batch"):
        task.configure_optimizers()  # no plan: one clear error, not a silent factor 1
    # the plan sssi.train makes: the task's accumulation (2), not the trainer's (1)
    trainer = SimpleNamespace(world_size=4, accumulate_grad_batches=1)
    task.batch_plan = connect(instantiate(cfg.data), task, trainer)
    assert task.batch_plan == BatchPlan(per_device=8, world_size=4, accumulation=2)
    with caplog.at_level(logging.INFO, logger="sssi.scaling"):
        (inp, ins), (sched,) = task.configure_optimizers()
    # global batch 8 x 4 devices x 2 = 64, base 32: rates x 2
    assert inp.param_groups[0]["lr"] == pytest.approx(cfg.task.inpainter_optimizer.lr * 2)
    assert ins.param_groups[0]["lr"] == pytest.approx(cfg.mask_policy.instructor.optimizer.lr * 2)
    assert sched.base_lrs == [pytest.approx(cfg.task.inpainter_optimizer.lr * 2)]
    assert "global batch 64 = 8 per device x 4 devices x 2 accumulation" in caplog.text
    with pytest.raises(ConfigError, match=r"set task.accumulate_grad_batches=3 instead"):
        connect(instantiate(cfg.data), task,
                     SimpleNamespace(world_size=1, accumulate_grad_batches=3))

    seg_cfg = _compose(["task.scale_lr.enabled=true", "task.scale_lr.base_batch_size=16",
                        "task.scale_lr.rule=sqrt", "data.batch_size=4"])
    seg = instantiate(seg_cfg.task)
    # segmentation accumulates with Lightning: the trainer's count is the plan's
    seg.batch_plan = connect(instantiate(seg_cfg.data), seg,
                                  SimpleNamespace(world_size=4, accumulate_grad_batches=4))
    assert seg.batch_plan.global_batch == 64
    opt = seg.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["lr"] == pytest.approx(seg_cfg.task.optimizer.lr * 2)


def test_global_batch_size_sets_the_per_device_batch():
    cfg = _compose(["++data.global_batch_size=64"])
    dm = instantiate(cfg.data)
    plan = dm.plan_batches(world_size=4, accumulation=2)
    assert plan == BatchPlan(8, 4, 2) and plan.global_batch == 64
    assert dm.loading.batch_size == dm.loading.eval_batch == 8
    assert dm.plan_batches(world_size=2, accumulation=8).per_device == 4
    with pytest.raises(ConfigError, match=r"data.global_batch_size=64 is not divisible by"):
        dm.plan_batches(world_size=3, accumulation=1)
    # without a global batch the per-device batch is data.batch_size whatever the world
    dm = instantiate(_compose(["data.batch_size=5"]).data)
    assert dm.plan_batches(world_size=8, accumulation=2) == BatchPlan(5, 8, 2)


# ------------------------------------------------------------ the game's accumulation


def test_trainer_accumulation_on_the_game_is_one_error_naming_the_task_key(tmp_path,
                                                                         data_dir):
    cfg = _compose([*GAME, "trainer.accumulate_grad_batches=2"], tmp_path / "run", data_dir)
    with pytest.raises(ConfigError, match=r"set task.accumulate_grad_batches=2 instead"):
        run(cfg)


def test_game_accumulation_steps_every_k_batches_and_resumes_exactly(tmp_path, data_dir,
                                                                     monkeypatch):
    from sssi.game.masking import RandomBlocks

    masks: list[torch.Tensor] = []
    real_forward = RandomBlocks.forward

    def recording(self, images, generator=None):
        out = real_forward(self, images, generator=generator)
        masks.append(out.clone())
        return out

    monkeypatch.setattr(RandomBlocks, "forward", recording)
    acc = ["task.accumulate_grad_batches=2"]
    # 2 epochs (warm-up, then the instructor) of 4 micro-batches: 4 optimizer steps
    run(_compose([*GAME, *acc, "trainer.max_epochs=2"], tmp_path / "a", data_dir))
    a = _ckpt(tmp_path / "a")
    assert a["global_step"] == 4 and a["game"]["phase"] == "instructor"
    # micro-batches 0 and 1 of the first step: same step, different holes
    assert len(masks) >= 4 and not torch.equal(masks[0], masks[1])
    # stop after the warm-up epoch, resume for the instructor epoch
    run(_compose([*GAME, *acc, "trainer.max_epochs=1"], tmp_path / "b", data_dir))
    assert _ckpt(tmp_path / "b")["global_step"] == 2
    run(_compose([*GAME, *acc, "trainer.max_epochs=2",
                  f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"],
                 tmp_path / "c", data_dir))
    c = _ckpt(tmp_path / "c")
    assert c["global_step"] == 4
    assert any(k.startswith("game.instructor.") for k in a["state_dict"])
    for k, v in a["state_dict"].items():
        assert torch.equal(v, c["state_dict"][k]), k


def test_nan_watch_reports_the_optimizer_step_under_accumulation(tmp_path, data_dir,
                                                                 monkeypatch):
    from sssi.tasks.pretrain import TrainingDivergedError

    poison_reconstruction_loss(monkeypatch, 3)  # step 1, micro-batch 0
    cfg = _compose([*GAME, "task.accumulate_grad_batches=2", "trainer.max_epochs=1"],
                   tmp_path / "run", data_dir)
    with pytest.raises(TrainingDivergedError, match=r"inpainter's loss is NaN .* step 1 "):
        run(cfg)


# ---------------------------------------------------------------------------- compile


def test_compiled_game_trains_and_keeps_plain_checkpoint_keys(tmp_path, data_dir):
    torch._dynamo.reset()
    cfg = _compose([*GAME, "trainer.max_steps=2", "task.compile={backend: eager}"],
                   tmp_path / "run", data_dir)
    run(cfg)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    ckpt = _ckpt(tmp_path / "run")
    assert ckpt["global_step"] == 2
    plain = instantiate(_compose([*GAME, "task.compile=false"]).task)
    assert list(ckpt["state_dict"]) == list(plain.state_dict())  # no _orig_mod. prefixes
    plain.load_state_dict(ckpt["state_dict"])  # strict: loads with compile off


def test_segment_task_compiles_its_model_in_place():
    cfg = _compose(["task.compile={backend: eager, dynamic: false}"])
    task = instantiate(cfg.task)
    keys = list(task.state_dict())
    task._trainer = SimpleNamespace(datamodule=None)
    task.setup("fit")
    assert is_compiled(task.model)
    assert list(task.state_dict()) == keys
    with pytest.raises(InstantiationException, match=r"task\.compile='fast'"):
        instantiate(_compose(["task.compile=fast"]).task)


# ------------------------------------------------------------------------------ SLURM


def test_slurm_trainer_takes_nodes_and_devices_from_the_job(monkeypatch):
    env = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2",
           "SLURM_JOB_NAME": "sssi", "SLURM_JOB_ID": "1234", "SLURM_PROCID": "5",
           "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[01-02]"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = _compose(["trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
                    "trainer.sync_batchnorm=false"])
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.utilities import rank_zero_only

    # a Trainer sets the process-wide rank (5 here): restore it, or later tests stop
    # writing the files that only rank 0 writes
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    trainer = instantiate(cfg.trainer, default_root_dir=os.fspath(Path.cwd()))
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment) and cluster.auto_requeue
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank) == (8, 5, 1)


def test_the_game_gets_the_ddp_strategy_that_finds_unused_parameters():
    """Each step of the game trains one player: sssi.train gives it Lightning's DDP
    variant that finds unused parameters; a DDP model without it is refused at fit start."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    from sssi.train import strategy_for

    game = instantiate(_compose(GAME).task)
    assert strategy_for(game, "ddp") == "ddp_find_unused_parameters_true"
    assert strategy_for(game, "ddp_spawn") == "ddp_spawn_find_unused_parameters_true"
    assert strategy_for(game, "auto") == "auto" and strategy_for(game, None) is None
    custom = DDPStrategy(find_unused_parameters=True)
    assert strategy_for(game, custom) is custom
    no_instructor = [o for o in GAME if not o.startswith("mask_policy.instructor")]
    blocks = instantiate(_compose([*no_instructor, "mask_policy=random_blocks"]).task)
    segment = instantiate(_compose([]).task)
    assert strategy_for(blocks, "ddp") == "ddp" and strategy_for(segment, "ddp") == "ddp"

    wrapped = DistributedDataParallel.__new__(DistributedDataParallel)  # no process group
    wrapped.__dict__["find_unused_parameters"] = False
    game._trainer = SimpleNamespace(strategy=SimpleNamespace(model=wrapped))
    with pytest.raises(ConfigError, match=r"ddp_find_unused_parameters_true"):
        game.on_fit_start()
    wrapped.__dict__["find_unused_parameters"] = True
    game.on_fit_start()


def test_slurm_sweep_launcher_asks_for_the_trainers_nodes_and_gpus(tmp_path, monkeypatch):
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose(["hydra/launcher=slurm", "+experiment=potsdam_finetune",
                    "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], hydra_node=True)
    assert cfg.hydra.launcher._target_ == \
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node,
            cfg.hydra.launcher.gpus_per_node) == (2, 4, 4)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    seen = {}

    def no_submit(executor, fn, *args):  # stop before sbatch; keep what would be sent
        seen["script"] = executor._executor._make_submission_file_text("CMD", "0")
        seen["jobs"] = len(args[0])
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", no_submit)
    launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    script = seen["script"]
    assert seen["jobs"] == 2
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                 f"--output={tmp_path / 'sweep'}/.submitit/%j"):
        assert f"#SBATCH {line}" in script, line


def test_precision_auto_takes_bf16_only_where_the_hardware_runs_it_fast(caplog):
    """``trainer.precision=auto``: bf16 on a CPU with AMX (its flag in /proc/cpuinfo) or a
    bf16 GPU, fp32 on other CPUs (bf16 there is slower than fp32); the choice is logged."""
    from sssi.scaling import auto_precision, cpu_has_bf16_units
    from sssi.train import trainer_overrides

    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    epyc = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert cpu_has_bf16_units(amx) and not cpu_has_bf16_units(epyc)
    assert not cpu_has_bf16_units("flags\t: avx512_bf16\n")  # bf16 vector ops only: no AMX
    assert auto_precision("cpu", cpuinfo=amx)[0] == "bf16-mixed"
    assert auto_precision("cpu", cpuinfo=epyc) == \
        ("32-true", "CPU without bf16 matrix units (no amx_bf16 flag)")
    assert auto_precision("gpu", cuda_bf16=True)[0] == "bf16-mixed"
    assert auto_precision("gpu", cuda_bf16=False)[0] == "32-true"
    cfg = _compose(["trainer.precision=auto"])
    with caplog.at_level(logging.INFO, logger="sssi.train"):
        chosen = trainer_overrides(cfg, instantiate(cfg.task))["precision"]
    assert chosen == auto_precision("cpu")[0]  # this machine's answer, logged
    assert f"trainer.precision=auto -> {chosen}" in caplog.text
    assert "precision" not in trainer_overrides(_compose([]), instantiate(cfg.task))
