"""collate_windows: the same batches as PyTorch's collation, one shared block per batch."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from sssi.data.collate import collate_windows


class Windows(Dataset):
    """Samples shaped like the training windows: bytes, labels, parameters, tile ids."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g),
            "label": torch.randint(0, 6, (8, 8), dtype=torch.uint8, generator=g),
            "tile": f"t{i % 3}",
            "window": torch.tensor([i, 2 * i, 8, 8]),
            "augment": torch.rand(7, generator=g),
        }


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if torch.is_tensor(b[key]):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_main_process_batch_equals_default_collate():
    samples = [Windows()[i] for i in range(4)]
    batch = collate_windows(samples)
    assert isinstance(batch, dict)
    _same(batch, default_collate(samples))


def test_worker_batches_equal_default_collate_and_share_one_block():
    ds = Windows()
    ours = list(DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_windows))
    ref = list(DataLoader(ds, batch_size=4, num_workers=0))
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref, strict=True):
        assert isinstance(a, dict)  # unpacked on arrival
        _same(a, b)
        blocks = {a[k].untyped_storage().data_ptr() for k in ("image", "label", "window",
                                                              "augment")}
        assert len(blocks) == 1


def test_windows_of_different_sizes_name_the_key():
    samples = [Windows()[0], {**Windows()[1], "label": torch.zeros(4, 4, dtype=torch.uint8)}]
    with pytest.raises(ValueError, match="'label' has different shapes"):
        collate_windows(samples)


def _epochs(loader: DataLoader, n: int):
    for _ in range(n):
        yield from loader


def test_workers_recycle_blocks_only_after_the_batches_are_gone():
    from sssi.data import collate

    ds = Windows()
    ref = list(DataLoader(ds, batch_size=2, num_workers=0))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,
                        collate_fn=collate_windows)
    before, watched = dict(collate.stats), collate.release_unused()  # other tests' batches
    held = list(loader)  # epoch 1: every batch kept
    for i, batch in enumerate(_epochs(loader, 4)):  # epochs 2-5: each batch dropped
        _same(batch, ref[i % len(ref)])
    assert collate.stats["recycled"] > before["recycled"]  # blocks were reused ...
    for a, b in zip(held, ref, strict=True):  # ... but never one still in use
        _same(a, b)
    del held, batch, a
    assert collate.release_unused() <= watched  # this test's blocks are all let go


def test_a_pooled_block_crosses_once_and_goes_with_its_worker():
    """Later batches of a pooled block name its slot instead of handing the block over
    again; the main process forgets the blocks of workers that have exited."""
    from sssi.data import collate

    ds = Windows()
    ref = list(DataLoader(ds, batch_size=2, num_workers=0))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,
                        collate_fn=collate_windows)
    before = dict(collate.stats)
    batches = 0
    for i, batch in enumerate(_epochs(loader, 4)):  # each batch dropped: its block reused
        _same(batch, ref[i % len(ref)])
        batches += 1
    pids = {w.pid for w in loader._iterator._workers}
    mapped = [key for key in collate._blocks if key[0] in pids]
    assert collate.stats["mapped"] - before["mapped"] == len(mapped) < batches
    del loader, batch
    gc.collect()  # the workers exit with their loader
    _same(next(iter(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_windows))),
          ref[0])
    assert not any(key[0] in pids for key in collate._blocks)


def test_a_batch_read_in_one_go_that_no_one_takes_gives_its_block_back(monkeypatch):
    """In a worker a WindowBatch holds a pooled block; collate_windows ships it, any
    other collation copies the rows and the block goes back to the pool."""
    from sssi.data import collate

    monkeypatch.setattr(collate, "get_worker_info", lambda: object())  # as in a worker
    monkeypatch.setattr(collate, "_pool", None)
    specs = [("image", collate.TensorSpec(torch.uint8, (2, 3, 4, 4))), ("tile", ["a", "b"])]
    batch = collate.WindowBatch(collate.BatchRoom(specs), 2)
    batch.room.batch["image"][1] = 7
    pool = collate._pool
    assert pool.flags[0] == collate._BUSY
    rows = default_collate(list(batch))  # PyTorch's collation sees the samples
    assert rows["tile"] == ["a", "b"] and rows["image"][1].eq(7).all()
    assert not rows["image"][0].eq(7).any()
    del batch
    gc.collect()
    assert pool.flags[0] == collate._FREE
    taken = collate.WindowBatch(collate.BatchRoom(specs), 2)
    packed = collate_windows(taken)
    assert isinstance(packed, collate.PackedBatch) and packed.slot == 0
    del taken
    gc.collect()
    assert pool.flags[0] == collate._BUSY  # shipped: the main process frees it
