"""What the entry points share: known third-party noise is dropped, other warnings stay."""

from __future__ import annotations

import logging
import warnings

from sssi.cli import quiet_noise


def test_known_noise_is_dropped_and_other_warnings_stay(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance("
                      "treespec, TreeSpec) and treespec.is_leaf()` instead.", FutureWarning,
                      stacklevel=2)
        warnings.warn("You have overridden `on_after_batch_transfer` in `LightningModule` "
                      "but have passed in a `LightningDataModule`.", UserWarning, stacklevel=2)
        warnings.warn("The dataloader does not have many workers", UserWarning, stacklevel=2)
    assert [str(w.message) for w in seen] == ["The dataloader does not have many workers"]

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try litlogger")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    quiet_noise()  # idempotent: one filter, however often the entry points call it
    assert len(log.filters) == 1
