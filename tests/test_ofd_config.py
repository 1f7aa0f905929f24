"""OFDConfig: the distiller's options as one checked value, and the keyword form that builds it."""
from __future__ import annotations

import pytest

from overhaul_det import FeatureDistiller
from overhaul_det.ofd_config import OFDConfig

SIZE = (3, 32, 32)


def test_a_misspelt_option_is_named_with_the_nearest_one():
    with pytest.raises(TypeError, match=r"^model\.ofd\.teacher_nb: unknown key; did you mean model\.ofd\.teacher_bn\? "
                                        r"FeatureDistiller takes teacher_taps, "):
        OFDConfig.from_dict(dict(alpha=1e-2, teacher_nb="eval"), where="model.ofd")


@pytest.mark.parametrize("options, message", [
    (dict(margin="bogus"), r"margin='bogus'; choose one of \('auto', 'bn', 'data', 'none'\)"),
    (dict(teacher_precision="bf16"), "teacher_precision='bf16'; choose one of"),
    (dict(teacher_channels_last="yes"), "teacher_channels_last='yes'; choose 'auto', True or False"),
    (dict(alpha_warmup=-1), "alpha_warmup=-1; give a number of training iterations"),
    (dict(alpha_series=(0.5,)), r"alpha_series=\(0.5,\); give mantissas in \[1, 10\)"),
])
def test_a_bad_value_is_named_when_the_config_is_made(options, message):
    with pytest.raises(ValueError, match=message):
        OFDConfig(**options)


def test_updated_checks_the_changed_options_too():
    config = OFDConfig(alpha=1e-2)
    assert config.updated(margin="data") == OFDConfig(alpha=1e-2, margin="data")
    with pytest.raises(TypeError, match=r"ofd\.marign: unknown key; did you mean ofd\.margin\?"):
        config.updated(marign="data")


def test_keywords_and_a_config_build_the_same_distiller(make_model):
    """``FeatureDistiller(t, s, alpha=..., ...)`` is ``FeatureDistiller(t, s, OFDConfig(alpha=..., ...))``;
    keywords given with a config change it."""
    by_keywords = FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large"),
                                   alpha=1e-2, margin="data", input_size=SIZE)
    by_config = FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large"),
                                 OFDConfig(alpha=1.0, margin="data", input_size=SIZE), alpha=1e-2)
    assert by_keywords.config == by_config.config and by_config.alpha == 1e-2
    assert [(s.name, t.name) for s, t in by_keywords.pairs] == [(s.name, t.name) for s, t in by_config.pairs]
    with pytest.raises(TypeError, match=r"ofd\.alhpa: unknown key; did you mean ofd\.alpha\?"):
        FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_large"), alhpa=1e-2)

