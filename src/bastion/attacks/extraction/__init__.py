"""Model extraction (theft): surrogates that are themselves Targets, with a fidelity curve."""

from bastion.attacks.extraction.base import (
    EXTRACTION_ATTACKS, ExtractionParams, ExtractionResult, ModelExtraction, get_extraction_attack)

__all__ = ["EXTRACTION_ATTACKS", "ExtractionParams", "ExtractionResult", "ModelExtraction", "get_extraction_attack"]
