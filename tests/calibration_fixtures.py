"""Helpers of the calibration tests: label PNGs and throw-away dataset registrations."""
import numpy as np


def write_png(path, array):
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def register(name, records, **meta):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**meta)
