"""Model extraction (theft): surrogates that are themselves Targets, with a fidelity curve."""

from bastion.attacks.extraction.base import ExtractionParams, ExtractionResult, ModelExtraction

__all__ = ["ExtractionParams", "ExtractionResult", "ModelExtraction"]
