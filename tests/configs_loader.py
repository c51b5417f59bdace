"""Load a config file from configs/ by name, as config_flags would."""

import importlib.util
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
