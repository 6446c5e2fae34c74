"""efficientvit-nas: latency-driven slimming search for EfficientViT. The Python API is `nas.api`
(`from nas.api import train_supernet, build_lut, slim, train, export`); the entry points (`python -m nas.X`,
whose names the API's functions share), the search (`nas.search`) and training (`nas.training`) live here too."""
