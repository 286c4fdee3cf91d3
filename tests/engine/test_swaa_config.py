import pytest

from swaa_engine.errors import ConfigError
from swaa_engine.swaa import (
    AttentionKind, CacheKind, SWAAConfig, canonical_configs, parse_layer_pattern,
)


def kinds(cfg, n=8):
    return [s.kind for s in cfg.layer_specs(n)]


def test_full_attention_default():
    assert kinds(SWAAConfig()) == [AttentionKind.FULL] * 8


def test_ring_vs_fa_decode_vs_full_layers():
    cfg = SWAAConfig(window=32, sinks=4, fa_decode=[0, 2], fa_layers="every:4")  # full at 1, 5
    k = kinds(cfg)
    assert k[1] is k[5] is AttentionKind.FULL
    assert k[0] is k[2] is AttentionKind.SLIDING_FA_DECODE
    assert {k[3], k[4], k[6], k[7]} == {AttentionKind.SLIDING_RING}
    specs = cfg.layer_specs(8)
    assert [s.cache_kind for s in specs].count(CacheKind.RING) == 4
    assert specs[3].ring_slots == 36


@pytest.mark.parametrize("pattern,expected", [
    ("odd", {1, 3, 5, 7}), ("even", {0, 2, 4, 6}), ("every:4", {1, 5}), ("every:4:0", {0, 4}),
    ("every:8:1", {1}), ("2,3", {2, 3}), ("all", set(range(8))), ("none", set()), ([0, 7], {0, 7}),
])
def test_layer_patterns(pattern, expected):
    assert parse_layer_pattern(pattern, 8, "fa_layers") == expected


@pytest.mark.parametrize("kwargs,field", [
    (dict(window=0), "window"),
    (dict(window=-3), "window"),
    (dict(window=8, sinks=-1), "sinks"),
    (dict(sinks=4), "sinks"),
    (dict(fa_decode=True), "fa_decode"),
    (dict(fa_layers="odd"), "fa_layers"),
    (dict(window=True), "window"),
])
def test_invalid_knobs_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        SWAAConfig(**kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("kwargs,field", [
    (dict(window=8, fa_layers=[8]), "fa_layers"),
    (dict(window=8, fa_decode=[-1]), "fa_decode"),
    (dict(window=8, fa_layers="every:0"), "fa_layers"),
    (dict(window=8, fa_layers="sometimes"), "fa_layers"),
])
def test_layer_ids_checked_against_the_model(kwargs, field):
    with pytest.raises(ConfigError) as e:
        SWAAConfig(**kwargs).layer_specs(8)
    assert e.value.field == field


def test_config_is_frozen_and_round_trips():
    cfg = SWAAConfig(window=16, sinks=2, fa_decode=True, fa_layers="odd")
    with pytest.raises(Exception):
        cfg.window = 3
    assert SWAAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        SWAAConfig.from_dict({"windw": 3})


def test_canonical_configs_cover_the_paper_six():
    c = canonical_configs(64, 4)
    assert len(c) == 6 and c["fa"].is_full
    assert kinds(c["swa+sinks+half_fa"], 4) == [AttentionKind.SLIDING_RING, AttentionKind.FULL] * 2


def test_reference_mask_is_sliding_visible_pair_by_pair():
    from swaa_engine.reference import explicit_mask
    from swaa_engine.swaa import AttentionKind, sliding_visible

    L, P, W, S = 40, 25, 7, 3
    for kind in AttentionKind:
        m = explicit_mask(kind, L, P, W, S)
        for i in range(L):
            full = kind is AttentionKind.FULL or (kind is AttentionKind.SLIDING_FA_DECODE and i >= P)
            for j in range(L):
                assert bool(m[i, j]) == (j <= i if full else sliding_visible(i, j, W, S)), (kind, i, j)


def test_fa_tail_needs_fa_decode():
    from swaa_engine.swaa import SWAAConfig

    with pytest.raises(ConfigError) as e:
        SWAAConfig(window=8, fa_tail=4)
    assert e.value.field == "fa_tail"
    assert "fa_tail=4" in SWAAConfig(window=8, fa_decode=True, fa_tail=4).describe()
