"""The four pipelines as Ray Serve applications (docs/serve_apps.md).

Each module (`image_classification`, `nlp_analysis`, `text_generation`, `video_analysis`)
holds an ingress plus one deployment per stage, named like the stages of the simulator
profile of the same name, and exposes `app` (for `serve run module:app`), `build_app(args)`
(for serve configs, see `configs/`) and `run(args)` (deploy with SAIR's conventions).
`payloads.example_request(app)` builds a valid request body. Importing this package does
not import Ray or torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

APPS = ("image_classification", "nlp_analysis", "text_generation", "video_analysis")
CONFIG_DIR = Path(__file__).parent / "configs"


def app_module(name: str) -> ModuleType:
    """The module of pipeline `name` (imports Ray Serve and builds its application)."""
    if name not in APPS:
        raise ValueError(f"unknown pipeline app {name!r}; apps: {', '.join(APPS)}")
    return importlib.import_module(f"{__name__}.{name}")


def config_path(name: str) -> Path:
    """The serve config YAML of pipeline `name`."""
    if name not in APPS:
        raise ValueError(f"unknown pipeline app {name!r}; apps: {', '.join(APPS)}")
    return CONFIG_DIR / f"{name}.yaml"
