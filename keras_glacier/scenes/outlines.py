"""Outlines: the mask's class regions as polygons with class and area, in GeoJSON and GeoPackage.

Polygons come from GDAL's polygonizer (``rasterio.features.shapes``) reading the written mask band
from disk, and each is written out as soon as it is made, so the outlines never exist all at once
in memory. Areas: a projected CRS gives exact planar areas (pixel count times pixel area, in its
linear unit converted to metres); a geographic CRS's degrees are projected to a Lambert azimuthal
equal-area plane centred on the scene first; without a CRS there is no km2, only pixels.

GeoPackage is written with ``sqlite3`` following the OGC GeoPackage 1.2 encoding (the ``gpkg_*``
tables and the ``GP`` geometry header in front of WKB), because neither fiona nor GDAL's Python
bindings are dependencies; QGIS and GDAL read it like any other GeoPackage.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

from keras_glacier.fileio import committed_together
from keras_glacier.scenes.geo import require_geo
from keras_glacier.scenes.io import pixel_area

TABLE = "outlines"
UNDEFINED_CARTESIAN = -1
CUSTOM_SRS_ID = 100000


@dataclass
class ClassArea:
    name: str
    value: int
    polygons: int = 0  # written (at least min_area)
    dropped: int = 0  # specks below min_area
    area_km2: float = 0.0  # of every polygon of the class, specks included (None-CRS: 0)
    pixels: int = 0


@dataclass
class OutlineSummary:
    classes: list[ClassArea] = field(default_factory=list)
    km2: bool = True  # False without a CRS: areas are in pixels only


class AreaMeter:
    """Polygon -> (area in km2 or None, pixel count) for a scene's CRS and transform."""

    def __init__(self, crs, transform, bounds):
        rasterio, _ = require_geo()
        self.crs, self.pixel = crs, pixel_area(transform)
        self.factor = None
        self.project = None
        if crs is None:
            return
        if crs.is_geographic:
            lon, lat = (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
            laea = rasterio.crs.CRS.from_proj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
            self.project = lambda geom: rasterio.warp.transform_geom(crs, laea, geom)
            self.factor = 1.0
        else:
            self.factor = float(crs.linear_units_factor[1])

    def measure(self, geometry: dict) -> tuple[float | None, int]:
        from shapely.geometry import shape

        planar = shape(geometry).area
        pixels = int(round(planar / self.pixel))
        if self.factor is None:
            return None, pixels
        if self.project is not None:
            planar = shape(self.project(geometry)).area
        return planar * self.factor**2 / 1e6, pixels


class GeoJSONWriter:
    """A FeatureCollection written feature by feature; non-WGS84 CRSs named in the (GDAL-read) ``crs`` member."""

    def __init__(self, path: Path, crs, name: str):
        self.path, self.tmp = path, path.with_name(f".{path.name}.partial")
        self.handle = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115  (closed in commit/abort)
        header = {"type": "FeatureCollection", "name": name}
        epsg = crs.to_epsg() if crs is not None else None
        if epsg is not None and epsg != 4326:  # RFC 7946's default is WGS 84 longitude/latitude already
            header["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        self.handle.write(json.dumps(header)[:-1] + ', "features": [\n')
        self.count = 0

    def add(self, geometry: dict, properties: dict) -> None:
        feature = {"type": "Feature", "properties": properties, "geometry": geometry}
        self.handle.write((",\n" if self.count else "") + json.dumps(feature))
        self.count += 1

    def commit(self) -> None:
        self.handle.write("\n]}\n")
        self.handle.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def _srs(crs) -> tuple[int, tuple | None]:
    """(srs_id, row for gpkg_spatial_ref_sys, or None for the predefined undefined-cartesian one)."""
    if crs is None:
        return UNDEFINED_CARTESIAN, None
    epsg = crs.to_epsg()
    if epsg is not None:
        return epsg, (f"EPSG:{epsg}", epsg, "EPSG", epsg, crs.to_wkt(), "")
    return CUSTOM_SRS_ID, ("scene CRS", CUSTOM_SRS_ID, "NONE", CUSTOM_SRS_ID, crs.to_wkt(), "")


class GeoPackageWriter:
    """An OGC GeoPackage with one polygon table ``outlines`` (fid, geom, class, value, area_km2, pixels)."""

    def __init__(self, path: Path, crs):
        rasterio, _ = require_geo()
        self.path, self.tmp = path, path.with_name(f".{path.name}.partial")
        self.tmp.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.tmp)
        self.srs_id, row = _srs(crs)
        wgs84 = rasterio.crs.CRS.from_epsg(4326).to_wkt()
        db = self.db
        db.execute("PRAGMA application_id = 1196444487")  # 'GPKG'
        db.execute("PRAGMA user_version = 10200")
        db.execute("CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, "
                   "organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, "
                   "description TEXT)")
        rows = [("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference"),
                ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference"),
                ("WGS 84 geodetic", 4326, "EPSG", 4326, wgs84, "longitude/latitude coordinates in decimal degrees")]
        if row is not None and row[1] not in (-1, 0, 4326):
            rows.append(row)
        db.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, "
                   "identifier TEXT UNIQUE, description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT "
                   "(strftime('%Y-%m-%dT%H:%M:%fZ','now')), min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, "
                   "srs_id INTEGER, CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES "
                   "gpkg_spatial_ref_sys(srs_id))")
        db.execute("CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL, "
                   "geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL, "
                   "CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name), CONSTRAINT fk_gc_tn FOREIGN KEY "
                   "(table_name) REFERENCES gpkg_contents(table_name), CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) "
                   "REFERENCES gpkg_spatial_ref_sys (srs_id))")
        db.execute(f"CREATE TABLE {TABLE} (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom POLYGON, "
                   "class TEXT, value INTEGER, area_km2 REAL, pixels INTEGER)")
        db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) VALUES (?, 'features', ?, ?)",
                   (TABLE, TABLE, self.srs_id))
        db.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'POLYGON', ?, 0, 0)", (TABLE, self.srs_id))
        self.bounds = None

    def add(self, geometry: dict, properties: dict) -> None:
        from shapely import to_wkb
        from shapely.geometry import shape

        polygon = shape(geometry)
        minx, miny, maxx, maxy = polygon.bounds
        # GeoPackage binary: magic, version 0, flags (little endian, xy envelope), srs id, envelope, WKB.
        blob = b"GP" + bytes([0, 0b011]) + struct.pack("<i4d", self.srs_id, minx, maxx, miny, maxy)
        blob += to_wkb(polygon, byte_order=1, output_dimension=2)
        self.db.execute(f"INSERT INTO {TABLE} (geom, class, value, area_km2, pixels) VALUES (?, ?, ?, ?, ?)",
                        (blob, properties["class"], properties["value"], properties["area_km2"],
                         properties["pixels"]))
        b = self.bounds
        self.bounds = (minx, miny, maxx, maxy) if b is None else (min(b[0], minx), min(b[1], miny),
                                                                   max(b[2], maxx), max(b[3], maxy))

    def commit(self) -> None:
        if self.bounds is not None:
            self.db.execute("UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?", self.bounds)
        self.db.commit()
        self.db.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.db.close()
        self.tmp.unlink(missing_ok=True)


