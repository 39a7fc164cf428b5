"""The optional GeoTIFF stack: rasterio and shapely, imported only when a scene is predicted.

``import keras_glacier`` and tile prediction must work without them (they are the ``geo`` extra), so
every module of this package that needs them asks here, and a missing one becomes a one-line error
that says what to install instead of an ImportError traceback.
"""

from __future__ import annotations

from keras_glacier.data.errors import InputError

INSTALL_HINT = 'pip install -e ".[geo]"'


def require_geo():
    """(rasterio, shapely), or InputError telling the user to install the ``geo`` extra."""
    try:
        import rasterio
        import rasterio.crs
        import rasterio.errors
        import rasterio.features
        import rasterio.warp
        import rasterio.windows
        import shapely
    except ImportError as exc:
        raise InputError(f"--scene needs the optional packages rasterio and shapely ({exc.name} is missing): "
                         f"{INSTALL_HINT}") from None
    return rasterio, shapely
