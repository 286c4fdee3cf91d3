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
    # without a window, sinks and fa_decode need sliding layers of the model's own: this one has none
    (dict(sinks=4), "sinks"),
    (dict(fa_decode=True), "fa_decode"),
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


GEMMA_LIKE = (4, 4, None, 4, 4, None)  # a model's own windows: two full layers (2 and 5)


def test_native_sliding_layers_keep_their_window_and_ring():
    specs = SWAAConfig().layer_specs(6, max_len=100, native=GEMMA_LIKE)
    assert [(s.kind, s.window, s.sinks) for s in specs] == [
        (AttentionKind.SLIDING_RING, 4, 0)] * 2 + [(AttentionKind.FULL, None, 0)] + [(AttentionKind.SLIDING_RING, 4, 0)] * 2 + [
        (AttentionKind.FULL, None, 0)]
    assert SWAAConfig().is_full and SWAAConfig().describe() == "full attention"


def test_swaa_knobs_on_top_of_native_windows():
    # window slides the full layers; sinks and fa_decode reach the native sliding layers too
    specs = SWAAConfig(window=16, sinks=2, fa_decode=[0, 2]).layer_specs(6, native=GEMMA_LIKE)
    assert [(s.kind, s.window, s.sinks) for s in specs] == [
        (AttentionKind.SLIDING_FA_DECODE, 4, 2), (AttentionKind.SLIDING_RING, 4, 2), (AttentionKind.SLIDING_FA_DECODE, 16, 2),
        (AttentionKind.SLIDING_RING, 4, 2), (AttentionKind.SLIDING_RING, 4, 2), (AttentionKind.SLIDING_RING, 16, 2)]
    assert specs[1].ring_slots == 6 and specs[5].ring_slots == 18
    # fa_layers keeps some of the model's full layers full
    specs = SWAAConfig(window=16, fa_layers=[5]).layer_specs(6, native=GEMMA_LIKE)
    assert specs[2].window == 16 and specs[5].kind is AttentionKind.FULL
    # without a window: sinks/fa_decode on the native layers only, full layers stay full
    specs = SWAAConfig(sinks=3, fa_decode=True).layer_specs(6, native=GEMMA_LIKE)
    assert [s.kind for s in specs] == [AttentionKind.SLIDING_FA_DECODE] * 2 + [AttentionKind.FULL] + [
        AttentionKind.SLIDING_FA_DECODE] * 2 + [AttentionKind.FULL]
    assert {s.sinks for s in specs if s.window} == {3}
    assert not SWAAConfig(sinks=3).is_full and "sinks=3" in SWAAConfig(sinks=3).describe()


@pytest.mark.parametrize("kwargs,native,field", [
    (dict(window=16, fa_layers=[0]), GEMMA_LIKE, "fa_layers"),  # a native sliding layer cannot be made full
    (dict(window=16, fa_layers="odd"), GEMMA_LIKE, "fa_layers"),
    (dict(window=16), (8,) * 6, "window"),  # every layer slides already (Mistral): nothing for a window to slide
    (dict(), (8,) * 5, "native"),  # one window per layer
    (dict(), (8, 0, None, 8, 8, 8), "native"),
])
def test_native_windows_are_never_silently_changed(kwargs, native, field):
    with pytest.raises(ConfigError) as e:
        SWAAConfig(**kwargs).layer_specs(6, native=native)
    assert e.value.field == field
