"""The packaged configs pin the paper's protocols: every schedule number, degradation and switch."""
import pytest

from dlsn.sr.config import ConfigError, apply_overrides, config_from_dict, load_config

X2_HALVINGS = [300_000, 600_000, 900_000, 1_200_000]  # --decay 300-600-900-1200 x 1000 iterations/epoch
FINE_TUNE_HALVINGS = [50_000, 100_000, 150_000]

# name: (scale, iterations, lr, milestones, pretrained, degradation, noise, similarity, local_fusion)
EXPECTED = {
    "dlsn_x2": (2, 1_500_000, 1e-4, X2_HALVINGS, None, "bi", None, "both", True),
    "dlsn_x3": (3, 200_000, 1e-4, FINE_TUNE_HALVINGS, "runs/dlsn_x2/model.pt", "bi", None, "both", True),
    "dlsn_x4": (4, 200_000, 1e-4, FINE_TUNE_HALVINGS, "runs/dlsn_x2/model.pt", "bi", None, "both", True),
    "dlsn_bd_x3": (3, 200_000, 1e-4, FINE_TUNE_HALVINGS, "runs/dlsn_x2/model.pt", "bd", None, "both", True),
    **{f"dlsn_dn_x3_n{n}": (3, 50_000, 1e-4, [], None, "dn", float(n), "both", True) for n in (10, 15, 20, 25)},
    "ablation_x2": (2, 50_000, 1e-4, [], None, "bi", None, "both", True),
    "ablation_no_local_fusion": (2, 50_000, 1e-4, [], None, "bi", None, "both", False),
    "ablation_dot": (2, 50_000, 1e-4, [], None, "bi", None, "dot", True),
    "ablation_learned": (2, 50_000, 1e-4, [], None, "bi", None, "learned", True),
    "ablation_hash_rounds": (2, 50_000, 1e-4, [], None, "bi", None, "both", True),
    "ablation_chunk_size": (2, 50_000, 1e-4, [], None, "bi", None, "both", True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_and_protocol(name):
    scale, iterations, lr, milestones, pretrained, degradation, noise, similarity, local_fusion = EXPECTED[name]
    cfg = load_config(name)
    assert cfg.model.scale == scale
    assert cfg.train.iterations == iterations
    assert cfg.train.lr == lr and cfg.train.gamma == 0.5
    assert cfg.train.milestones == milestones
    assert cfg.train.pretrained == pretrained
    if pretrained:
        assert cfg.train.pretrained_exclude == ["tail.0."]
    assert cfg.data.degradation == degradation
    if noise is not None:
        assert cfg.data.noise_level == noise
    assert cfg.model.similarity == similarity and cfg.model.local_fusion is local_fusion
    # The authors' command line, common to all: published network, LR patch 48, batch 16, Adam, seed 1.
    m = cfg.model
    assert (m.n_resgroups, m.n_resblocks, m.n_feats, m.reduction, m.chunk_size, m.n_hashes, m.res_scale,
            m.rgb_range, m.eval_n_hashes) == (10, 4, 256, 4, 128, 3, 0.1, 1.0, None)
    assert (cfg.data.patch_size, cfg.data.batch_size) == (48, 16)
    assert (cfg.train.betas, cfg.train.eps, cfg.train.seed) == ([0.9, 0.999], 1e-8, 1)
    assert cfg.log.val_every == 1000  # one "epoch" (--test_every 1000): validate and keep the best


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_cites_what_it_reproduces(name):
    from dlsn.sr.config import packaged_config

    header = packaged_config(name).read_text().split("\nmodel:")[0]
    cites = {"dlsn_x2": "--decay 300-600-900-1200", "dlsn_x3": "200 epochs", "dlsn_x4": "200 epochs",
             "dlsn_bd_x3": "Table 4", "ablation_hash_rounds": "Table 2", "ablation_chunk_size": "Fig. 6"}
    expected = cites.get(name, "Table 5" if "_dn_" in name else "Table 1")
    assert expected in header


@pytest.mark.parametrize("override, message", [
    (["model.similarity=cosine"], "model.similarity must be one of .*'cosine'"),
    (["train.milestones=[300000,1600000]"], r"train.milestones \[1600000\] lie outside .*1500000"),
    (["train.iterations=1000", "train.milestones=[300000,600000]"], r"train.milestones \[300000, 600000\] lie outside"),
    (["model.eval_n_hashes=0"], "model.eval_n_hashes must be a positive integer, got 0"),
    (["model.n_hashes=0"], "model.n_hashes must be a positive integer"),
    (["model.local_fusion=maybe"], "model.local_fusion: expected true/false"),
    (["data.noise_level=-1"], "data.noise_level must be >= 0"),
])
def test_bad_ablation_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        apply_overrides(load_config("dlsn_x2"), override)
    assert "\n" not in str(info.value)


def test_a_milestone_at_the_end_is_allowed():
    cfg = config_from_dict({"train": {"iterations": 10, "milestones": [5, 10]}})
    assert cfg.train.milestones == [5, 10]
