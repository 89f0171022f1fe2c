"""Pipeline profiles shipped as package data (YAML); load them with
`sair_ray.sim.profiles.load_profile(name)` and copy them as templates for your own."""
