import pytest
import torch
import yaml

from supernet.arch import PRESETS, ArchSpec, SpecError, StageSpec, efficientformer_spec, resolve_arch


def _spec(blocks, widths=(16, 32, 48, 64), **kw):
    return ArchSpec(stages=tuple(StageSpec(w, tuple(b)) for w, b in zip(widths, blocks)), **kw)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_timm_tables(name):
    from timm.models.efficientformer import EfficientFormer_depth, EfficientFormer_width

    spec = PRESETS[name]
    assert spec.depths == EfficientFormer_depth[name]
    assert spec.widths == EfficientFormer_width[name]
    assert spec.num_3d == (0, 0, 0, {"l1": 1, "l3": 4, "l7": 8}[name])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_round_trip_presets(name, tmp_path):
    spec = PRESETS[name]
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec
    spec.save(tmp_path / "a.yaml", extra={"predicted_ms": 1.5})
    assert ArchSpec.load(tmp_path / "a.yaml") == spec
    assert yaml.safe_load((tmp_path / "a.yaml").read_text())["meta"] == {"predicted_ms": 1.5}
    assert resolve_arch(tmp_path / "a.yaml") == spec


def test_yaml_round_trip_keeps_every_field(tiny_spec):
    spec = tiny_spec.replace(mlp_ratio=3.0, pool_size=5, drop_path_rate=0.1, layer_scale_init=1e-6, stem_width=12)
    back = ArchSpec.from_yaml(spec.to_yaml())
    assert back == spec
    assert back.attention.key_dim == 8 and back.stem_width == 12 and back.stages[2].blocks == ("4d", "3d")


@pytest.mark.parametrize(
    "blocks, kw, field",
    [
        ((["4d"], ["4d"], ["3d", "4d"], ["4d"]), {}, "stages[2].blocks"),  # MB3D not a suffix
        ((["3d"], ["4d"], ["4d"], ["4d"]), {}, "stages[0].blocks"),  # MB3D in stage 1
        ((["4d"], ["4d", "3d"], ["4d"], ["4d"]), {}, "stages[1].blocks"),  # MB3D in stage 2
        (([], [], [], []), {}, "empty"),
        ((["4d"], ["4d"], ["4d"], ["5d"]), {}, "stages[3].blocks"),
        ((["4d"], ["4d"], ["4d"], ["4d"]), {"input_size": 48}, "input_size"),
        ((["4d"], ["4d"], ["4d"], ["4d"]), {"mlp_ratio": 0}, "mlp_ratio"),
        # finite as a Python float, but it overflows the float32 LayerScale weights it fills (found by hypothesis)
        ((["4d"], ["4d"], ["4d"], ["4d"]), {"layer_scale_init": 3.402823466385289e38}, "layer_scale_init"),
    ],
)
def test_validate_names_the_field(blocks, kw, field):
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        _spec(blocks, **kw).validate()


def test_validate_rejects_non_positive_width():
    with pytest.raises(SpecError, match=r"stages\[1\].width"):
        _spec((["4d"], ["4d"], ["4d"], ["4d"]), widths=(16, 0, 48, 64)).validate()


def test_validate_rejects_wrong_stage_count():
    with pytest.raises(SpecError, match="expected 4 stages"):
        ArchSpec(stages=(StageSpec(16, ("4d",)),)).validate()


def test_empty_stage_is_allowed():
    spec = _spec(([], ["4d"], ["4d"], ["4d", "3d"])).validate()
    assert spec.depths == (0, 1, 1, 2)


