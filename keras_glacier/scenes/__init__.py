"""Whole-scene, georeferenced prediction: a Landsat scene (GeoTIFF stack or band folder) to a mask and outlines.

``python -m keras_glacier.predict MODEL --scene PATH --out DIR`` (see ``cli.py``). Needs the ``geo``
extra (rasterio, shapely); importing this package does not, only predicting a scene does.
"""

from keras_glacier.scenes.predict import DEFAULT_MIN_AREA, SceneSummary, predict_scene

__all__ = ["DEFAULT_MIN_AREA", "SceneSummary", "predict_scene"]
