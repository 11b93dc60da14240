"""The game's settings are checked before anything runs, and errors name the key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sssi.errors import ConfigError
from sssi.game.config import check_mask_policy, check_window_sides
from tests.helpers import compose_train


def test_mask_policy_node_is_checked_and_names_the_key():
    game = check_mask_policy(compose_train(["+experiment=demo_pretrain"]).task.mask_policy)
    full = game["instructor"]
    assert full["enabled"] and full["random"]["block_size"] == 8  # the demo game's own holes
    random = {"_target_": "sssi.game.masking.RandomBlocks", "ratio": 0.25}
    # no instructor: null, or switched off (game settings an experiment gave are ignored)
    for off in (None, {"enabled": False, "reward": "relative", "optimizer": {"lr": 1.0}}):
        assert check_mask_policy({"random": random, "instructor": off}) == {
            "random": random, "instructor": None}
    minimal = {k: full[k] for k in ("network", "backbone", "optimizer")}
    filled = check_mask_policy({"random": random, "instructor": minimal})["instructor"]
    assert filled["reward"] == "raw" and filled["kl_weight"] == 1e-6 and filled["random"] is None
    assert filled["random_share"] == 0.0  # the paper: only the instructor's holes
    bad = [
        ({"_target_": "sssi.game.instructor.Instructor", "_partial_": True},
         r"^mask_policy=.*expected \{random"),  # the layout before the instructor node
        ({"random": random, "ratio": 0.5}, r"mask_policy has unknown keys \['ratio'\]"),
        ({"random": {"ratio": 0.25}}, r"mask_policy\.random=.*_target_"),
        ({"random": random, "instructor": {"network": {}, "backbone": {}}},
         r"mask_policy\.instructor\.optimizer=None: required"),
        ({"random": random, "instructor": {**full, "kl": 1}},
         r"mask_policy\.instructor has unknown keys \['kl'\]"),
        ({"random": random, "instructor": {**full, "network": {"latent": 8}}},
         r"mask_policy\.instructor\.network has unknown keys \['latent'\]"),
        ({"random": random, "instructor": {**full, "reward": "bogus"}},
         r"mask_policy\.instructor\.reward='bogus'"),
        ({"random": random, "instructor": {**full, "random": {"block_size": 8}}},
         r"mask_policy\.instructor\.random=.*_target_"),
        ({"random": random, "instructor": {**full, "random_share": 1.5}},
         r"mask_policy\.instructor\.random_share=1\.5: expected a share in \[0, 1\]"),
        ({"random": random, "instructor": {**full, "random_share": "half"}},
         r"mask_policy\.instructor\.random_share='half'"),
    ]
    for node, match in bad:
        with pytest.raises(ConfigError, match=match):
            check_mask_policy(node)


def test_window_sides_must_be_multiples_of_what_the_networks_need():
    check_window_sides(SimpleNamespace(crop_size=96, val_window=64), 32)
    check_window_sides(SimpleNamespace(crop_size=96, val_window=None), 32)
    with pytest.raises(ConfigError, match=r"data.crop_size=72: .* multiples of 32; use 64 or 96"):
        check_window_sides(SimpleNamespace(crop_size=72, val_window=64), 32)
    with pytest.raises(ConfigError, match=r"data.val_window=20: .* use 32$"):
        check_window_sides(SimpleNamespace(crop_size=64, val_window=20), 32)
