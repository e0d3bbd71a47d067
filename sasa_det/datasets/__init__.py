"""Embedded demo data: a deterministic synthetic COCO-format detection set."""
