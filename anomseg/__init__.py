"""anomseg: pixel-level anomaly segmentation for driving scenes.

Conventions used everywhere in the package:

* images are uint8 (H, W, 3) RGB;
* ``semantic`` targets are int64 (H, W) closed-set train ids 0..K-1, 255 = ignore;
* ``anomaly`` targets are uint8 (H, W): 0 = inlier, 1 = anomaly, 255 = void;
* score maps are float32 (N, H, W) or (H, W) and higher means more anomalous.
"""

__version__ = "0.1.0"