def write_outlines(mask_path: Path, geojson_path: Path, gpkg_path: Path, classes: list[tuple[str, int]],
                   min_area_km2: float, name: str, foreground_path: Path | None = None) -> OutlineSummary:
    """Polygonize every non-background class of the mask file into both outline files.

    ``foreground_path``: a raster on the same grid, non-zero where a class other than background
    lies; GDAL then builds no polygons for background and no-data (on a real scene: one huge
    background polygon with a hole per glacier, and a polygon per no-data stripe), which keeps
    the polygonizer's memory to the outlines that are written.
    """
    rasterio, _ = require_geo()
    from keras_glacier.scenes.io import quiet_georeferencing

    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_georeferencing())
        mask = stack.enter_context(rasterio.open(mask_path))
        foreground = None
        if foreground_path is not None:
            foreground = rasterio.band(stack.enter_context(rasterio.open(foreground_path)), 1)
        meter = AreaMeter(mask.crs, mask.transform, mask.bounds)
        areas = {value: ClassArea(class_name, value) for class_name, value in classes}
        writers = stack.enter_context(committed_together())
        writers.append(GeoJSONWriter(geojson_path, mask.crs, name))
        writers.append(GeoPackageWriter(gpkg_path, mask.crs))
        regions = rasterio.features.shapes(rasterio.band(mask, 1), mask=foreground, transform=mask.transform)
        for geometry, value in regions:
            entry = areas.get(int(value))
            if entry is None:  # background and no-data
                continue
            km2, pixels = meter.measure(geometry)
            entry.pixels += pixels
            entry.area_km2 += km2 or 0.0
            if km2 is not None and km2 < min_area_km2:
                entry.dropped += 1
                continue
            entry.polygons += 1
            properties = {"class": entry.name, "value": entry.value,
                          "area_km2": km2, "pixels": pixels}
            for writer in writers:
                writer.add(geometry, properties)
    return OutlineSummary(list(areas.values()), meter.factor is not None)
