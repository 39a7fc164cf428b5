"""Re-export of ``keras_glacier.fileio`` (the one atomic-write helper), for the data layer's imports."""

from keras_glacier.fileio import atomic_write, write_json, write_text

__all__ = ["atomic_write", "write_json", "write_text"]
