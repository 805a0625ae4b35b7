"""pacsman: move imaging studies from a clinical PACS into XNAT, de-identified, and prove it."""

__version__ = "0.1.0"
__all__ = ["__version__"]
