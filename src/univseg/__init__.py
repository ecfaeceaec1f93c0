"""univseg: one semantic-segmentation model for many domains with different label sets.

Python API::

    from univseg import Predictor
    predictor = Predictor.from_checkpoint("work_dirs/demo/best.pt")
    mask = predictor.predict("street.jpg", label_space="city")
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that 'univseg --help' and config tools start without importing torch.
    if name == "Predictor":
        from .engine.predictor import Predictor

        return Predictor
    if name in ("load_config", "Config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'univseg' has no attribute '{name}'")


__all__ = ["Predictor", "load_config", "Config", "__version__"]
