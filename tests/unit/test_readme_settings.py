"""Every server setting is named in the README's configuration section: a setting a new user
cannot find there does not exist for them."""
from pathlib import Path

from lpt_server.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme():
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    missing = [f"LPT_{name.upper()}" for name in Settings.model_fields if f"`LPT_{name.upper()}`" not in section]
    assert not missing, f"settings not in the README's Configuration section: {missing}"
