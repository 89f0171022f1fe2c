"""Pipeline profiles: the description of a pipeline (its `PipelineSpec`: stages, limits,
SLA, cluster) plus how each stage behaves in the simulator, and the loader.

The four paper pipelines ship here as YAML package data (`<name>.yaml`); load one with
`load_profile(name)`, or any profile file with `load_profile(path)` (`load_pipeline` reads
only the pipeline part, for a live app: no `sim:` needed), and copy them as
templates for your own. The file format is in `sair_ray/profiles/loader.py` and
docs/simulator.md.
"""

from sair_ray.profiles.loader import (
    PROFILE_PACKAGE,
    Profile,
    ProfileError,
    list_profiles,
    load_pipeline,
    load_profile,
    profile_from_dict,
    profile_from_yaml,
    replica_moves_only,
)

__all__ = ["PROFILE_PACKAGE", "Profile", "ProfileError", "list_profiles", "load_pipeline",
           "load_profile",
           "profile_from_dict", "profile_from_yaml", "replica_moves_only"]