@pytest.mark.parametrize(
    "text, match",
    [
        ("stages: [", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("input_size: 64\n", "stages: missing"),
        ("stages: []\nwidht: 3\n", "unknown key"),
        ("stages:\n- {width: 16, blocks: [4d], depth: 3}\n", r"stages\[0\]: unknown key"),
        ("stages:\n- {width: sixteen, blocks: [4d]}\n", r"stages\[0\].width"),
        ("stages: [{width: 16}]\nattention: {heads: 2}\n", "attention: unknown key"),
    ],
)
def test_malformed_yaml_is_a_spec_error(text, match):
    with pytest.raises(SpecError, match=match):
        ArchSpec.from_yaml(text)


def test_timm_kwargs():
    kw = PRESETS["l3"].to_timm_kwargs()
    assert kw["depths"] == (4, 4, 12, 6) and kw["embed_dims"] == (64, 128, 320, 512) and kw["num_vit"] == 4
    spec_3d_in_stage3 = _spec((["4d"], ["4d"], ["4d", "3d"], ["3d"]))
    assert spec_3d_in_stage3.timm_incompatibility() == "MB3D blocks outside the last stage"
    with pytest.raises(SpecError, match="not timm-compatible"):
        spec_3d_in_stage3.to_timm_kwargs()
    assert _spec((["4d"], ["4d"], ["4d"], ["4d"])).timm_incompatibility() is not None


def test_efficientformer_spec_builder():
    spec = efficientformer_spec((1, 1, 2, 3), (16, 32, 48, 64), num_vit=3)
    assert spec.stages[3].blocks == ("3d", "3d", "3d") and spec.stem_width == 8


def test_resolve_arch_unknown():
    with pytest.raises(SpecError, match="neither a preset"):
        resolve_arch("l9")
    with pytest.raises(SpecError, match="not found"):
        resolve_arch("missing/arch.yaml")


# ------------------------------------------------------------------------------ arch YAML, property-based
def _base_spec_dict() -> dict:
    return {
        "stages": [
            {"width": 16, "blocks": ["4d"]},
            {"width": 16, "blocks": []},
            {"width": 32, "blocks": ["4d", "3d"]},
            {"width": 32, "blocks": ["3d"]},
        ],
        "input_size": 32,
        "in_chans": 3,
        "num_classes": 10,
        "mlp_ratio": 2.0,
        "pool_size": 3,
        "attention": {"key_dim": 8, "num_heads": 2, "attn_ratio": 2.0},
        "drop_path_rate": 0.0,
        "layer_scale_init": 1e-5,
    }


def _mutations():
    from hypothesis import strategies as st

    odd = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 70),
        st.sampled_from([0, 1, 2, 3, 5, 7, 31, 32, 48, 64, 96, 256, 1024, 2048, 2049, 10**9]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, 0.01, 0.5, 1.5, 3.0, 16.0, 17.0, -1.0]),
        st.text(max_size=3),
        st.sampled_from(["64", "4d", "3d", "id", "rand"]),
        st.lists(st.sampled_from(["4d", "3d", "id", 1, None]), max_size=4),
        st.dictionaries(st.sampled_from(["width", "blocks", "key_dim", "x"]), st.integers(-1, 40), max_size=2),
    )
    keys = list(_base_spec_dict()) + ["meta_typo", "stem_width"]
    top = st.tuples(st.sampled_from(keys), odd).map(lambda kv: ((kv[0],), kv[1]))
    att = st.tuples(st.sampled_from(["key_dim", "num_heads", "attn_ratio", "typo"]), odd).map(
        lambda kv: (("attention", kv[0]), kv[1])
    )
    stage = st.tuples(st.integers(0, 4), st.sampled_from(["width", "blocks", "typo"]), odd).map(
        lambda t: (("stages", t[0], t[1]), t[2])
    )
    delete = st.sampled_from([("stages",), ("attention",), ("input_size",), ("stages", 0, "width")]).map(
        lambda p: (p, "<delete>")
    )
    return st.lists(st.one_of(top, att, stage, delete), min_size=1, max_size=3)


def _apply(d: dict, path: tuple, value) -> None:
    node = d
    for k in path[:-1]:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and isinstance(k, int) and k < len(node):
            node = node[k]
        else:
            return
    last = path[-1]
    if isinstance(node, dict):
        node.pop(last, None) if value == "<delete>" else node.__setitem__(last, value)
    elif isinstance(node, list) and isinstance(last, int) and last < len(node) and value != "<delete>":
        node[last] = value


def test_arch_yaml_is_refused_or_builds_and_runs():
    """Property (hypothesis): any mutation of an arch YAML (wrong types, missing or extra keys, odd values) is
    either refused with a SpecError, or builds and runs a forward pass with the right output shape."""
    import yaml
    from hypothesis import HealthCheck, given, settings

    from supernet import build_model
    from supernet.arch import SpecError

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutations())
    def check(mutations):
        d = _base_spec_dict()
        for path, value in mutations:
            _apply(d, path, value)
        try:
            spec = ArchSpec.from_yaml(yaml.safe_dump(d))
        except SpecError:
            return
        model = build_model(spec).eval()
        with torch.no_grad():
            out = model(torch.randn(1, spec.in_chans, spec.input_size, spec.input_size))
        assert out.shape == (1, spec.num_classes)

    check()
