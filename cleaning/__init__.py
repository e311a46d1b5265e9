"""Ultrasound field-of-view crop and burned-in annotation removal. Numpy in, numpy out; imports none of ours."""

from sonopacs.cleaning.clean import clean_image
from sonopacs.cleaning.field import crop_to_field
from sonopacs.cleaning.synthetic import burn_in_annotations
from sonopacs.cleaning.types import CleanResult, Region

__all__ = ["CleanResult", "Region", "burn_in_annotations", "clean_image", "crop_to_field"]
