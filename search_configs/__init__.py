"""The hydra configs of every entry point, shipped inside the package (hydra reads them as `pkg://search_configs`).

One primary config per entry point (`<name>.yaml`, backed by a dataclass schema in `nas.config`) and the groups
`space/`, `data/` and `train/`. Being a package is what puts these files into the wheel: an installed
efficientvit-nas composes the same configs as a source checkout.
"""
