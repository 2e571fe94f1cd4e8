"""The text domain: meaning-preserving word and character attacks on text classifiers (work in progress)."""

from ...plugins import Domain

DOMAIN = Domain(name="text", description="text classifiers under word and character substitutions")
