"""The procedural synthetic street-scene dataset (StreetHazards layout): the embedded default."""

from anomseg.data.synthetic.generate import generate_synthetic, main
from anomseg.data.synthetic.sprites import ANOMALY_KINDS, OUTLIER_KINDS

__all__ = ["generate_synthetic", "main", "ANOMALY_KINDS", "OUTLIER_KINDS"]
