"""Ultrasound field-of-view crop and burned-in annotation removal. Numpy in, numpy out; imports none of ours."""

from cleaning.types import CleanResult, Region

__all__ = ["CleanResult", "Region"]
