"""ttd_d2.config_loading: a user's config mistakes stop with one line naming the file or key and
the fix; a valid file and overrides load as detectron2's own merge would."""
from pathlib import Path

import pytest

from ttd_d2.config_loading import load_config

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/synthetic/maskclip.yaml")


def _exit_message(config_file, opts=()):
    with pytest.raises(SystemExit) as info:
        load_config(config_file, opts)
    return str(info.value)


def test_a_valid_file_and_overrides_load_unfrozen():
    cfg = load_config(CONFIG, ["MODEL.TTD.ENABLED", "True", "MODEL.TTD.MAX_TAGS", "7"])
    assert cfg.MODEL.TTD.ENABLED is True and cfg.MODEL.TTD.MAX_TAGS == 7
    assert not cfg.is_frozen()


@pytest.mark.parametrize("config_file, expected", [
    ("", "pass --config-file"),
    ("configs/no_such_config.yaml", "'configs/no_such_config.yaml' does not exist"),
])
def test_a_missing_file_names_the_fix(config_file, expected):
    assert expected in _exit_message(config_file)


@pytest.mark.parametrize("text, expected", [
    ("MODEL:\n  TTD:\n    NO_SUCH_KEY: 1\n", "Non-existent config key: MODEL.TTD.NO_SUCH_KEY"),
    ("MODEL:\n  TTD:\n    ENABLED: yes please\n", "for config key: MODEL.TTD.ENABLED"),
    ("_BASE_: no_such_base.yaml\n", "its _BASE_ chain names"),
    ("MODEL: [\n", "is not valid YAML"),
    ("- 1\n- 2\n", "holds no mapping of config keys"),
])
def test_a_bad_file_names_itself_and_the_problem(tmp_path, text, expected):
    path = tmp_path / "user.yaml"
    path.write_text(text)
    message = _exit_message(str(path))
    assert expected in message and str(path) in message


@pytest.mark.parametrize("opts, expected", [
    (["MODEL.TTD.NO_SUCH_KEY", "1"], "Non-existent key: MODEL.TTD.NO_SUCH_KEY"),
    (["MODEL.TTD.MAX_TAGS", "1.5"], "for config key: MODEL.TTD.MAX_TAGS"),
    (["MODEL.TTD.ENABLED"], "KEY VALUE pairs"),
])
def test_a_bad_override_names_the_key_and_where_keys_are(opts, expected):
    message = _exit_message(CONFIG, opts)
    assert expected in message
    assert "KEY VALUE" in message or "ttd_d2/config.py" in message
