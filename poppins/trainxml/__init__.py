"""Reading train.xml: both dialects, imports, strict structure, XSD, typed constants.

    from poppins.trainxml import read_train_xml
    doc = read_train_xml("train.xml")      # raises PoppinsError listing FILE:LINE problems
"""
from .document import DEFAULT_MAX_XML_MB, SCHEMA_PATH, TrainDoc, read_train_xml, schema

__all__ = ["read_train_xml", "TrainDoc", "SCHEMA_PATH", "DEFAULT_MAX_XML_MB", "schema"]
